"""``anytime-edge run BUNDLE --input FILE``: classify inputs with early exit, one line per sample.

``FILE`` is a ``.npy`` array or an ``.npz`` with ``x`` (or ``x_test``) of raw inputs in the bundle's
``task.input`` shape; when the ``.npz`` also holds ``y`` (or ``y_test``) — class ids or the bundle's
class names — a last line gives the accuracy (``accuracy A (K/N correct)``, or a JSON object with
``accuracy``, ``correct`` and ``samples`` under ``--json``).

Each sample is one request by default (its own budget and elapsed time, as on a device serving one
input at a time); ``--batch-size`` groups rows into batched requests, where samples still exit one by
one. All answers are computed before anything is printed, so an error prints one line and no partial
results.
"""

from __future__ import annotations

import argparse
import json
import sys

from edge_runtime.cli._arrays import class_ids, read_inputs
from edge_runtime.cli.flags import add_budget_ms, add_entropy, add_load_timeout, add_threads

__all__ = ["HELP", "configure", "run"]

HELP = "evaluate a bundle on inputs from a .npy or .npz file, with early exit (accuracy when labels are given)"


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``run`` arguments."""
    parser.add_argument("bundle", help="bundle directory or .zip")
    parser.add_argument(
        "--input",
        required=True,
        metavar="FILE",
        help="raw inputs (N, ...) or one sample: a .npy, or an .npz with x (or x_test) and optional labels y (or y_test)",
    )
    add_budget_ms(parser)
    add_entropy(parser)
    add_threads(parser)
    parser.add_argument("--batch-size", type=int, default=1, metavar="N", help="rows per request (default 1)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    add_load_timeout(parser)


def run(args: argparse.Namespace) -> int:
    """Load, predict, print; package errors propagate to the dispatcher (one line, exit 1)."""
    import numpy as np

    import edge_runtime
    from edge_runtime.errors import InputError
    from edge_runtime.session import SessionConfig

    if args.batch_size < 1:
        raise InputError("--batch-size must be >= 1")
    x, y = read_inputs(args.input)
    runtime = edge_runtime.load(
        args.bundle,
        session_config=SessionConfig(intra_op_threads=args.threads, load_timeout_s=args.load_timeout),
        entropy_threshold=args.entropy,
        budget_ms=args.budget_ms,
    )
    sample_shape = tuple(runtime.manifest.task.input.shape[1:])
    if tuple(x.shape) == sample_shape:  # one unbatched sample
        x = x[None]
    if tuple(x.shape[1:]) != sample_shape:  # judged on the whole file, not on one request's slice
        raise InputError(
            f"{args.input} holds shape {list(x.shape)}, but the bundle takes {[-1, *sample_shape]}; "
            f"save an array of shape (N, {', '.join(map(str, sample_shape))})"
        )
    ids = None if y is None else class_ids(y, runtime.manifest.task.labels, len(x))
    answers = []
    for start in range(0, max(len(x), 1), args.batch_size):
        answers.extend(runtime.predict(x[start : start + args.batch_size]))
    lines = []
    members = runtime.num_members
    for i, p in enumerate(answers):
        if args.json:
            lines.append(json.dumps(p.to_dict()))
        else:
            lines.append(
                f"{i}: label={p.label} ({p.label_name}) p={float(np.max(p.probabilities)):.3f} "
                f"members={p.members_used}/{members} exit={p.exit_reason} entropy={p.entropy:.4f} "
                f"elapsed={p.elapsed_ms:.3f}ms{' late' if p.late else ''}{' stopped-in-flight' if p.stopped_in_flight else ''}"
            )
    if ids is not None:
        correct = sum(int(p.label == t) for p, t in zip(answers, ids.tolist()))
        accuracy = correct / len(answers)
        if args.json:
            lines.append(json.dumps({"accuracy": accuracy, "correct": correct, "samples": len(answers)}))
        else:
            lines.append(f"accuracy {accuracy:.4f} ({correct}/{len(answers)} correct)")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
