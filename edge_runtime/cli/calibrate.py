"""``anytime-edge calibrate BUNDLE --data VAL.npz``: choose and store the entropy exit threshold.

Every member runs once on the validation set (arrays ``x``, raw inputs as clients send them, and ``y``,
integer labels); the threshold meeting the target is written into the manifest atomically, and the
trade-off curve is printed. ``--dry-run`` prints without saving.
"""

from __future__ import annotations

import argparse
import json
import sys

from edge_runtime.cli._arrays import class_ids, read_npz_xy
from edge_runtime.cli.flags import add_load_timeout

__all__ = ["HELP", "configure", "run"]

HELP = "choose the entropy exit threshold on held-out data"


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``calibrate`` arguments."""
    parser.add_argument("bundle", help="bundle directory or .zip (its manifest is updated)")
    parser.add_argument("--data", required=True, metavar="VAL.npz", help="validation arrays x (raw inputs) and y (labels)")
    target = parser.add_mutually_exclusive_group()
    target.add_argument(
        "--accuracy-drop",
        type=float,
        default=None,
        metavar="D",
        help="allowed accuracy loss vs the full ensemble, in points (default 0.5)",
    )
    target.add_argument("--max-mean-members", type=float, default=None, metavar="M", help="allowed mean members per sample")
    parser.add_argument("--points", type=int, default=64, help="trade-off points kept in the manifest (default 64)")
    parser.add_argument("--dry-run", action="store_true", help="print the choice without saving it")
    parser.add_argument("--json", action="store_true", help="print the calibration as one JSON object")
    add_load_timeout(parser)


def run(args: argparse.Namespace) -> int:
    """Evaluate prefixes on the data, choose, save, print."""
    from dataclasses import asdict

    from edge_runtime.calibrate import CalibrationTarget, calibrate, save_calibration
    from edge_runtime.ensemble import AnytimeRuntime
    from edge_runtime.errors import InputError
    from edge_runtime.session import SessionConfig

    if args.points < 2:
        raise InputError("--points must be >= 2")
    if args.max_mean_members is not None:
        target = CalibrationTarget.members(args.max_mean_members)
    else:
        target = CalibrationTarget(accuracy_drop=0.5 if args.accuracy_drop is None else args.accuracy_drop)
    x, y = read_npz_xy(args.data)
    # One warm-up pass: bounded by --load-timeout, so a member that never finishes is refused here, not
    # after hanging on the whole validation set.
    runtime = AnytimeRuntime(args.bundle, SessionConfig(load_timeout_s=args.load_timeout), warmup=1)
    y = class_ids(y, runtime.manifest.task.labels, len(x))  # ids, or the bundle's class names
    calibration = calibrate(runtime, x, y, target, curve_points=args.points)
    if not args.dry_run:
        save_calibration(args.bundle, calibration)
    if args.json:
        sys.stdout.write(json.dumps({**asdict(calibration), "saved": not args.dry_run}) + "\n")
        return 0
    lines = [f"{'threshold':>10}  {'accuracy':>8}  {'mean members':>12}"]
    for p in calibration.curve:
        mark = "  <- chosen" if p["threshold"] == calibration.entropy_threshold else ""
        lines.append(f"{p['threshold']:10.4f}  {100 * p['accuracy']:7.2f}%  {p['mean_members']:12.3f}{mark}")
    lines.append(
        f"entropy threshold {calibration.entropy_threshold:.4f} (nats) for {calibration.target}: "
        f"accuracy {100 * calibration.accuracy:.2f}%, mean members {calibration.mean_members:.3f} of "
        f"{runtime.num_members}; " + ("not saved (--dry-run)" if args.dry_run else f"saved in {args.bundle}")
    )
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
