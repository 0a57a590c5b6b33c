"""Measure candidates on the device they will run on, and choose what to deploy.

Runs on a runtime-only install (numpy, onnxruntime, psutil): it imports :mod:`edge_runtime` and never
torch, the exporters or the training package. ``matplotlib`` is used for the selection plot when present.
"""

from __future__ import annotations

from profiles.errors import MeasurementError, ProfileError, SelectionError
from profiles.measure import PROFILE_VERSION, QUANTILES, MeasureConfig, latency_stats, profile_bundle, profile_onnx
from profiles.store import find_profile, store_profile, validate_profile

__all__ = [
    "MeasureConfig",
    "MeasurementError",
    "PROFILE_VERSION",
    "ProfileError",
    "QUANTILES",
    "SelectionError",
    "find_profile",
    "latency_stats",
    "profile_bundle",
    "profile_onnx",
    "store_profile",
    "validate_profile",
]
