"""``anytime-edge serve BUNDLE``: serve a bundle over the Open Inference Protocol (KServe V2).

Binds 127.0.0.1 by default, and then answers only requests addressed to a loopback name (``--allowed-host``
adds names); ``--host 0.0.0.0`` exposes the model to the network and says so. Prints the
base URL once listening; SIGTERM or Ctrl-C finishes in-flight requests, then exits.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from edge_runtime.cli.flags import add_budget_ms, add_entropy, add_load_timeout, add_threads

# Imported at module level on purpose: without the `serve` extra the dispatcher catches this ImportError
# and prints the pip command that installs it.
from edge_runtime.server import ServerConfig, default_workers, serve
from edge_runtime.server._config import HOLD_ORDERS
from edge_runtime.session import SessionConfig

__all__ = ["HELP", "configure", "run"]

HELP = "serve a bundle over the Open Inference Protocol (KServe V2)"


def _positive(kind: type) -> Callable[[str], Any]:
    """An argparse type: ``kind`` (int or float) parsed from text, > 0; bad values are usage errors."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
        return value

    parse.__name__ = kind.__name__
    return parse


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the serve arguments to ``parser``."""
    parser.add_argument("bundle", metavar="BUNDLE", help="bundle directory or .zip")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000; 0 picks a free one)")
    parser.add_argument("--model-name", default=None, help="name in /v2/models/{name} (default: the bundle's name)")
    add_budget_ms(parser, what="default latency budget per request, counted from arrival,")
    add_entropy(parser, what="default entropy exit threshold")
    parser.add_argument(
        "--workers",
        type=_positive(int),
        default=None,
        help=f"inference threads (default: usable cores - 1, here {default_workers()})",
    )
    add_threads(parser, what="per member")
    parser.add_argument(
        "--max-queue",
        type=int,
        default=32,
        help="requests that may wait for a worker before more are shed with 503 (default: 32)",
    )
    parser.add_argument(
        "--max-body-mb",
        type=_positive(float),
        default=4.0,
        help="largest request body accepted, in MiB, after inflating gzip/deflate (default: 4)",
    )
    parser.add_argument(
        "--max-batch",
        type=_positive(int),
        default=4096,
        help="most samples per request; larger batches are refused with 413 (default: 4096)",
    )
    parser.add_argument(
        "--allowed-host",
        action="append",
        default=None,
        metavar="NAME",
        help="a Host name clients use (repeatable; '*' = any). Default: on a loopback bind only "
        "localhost/127.0.0.1/::1 (refuses DNS rebinding), on another bind any",
    )
    parser.add_argument(
        "--max-connections",
        type=_positive(int),
        default=256,
        help="open connections; a new one beyond closes the longest-idle one (default: 256)",
    )
    parser.add_argument(
        "--header-timeout",
        type=_positive(float),
        default=5.0,
        metavar="S",
        help="seconds a connection may take to send a request head (default: 5)",
    )
    parser.add_argument(
        "--keep-alive",
        type=_positive(float),
        default=5.0,
        metavar="S",
        help="seconds an idle keep-alive connection stays open (default: 5)",
    )
    parser.add_argument(
        "--switch-interval-ms",
        type=_non_negative_float,
        default=0.5,
        help="interpreter thread switch interval while serving (default: 0.5; 0 keeps Python's 5)",
    )
    parser.add_argument(
        "--no-backpressure",
        dest="backpressure",
        action="store_false",
        help="parse every request at once while all workers are busy (each retry then costs a 503); default: a "
        "connection refused with 503 is held, its next request parsed when a worker is free, the freshest first",
    )
    parser.add_argument(
        "--max-hold",
        type=_positive(float),
        default=1.0,
        metavar="S",
        help="seconds a held request may wait before it is parsed whatever the load (default: 1)",
    )
    parser.add_argument(
        "--hold-order",
        choices=HOLD_ORDERS,
        default="turns",
        help="which held request a free worker gets: turns = clients take turns, none answered late; lifo = the "
        "freshest (on time, but the fastest resenders get most answers); fifo = the one held longest, served even if "
        "late (default: turns)",
    )
    parser.add_argument(
        "--access-log",
        nargs="?",
        const="-",
        default=None,
        metavar="PATH|-",
        help="write one JSON line per inference request (time, id, status, budget, members used, exit "
        "reason, elapsed ms; never tensor data) to PATH, appended, or to standard output with '-' "
        "or no value (default: off)",
    )
    add_load_timeout(parser)


def run(args: argparse.Namespace) -> int:
    """Load the bundle and serve it until SIGTERM/Ctrl-C; returns 0 after a graceful stop."""
    from edge_runtime import load  # the runtime proper; imported when the command runs

    workers = args.workers if args.workers is not None else default_workers()
    config = ServerConfig(
        host=args.host,
        port=args.port,
        model_name=args.model_name,
        budget_ms=args.budget_ms,
        # a number is the server's default; "calibrated"/"off" go to the runtime, whose default the server takes
        entropy_threshold=args.entropy if isinstance(args.entropy, float) else None,
        workers=workers,
        max_queue=args.max_queue,
        max_body_bytes=int(args.max_body_mb * 2**20),
        max_batch_rows=args.max_batch,
        allowed_hosts=None if args.allowed_host is None else tuple(args.allowed_host),
        max_connections=max(args.max_connections, workers + args.max_queue),
        header_timeout_s=args.header_timeout,
        keep_alive_s=args.keep_alive,
        switch_interval_ms=args.switch_interval_ms or None,
        access_log=args.access_log,
        backpressure=args.backpressure,
        max_hold_s=args.max_hold,
        hold_order=args.hold_order,
    )
    runtime = load(
        args.bundle,
        session_config=SessionConfig(intra_op_threads=args.threads, load_timeout_s=args.load_timeout),
        entropy_threshold=args.entropy,
    )
    if not config.is_loopback:
        print(f"warning: serving on {config.host}, reachable from other machines", file=sys.stderr)

    def announce(url: str) -> None:
        name = config.model_name or runtime.manifest.name
        print(f"serving '{name}' ({runtime.manifest.num_members} members, {workers} worker(s)) on {url}/v2", flush=True)

    serve(runtime, config, announce=announce)
    return 0
