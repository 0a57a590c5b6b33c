"""``python -m profiles``: the profiler's commands on a runtime-only install (numpy, onnxruntime, psutil).

The same commands are part of the full ``anytime-edge`` CLI (see :mod:`distill.cli`); this table lets a
factory PC without the training package profile bundles and choose what to deploy.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from edge_runtime.cli import dispatch

__all__ = ["PROFILE_COMMANDS", "main"]

PROFILE_COMMANDS: Mapping[str, tuple[str, str]] = {
    "profile": (
        "profiles.cli.profile",
        "measure latency and memory of bundles/ONNX models on this device, or merge other devices' profiles",
    ),
    "select": ("profiles.cli.select", "choose what to deploy from measured accuracy, latency and memory"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m profiles``."""
    return dispatch(
        argv,
        PROFILE_COMMANDS,
        prog="python -m profiles",
        description="Anytime Edge profiler: measure candidates on this device and choose what to deploy.",
    )
