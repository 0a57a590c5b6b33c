"""Argument helpers shared by the training commands (data, teacher, output)."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = [
    "DefaultsHelpFormatter",
    "add_data_argument",
    "add_progress_argument",
    "add_teacher_arguments",
    "check_input_shape",
    "resolve_teacher",
]


def add_data_argument(parser: argparse.ArgumentParser, default: str = "digits") -> None:
    parser.add_argument(
        "--data",
        default=default,
        help="digits, mnist1d, mnist (the shared real MNIST), a directory of IDX files, or an .npz "
        "with x_train, y_train, x_test, y_test (default %(default)s)",
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


def add_progress_argument(parser: argparse.ArgumentParser) -> None:
    """``--progress/--no-progress`` (shown by default), the one spelling every training command uses."""
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show progress bars")


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with every option's default, except options without one (None) or whose help says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def check_input_shape(config: dict, dataset, checkpoint: object, data: str) -> None:  # type: ignore[no-untyped-def, type-arg]
    """Refuse data whose inputs differ from the ones a checkpoint's model takes, before the model sees them.

    Raises:
        CheckpointError: one line naming both shapes and the fix.
    """
    from distill.errors import CheckpointError

    expected = tuple(config["model"]["input_shape"])
    if expected != tuple(dataset.input_shape):
        raise CheckpointError(
            f"the model in {checkpoint} takes inputs {expected}, but --data {data} has {tuple(dataset.input_shape)}; "
            "pass the data it was trained on"
        )
