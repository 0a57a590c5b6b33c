"""``anytime-edge demo``: the main job end to end on any data set ``--data`` accepts."""

from __future__ import annotations

import argparse
from pathlib import Path

from distill.cli._common import add_data_argument, add_teacher_arguments

HELP = "the main job end to end: teacher, students, bundle, profiles, anytime"


def configure(parser: argparse.ArgumentParser) -> None:
    add_data_argument(parser)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output directory (default runs/demo)")
    add_teacher_arguments(parser)
    parser.add_argument("--members", type=int, default=4, help="B-DISTIL ensemble members (default 4)")
    parser.add_argument("--sparsity", type=float, default=0.8, help="FCPTS global sparsity target (default 0.8)")
    parser.add_argument("--speedup", type=float, default=2.0, help="low-rank student's target ORT speed-up over the teacher (default 2)")
    parser.add_argument("--accuracy-drop", type=float, default=0.5, help="entropy exit: points below the full ensemble (default 0.5)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    from distill.demo import DemoConfig, run_demo

    run_demo(DemoConfig(
        data=args.data, teacher=args.teacher, teacher_inputs=args.teacher_inputs, out=args.out, runs_dir=args.runs_dir, members=args.members, sparsity=args.sparsity,
        lowrank_speedup=args.speedup, accuracy_drop=args.accuracy_drop, seed=args.seed, progress=not args.no_progress,
    ))
    return 0
