"""Argument helpers shared by the training commands (data, teacher, output)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch-heavy: imported where used
    from distill.data import Dataset
    from distill.teachers import LoadedTeacher

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
        help="digits, mnist1d, mnist (the shared real MNIST), cluttered-mnist[:IDX_DIR] (64x64, generated from MNIST), "
        "a directory of IDX files, or an .npz "
        "with x_train, y_train, x_test, y_test (default %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the validation split and of training")


def add_teacher_arguments(parser: argparse.ArgumentParser, default: str | None = "auto", extra_help: str = "") -> None:
    parser.add_argument(
        "--teacher",
        "--teacher-dir",
        dest="teacher",
        default=default,
        help="the teacher: 'auto' (train/reuse the default teacher under --runs-dir), a checkpoint directory from "
        "`anytime-edge train-teacher`, an ONNX classifier (.onnx; logits only), or a torch.export program (.pt2)" + extra_help,
    )
    parser.add_argument(
        "--teacher-inputs",
        choices=("raw", "model"),
        default="raw",
        help="what a .onnx/.pt2 teacher takes: raw values as in --data (default) or standardised model inputs",
    )
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="cache of trained teachers and teacher logits")


def resolve_teacher(args: argparse.Namespace) -> tuple[LoadedTeacher, Dataset]:
    """(LoadedTeacher, dataset) for --teacher/--data (see :func:`distill.teachers.load_teacher`)."""
    from distill.data import load_dataset
    from distill.teachers import load_teacher

    dataset = load_dataset(args.data, seed=args.seed)
    progress = bool(getattr(args, "progress", not getattr(args, "no_progress", False)))
    return load_teacher(args.teacher, dataset, runs_dir=args.runs_dir, inputs=args.teacher_inputs, progress=progress), dataset


def add_progress_argument(parser: argparse.ArgumentParser) -> None:
    """``--progress/--no-progress`` (shown by default), the one spelling every training command uses."""
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show progress bars")


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with every option's default, except options without one (None) or whose help says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def check_input_shape(config: dict[str, Any], dataset: Dataset, checkpoint: object, data: str) -> None:
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
