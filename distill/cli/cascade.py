"""``anytime-edge cascade A B ... --out BUNDLE``: one-member bundles -> an anytime cascade.

The members run in the order given (cheapest first) and each one's answer replaces the previous one's
(``combine="replace"``); the runtime's entropy exit and budgets decide where to stop. No torch or onnx
is needed (see :mod:`exporters.cascade`): this runs on a runtime-only install. Calibrate and profile the
result afterwards (``anytime-edge calibrate``, ``anytime-edge profile``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["HELP", "configure", "run"]

HELP = "compose one-member bundles (cheapest first) into an anytime cascade"


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``cascade`` arguments."""
    parser.add_argument(
        "bundles", nargs="+", type=Path, metavar="BUNDLE", help="one-member bundles (directories or .zip), cheapest first"
    )
    parser.add_argument("--out", type=Path, required=True, help="cascade bundle directory to write (replaced if it exists)")
    parser.add_argument("--zip", type=Path, default=None, help="also pack the cascade into this .zip file")
    parser.add_argument("--name", default="cascade", help="the cascade's bundle name (default: cascade)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")


def run(args: argparse.Namespace) -> int:
    """Compose, then print the members (and any ordering warning on stderr)."""
    from exporters.cascade import compose_cascade

    result = compose_cascade(args.bundles, args.out, name=args.name, archive=args.zip)
    for warning in result.warnings:
        print(f"anytime-edge cascade: warning: {warning}", file=sys.stderr)
    members = [m.name for m in result.manifest.members]
    if args.json:
        sys.stdout.write(
            json.dumps(
                {
                    "path": str(result.path),
                    "archive": None if result.archive is None else str(result.archive),
                    "members": members,
                    "combine": result.manifest.combine,
                    "member_p50_ms": None if result.member_p50_ms is None else list(result.member_p50_ms),
                    "warnings": list(result.warnings),
                }
            )
            + "\n"
        )
        return 0
    latency = (
        "" if result.member_p50_ms is None else " (stored p50 " + ", ".join(f"{t:.3f}" for t in result.member_p50_ms) + " ms)"
    )
    sys.stdout.write(
        f"cascade of {len(members)} members {' -> '.join(members)}{latency} written to {result.path}"
        + (f" and {result.archive}" if result.archive is not None else "")
        + "; next: `anytime-edge calibrate` and `anytime-edge profile` on it\n"
    )
    return 0
