"""The ``--load-timeout`` option shared by the commands that load and warm up a bundle."""

from __future__ import annotations

import argparse

__all__ = ["DEFAULT_LOAD_TIMEOUT_S", "add_load_timeout"]

DEFAULT_LOAD_TIMEOUT_S = 5.0  # matches SessionConfig.load_timeout_s


def _seconds_or_off(text: str) -> float | None:
    if text.strip().lower() == "off":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds or 'off'") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError("the load timeout must be a positive number of seconds, or 'off'")
    return value


def add_load_timeout(parser: argparse.ArgumentParser) -> None:
    """Add ``--load-timeout S|off`` (dest ``load_timeout``): the per-member limit on the first warm-up run."""
    parser.add_argument(
        "--load-timeout",
        type=_seconds_or_off,
        default=DEFAULT_LOAD_TIMEOUT_S,
        metavar="S",
        help=f"seconds a member's first warm-up run may take before it is stopped and the bundle refused, "
        f"or 'off' (default {DEFAULT_LOAD_TIMEOUT_S:g})",
    )
