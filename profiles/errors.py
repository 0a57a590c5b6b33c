"""Exceptions raised by the profiler.

AnytimeEdgeError       (edge_runtime.errors) the root of every package's errors
└── ProfileError
    ├── MeasurementError   a model could not be loaded or timed
    └── SelectionError     no candidate satisfies the requested budget / memory cap, or inputs are bad
"""

from __future__ import annotations

from edge_runtime.errors import AnytimeEdgeError

__all__ = ["MeasurementError", "ProfileError", "SelectionError"]


class ProfileError(AnytimeEdgeError):
    """Base of every error the profiler raises on purpose."""


class MeasurementError(ProfileError):
    """A model could not be loaded or timed."""


class SelectionError(ProfileError):
    """No candidate satisfies the request, or the candidates are malformed."""
