"""The options several commands share, spelled and validated one way everywhere.

``--threads``, ``--entropy``, ``--budget-ms`` and ``--load-timeout`` are added by the helpers here, in the
runtime's commands and in the profiler's and the training package's (which may import this module: it
is public, and imports nothing but the standard library until a value is parsed). A bad value is an
argparse usage error (one line, exit 2) before anything is loaded; the spellings are the runtime's own
(:mod:`edge_runtime.policies`: ``"calibrated"``, ``"off"``), so a flag means what the Python API and the
server's request parameters mean.
"""

from __future__ import annotations

import argparse

__all__ = [
    "DEFAULT_LOAD_TIMEOUT_S",
    "add_budget_ms",
    "add_entropy",
    "add_load_timeout",
    "add_threads",
    "budget_ms_value",
    "entropy_value",
    "threads_value",
]

DEFAULT_LOAD_TIMEOUT_S = 5.0  # matches SessionConfig.load_timeout_s


def threads_value(text: str) -> int:
    """``--threads`` parsed: an int >= 0 (0 lets ONNX Runtime choose), as :class:`SessionConfig` takes."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number of threads") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"'{text}' must be >= 0 (0 lets ONNX Runtime choose)")
    return value


def entropy_value(text: str) -> float | str:
    """``--entropy`` parsed: nats >= 0 (a float), ``"calibrated"`` or ``"off"`` (as the runtime spells them)."""
    from edge_runtime.errors import PolicyError
    from edge_runtime.policies import CALIBRATED, OFF, parse_entropy_threshold

    word = text.strip().lower()
    if word in (CALIBRATED, OFF):
        return word
    try:
        value = parse_entropy_threshold(text, None)
    except PolicyError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    assert value is not None  # a number was given: parse_entropy_threshold returned it checked
    return value


def budget_ms_value(text: str) -> float | None:
    """``--budget-ms`` parsed: milliseconds > 0 (a float), or None for ``"off"`` (no budget)."""
    from edge_runtime.errors import PolicyError
    from edge_runtime.policies import parse_budget

    try:
        return parse_budget(text.strip().lower())
    except PolicyError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_threads(parser: argparse.ArgumentParser, *, what: str = "") -> None:
    """Add ``--threads N`` (dest ``threads``, default 1): ONNX Runtime intra-op threads ``what`` (e.g. "per member")."""
    parser.add_argument(
        "--threads",
        type=threads_value,
        default=1,
        metavar="N",
        help=f"ONNX Runtime intra-op threads{' ' + what if what else ''} (default 1, fastest for small members; "
        "0 lets ONNX Runtime choose)",
    )


def add_entropy(parser: argparse.ArgumentParser, *, what: str = "entropy exit threshold") -> None:
    """Add ``--entropy T`` (dest ``entropy``, default ``"calibrated"``): float, ``"calibrated"`` or ``"off"``."""
    parser.add_argument(
        "--entropy",
        type=entropy_value,
        default="calibrated",
        metavar="T",
        help=f"{what} in nats, 'calibrated' (the bundle's calibration; default) or 'off'",
    )


def add_budget_ms(parser: argparse.ArgumentParser, *, what: str = "latency budget per request") -> None:
    """Add ``--budget-ms B`` (dest ``budget_ms``, default None): a float > 0, or None for ``"off"``."""
    parser.add_argument(
        "--budget-ms",
        type=budget_ms_value,
        default=None,
        metavar="B",
        help=f"{what} in ms, or 'off' (default: none)",
    )


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
