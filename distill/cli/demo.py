"""``anytime-edge demo``: the main job end to end on any data set ``--data`` accepts."""

from __future__ import annotations

import argparse
from pathlib import Path

from distill.cli._common import add_data_argument, add_progress_argument, add_teacher_arguments

HELP = "the main job end to end: teacher, students, bundle, profiles, anytime"


def configure(parser: argparse.ArgumentParser) -> None:
    add_data_argument(parser)
    parser.add_argument("--out", type=Path, help="output directory (default runs/demo for digits, else runs/<data name>)")
    add_teacher_arguments(parser)
    parser.add_argument("--members", type=int, default=4, help="B-DISTIL ensemble members (default 4)")
    parser.add_argument("--sparsity", type=float, default=0.8, help="FCPTS global sparsity target (default 0.8)")
    parser.add_argument(
        "--speedup", type=float, default=2.0, help="low-rank student's target ORT speed-up over the teacher (default 2)"
    )
    parser.add_argument(
        "--accuracy-drop", type=float, default=0.5, help="entropy exit: points below the full ensemble (default 0.5)"
    )
    parser.add_argument(
        "--int8",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="add INT8 copies of the teacher and the students as candidates (default on)",
    )
    add_progress_argument(parser)


def default_out(data: str) -> Path:
    """runs/demo for the default data, else runs/<data name>: a run on other data never replaces the demo's.

    The Makefile's ``OUT`` follows the same rule (``make demo DATA=path/to/x.npz`` writes runs/x).
    """
    return Path("runs/demo") if data == "digits" else Path("runs") / Path(data.rstrip("/\\")).stem


def run(args: argparse.Namespace) -> int:
    from distill.demo import DemoConfig, run_demo

    out = args.out or default_out(args.data)
    print(f"writing to {out}" + (" (replacing the run already there)" if (out / "report.json").exists() else ""))
    run_demo(
        DemoConfig(
            data=args.data,
            teacher=args.teacher,
            teacher_inputs=args.teacher_inputs,
            out=out,
            runs_dir=args.runs_dir,
            members=args.members,
            sparsity=args.sparsity,
            lowrank_speedup=args.speedup,
            accuracy_drop=args.accuracy_drop,
            int8=args.int8,
            seed=args.seed,
            progress=args.progress,
        )
    )
    return 0
