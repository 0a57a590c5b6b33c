"""Argument helpers shared by the training commands (data, teacher, output)."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_data_argument", "add_teacher_arguments", "resolve_teacher"]


def add_data_argument(parser: argparse.ArgumentParser, default: str = "digits") -> None:
    parser.add_argument(
        "--data",
        default=default,
        help="digits (default), mnist1d, mnist (the shared real MNIST), a directory of IDX files, or an .npz "
        "with x_train, y_train, x_test, y_test",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the validation split and of training")


def add_teacher_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--teacher",
        "--teacher-dir",
        dest="teacher",
        default="auto",
        help="the teacher: 'auto' (train/reuse the default teacher under --runs-dir), a checkpoint directory from "
        "`anytime-edge train-teacher`, an ONNX classifier (.onnx; logits only), or a torch.export program (.pt2)",
    )
    parser.add_argument(
        "--teacher-inputs",
        choices=("raw", "model"),
        default="raw",
        help="what a .onnx/.pt2 teacher takes: raw values as in --data (default) or standardised model inputs",
    )
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="cache of trained teachers and teacher logits")


def resolve_teacher(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """(LoadedTeacher, dataset) for --teacher/--data (see :func:`distill.teachers.load_teacher`)."""
    from distill.data import load_dataset
    from distill.teachers import load_teacher

    dataset = load_dataset(args.data, seed=args.seed)
    progress = bool(getattr(args, "progress", not getattr(args, "no_progress", False)))
    return load_teacher(args.teacher, dataset, runs_dir=args.runs_dir, inputs=args.teacher_inputs, progress=progress), dataset
