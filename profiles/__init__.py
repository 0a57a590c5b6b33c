"""Measure candidates on the device they will run on, and choose what to deploy.

Runs on a runtime-only install (numpy, onnxruntime, psutil): it imports :mod:`edge_runtime` and never
torch, the exporters or the training package. ``matplotlib`` is used for the selection plot when present.
"""

from __future__ import annotations

from profiles.errors import MeasurementError, ProfileError, SelectionError
from profiles.fleet import merge_profiles, read_profile_file, write_profile_file
from profiles.measure import PROFILE_VERSION, QUANTILES, MeasureConfig, latency_stats, profile_bundle, profile_onnx, time_sessions
from profiles.select import Candidate, Selection, choose, evaluate_candidates, pareto_front, plot_selection, select
from profiles.store import find_profile, store_profile, validate_profile

__all__ = [
    "Candidate",
    "MeasureConfig",
    "MeasurementError",
    "PROFILE_VERSION",
    "ProfileError",
    "QUANTILES",
    "Selection",
    "SelectionError",
    "choose",
    "evaluate_candidates",
    "find_profile",
    "latency_stats",
    "merge_profiles",
    "pareto_front",
    "plot_selection",
    "profile_bundle",
    "profile_onnx",
    "read_profile_file",
    "select",
    "store_profile",
    "time_sessions",
    "validate_profile",
    "write_profile_file",
]
