"""``anytime-edge``: the whole toolkit's command line.

Runtime commands (run, inspect, calibrate, serve), ``cascade`` and the profiler's work on a runtime-only install; the
training commands need the ``train`` extra, and say so when it is missing. Only the chosen command's
module is imported (see :mod:`edge_runtime.cli`), so this module must not import torch.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from edge_runtime.cli import RUNTIME_COMMANDS, dispatch

__all__ = ["COMMANDS", "main"]

COMMANDS: Mapping[str, tuple[str, str]] = {
    **RUNTIME_COMMANDS,
    "profile": ("profiles.cli.profile", "measure latency and memory of bundles/ONNX models on this device, or merge other devices' profiles"),
    "select": ("profiles.cli.select", "choose what to deploy from measured accuracy, latency and memory"),
    "train-teacher": ("distill.cli.train_teacher", "train (or resume) the teacher classifier on a data set"),
    "export": ("distill.cli.export", "export a checkpoint, or wrap an .onnx / .pt2 classifier, as a one-member bundle"),
    "cascade": ("distill.cli.cascade", "compose one-member bundles (cheapest first) into an anytime cascade"),
    "ensemble": ("distill.cli.ensemble", "distil a teacher into a progressive ensemble (B-DISTIL)"),
    "sparsify": ("distill.cli.sparsify", "sparse students: FCPTS sparsity allocation or DSD² pruning"),
    "lowrank": ("distill.cli.lowrank", "low-rank students with spectral init, distilled from the teacher"),
    "demo": ("distill.cli.demo", "the main job end to end: teacher, students, bundle, profiles, anytime"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``anytime-edge`` console script."""
    return dispatch(
        argv,
        COMMANDS,
        prog="anytime-edge",
        description="Anytime Edge: distil a teacher into anytime students and run them on modest CPUs.",
    )
