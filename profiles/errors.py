"""Exceptions raised by the profiler.

    ProfileError
    ├── MeasurementError   a model could not be loaded or timed
    └── SelectionError     no candidate satisfies the requested budget / memory cap, or inputs are bad
"""

from __future__ import annotations

__all__ = ["MeasurementError", "ProfileError", "SelectionError"]


class ProfileError(Exception):
    """Base of every error the profiler raises on purpose."""


class MeasurementError(ProfileError):
    """A model could not be loaded or timed."""


class SelectionError(ProfileError):
    """No candidate satisfies the request, or the candidates are malformed."""
