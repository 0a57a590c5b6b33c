"""``anytime-edge``: the whole toolkit's command line.

Runtime commands (run, inspect, calibrate, serve), ``cascade``, ``quantize`` (with onnx) and the profiler's work on a runtime-only install; the
training commands need the ``train`` extra, and say so when it is missing. Only the chosen command's
module is imported (see :mod:`edge_runtime.cli`), so this module must not import torch.

Under ``torchrun`` (``torchrun --standalone --nproc_per_node=N -m distill COMMAND ...``) the command runs in
a process group (:mod:`distill.distributed`, imported only then): training is data-parallel, rank 0 alone
writes and prints.
"""

from __future__ import annotations

import os
import sys
from typing import Mapping, Sequence

from edge_runtime.cli import RUNTIME_COMMANDS, dispatch

__all__ = ["COMMANDS", "main"]

COMMANDS: Mapping[str, tuple[str, str]] = {
    **RUNTIME_COMMANDS,
    "profile": (
        "profiles.cli.profile",
        "measure latency and memory of bundles/ONNX models on this device, or merge other devices' profiles",
    ),
    "select": ("profiles.cli.select", "choose what to deploy from measured accuracy, latency and memory"),
    "train-teacher": ("distill.cli.train_teacher", "train (or resume) the teacher classifier on a data set"),
    "export": ("distill.cli.export", "export a checkpoint, or wrap an .onnx / .pt2 classifier, as a one-member bundle"),
    "quantize": (
        "distill.cli.quantize",
        "quantize every member of a bundle to INT8 (ONNX Runtime), gated against the float bundle",
    ),
    "cascade": ("distill.cli.cascade", "compose one-member bundles (cheapest first) into an anytime cascade"),
    "ensemble": ("distill.cli.ensemble", "distil a teacher into a progressive ensemble (B-DISTIL)"),
    "sparsify": ("distill.cli.sparsify", "sparse students: FCPTS sparsity allocation or DSD² pruning"),
    "lowrank": ("distill.cli.lowrank", "low-rank students with spectral init, distilled from the teacher"),
    "demo": ("distill.cli.demo", "the main job end to end: teacher, students, bundle, profiles, anytime"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``anytime-edge`` console script and of ``python -m distill`` (also under torchrun)."""

    def run() -> int:
        return dispatch(
            argv,
            COMMANDS,
            prog="anytime-edge",
            description="Anytime Edge: distil a teacher into anytime students and run them on modest CPUs.",
        )

    if "WORLD_SIZE" not in os.environ:  # not started by torchrun: no torch import, nothing changes
        return run()
    from distill import distributed
    from distill.errors import TrainingError

    try:
        with distributed.session(), distributed.quiet_unless_main():
            return run()
    except TrainingError as exc:  # the process group could not be formed
        print(f"anytime-edge: {exc}", file=sys.stderr)
        return 1
