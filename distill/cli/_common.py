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
        "--teacher-dir",
        default="auto",
        help="a checkpoint from `anytime-edge train-teacher`, or 'auto' to train/reuse the default teacher "
        "under --runs-dir",
    )
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="cache of trained teachers")


def resolve_teacher(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """(teacher, dataset, metrics) for --teacher-dir/--data: a checkpoint, or the cached default teacher."""
    from distill.data import load_dataset
    from distill.errors import CheckpointError
    from distill.teacher import ensure_teacher, load_model
    from distill.train import accuracy

    dataset = load_dataset(args.data, seed=args.seed)
    if args.teacher_dir == "auto":
        return ensure_teacher(dataset, runs_dir=args.runs_dir)
    teacher, config = load_model(args.teacher_dir)
    if tuple(config["model"]["input_shape"]) != dataset.input_shape:
        raise CheckpointError(
            f"the teacher in {args.teacher_dir} takes inputs {tuple(config['model']['input_shape'])}, "
            f"but --data {args.data} has {dataset.input_shape}; pass the data it was trained on"
        )
    return teacher, dataset, {"test_accuracy": accuracy(teacher, dataset.x_test, dataset.y_test)}
