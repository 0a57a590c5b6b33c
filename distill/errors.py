"""Exceptions raised by the offline training package.

AnytimeEdgeError       (edge_runtime.errors) the root of every package's errors
└── DistillError
    ├── DataError          a data set cannot be read or fails validation (lengths, labels, NaN)
    ├── CheckpointError    a checkpoint is missing, damaged or does not match its config
    └── TrainingError      a training method was configured badly or cannot proceed
"""

from __future__ import annotations

from edge_runtime.errors import AnytimeEdgeError

__all__ = ["CheckpointError", "DataError", "DistillError", "TrainingError"]


class DistillError(AnytimeEdgeError):
    """Base of every error the training package raises on purpose."""


class DataError(DistillError):
    """A data set cannot be read, or fails validation."""


class CheckpointError(DistillError):
    """A checkpoint is missing, damaged, or does not match its config."""


class TrainingError(DistillError):
    """A training method was configured badly or cannot proceed."""
