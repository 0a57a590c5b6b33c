"""``python -m edge_runtime.kserve BUNDLE --http_port P``: serve a bundle from KServe's ``ModelServer``.

Takes KServe's own ``ModelServer`` flags (``--http_port``, ``--grpc_port``, ``--enable_grpc`` (off by
default here), ``--model_name`` (the bundle's name by default), ...) beside the runtime's (``--budget-ms``, ``--entropy``, ``--threads``,
``--inference-workers``, ``--max-queue``, ``--max-batch``), as ``anytime-edge serve`` spells them.
A bundle that cannot be loaded, or a missing ``kserve`` extra, is one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from edge_runtime.errors import AnytimeEdgeError
from edge_runtime.extras import missing_dependency_message

__all__ = ["main"]

PROG = "python -m edge_runtime.kserve"


def build_parser() -> argparse.ArgumentParser:
    """KServe's ``ModelServer`` flags plus the bundle and the runtime's flags."""
    from kserve import model_server

    from edge_runtime.cli.flags import add_budget_ms, add_entropy, add_load_timeout, add_threads
    from edge_runtime.server import default_workers

    parser = argparse.ArgumentParser(
        prog=PROG,
        parents=[model_server.parser],
        description="Serve an anytime-edge bundle over V2 from KServe's ModelServer.",
    )
    parser.add_argument("bundle", metavar="BUNDLE", help="bundle directory or .zip")
    add_budget_ms(parser, what="default latency budget per request, counted from when KServe hands it over,")
    add_entropy(parser, what="default entropy exit threshold")
    add_threads(parser, what="per member")
    parser.add_argument(
        "--inference-workers",
        type=int,
        default=None,
        metavar="N",
        help=f"inference threads (default: usable cores - 1, here {default_workers()})",
    )
    parser.add_argument("--max-queue", type=int, default=32, help="requests that may wait for a worker before 503 (default 32)")
    parser.add_argument("--max-batch", type=int, default=4096, help="most samples per request; more get 413 (default 4096)")
    add_load_timeout(parser)
    # KServe's default name is "model"; here the bundle's own. gRPC is off unless asked for: KServe's gRPC
    # InferParameter holds bool, int64 or string only, so a budget such as 2.5 ms cannot be sent that way
    # (and the adapter is tested over REST only).
    parser.set_defaults(model_name=None, enable_grpc=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Load the bundle, register it with a ``kserve.ModelServer`` and serve until SIGTERM."""
    try:
        parser = build_parser()
    except ImportError as exc:
        print(f"{PROG}: {missing_dependency_message(exc.name or 'kserve') or exc}", file=sys.stderr)
        return 1
    args = parser.parse_args(argv)
    if args.workers != 1:
        # KServe's multi-process server re-imports its app in new processes; this adapter is tested with one.
        parser.error("--workers must be 1 here; raise --inference-workers (threads) or the InferenceService's replicas")
    try:
        from kserve import ModelServer, model_server

        from edge_runtime import load
        from edge_runtime.kserve import AnytimeModel, add_error_handlers
        from edge_runtime.server import ServerConfig, default_workers
        from edge_runtime.session import SessionConfig

        workers = args.inference_workers or default_workers()
        config = ServerConfig(
            model_name=args.model_name,
            budget_ms=args.budget_ms,
            entropy_threshold=args.entropy if isinstance(args.entropy, float) else None,
            workers=workers,
            max_queue=args.max_queue,
            max_batch_rows=args.max_batch,
            max_connections=max(256, workers + args.max_queue),
        )
        runtime = load(
            args.bundle,
            session_config=SessionConfig(intra_op_threads=args.threads, load_timeout_s=args.load_timeout),
            entropy_threshold=args.entropy,
        )
        model = AnytimeModel(runtime, config)
        model.load()
    except AnytimeEdgeError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    add_error_handlers(model_server.app, model)
    # KServe's own flags, as parsed here (ModelServer's defaults come from sys.argv, which main(argv) may not be);
    # --configure_logging and --log_config_file it reads from sys.argv itself.
    server = ModelServer(
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        workers=args.workers,
        max_threads=args.max_threads,
        max_asyncio_workers=args.max_asyncio_workers,
        enable_grpc=args.enable_grpc,
        enable_docs_url=args.enable_docs_url,
        enable_latency_logging=args.enable_latency_logging,
        access_log_format=args.access_log_format,
        event_loop=args.event_loop,
        timeout_keep_alive=args.timeout_keep_alive,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
    )
    print(
        f"serving '{model.name}' ({runtime.manifest.num_members} members, {workers} worker(s)) from KServe's "
        f"ModelServer on port {args.http_port}",
        flush=True,
    )
    server.start([model])
    return 0


if __name__ == "__main__":
    sys.exit(main())
