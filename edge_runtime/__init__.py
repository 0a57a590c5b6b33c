"""Anytime Edge on-device runtime: load a bundle, evaluate its members in order, stop early.

    import edge_runtime
    runtime = edge_runtime.load("bundle/")            # verifies checksums, builds one session per member
    answers = runtime.predict(x, budget_ms=2.0)         # one Prediction per sample
    answers[0].label, answers[0].exit_reason            # e.g. 7, "confident"

Importing this package is cheap: onnxruntime and numpy load on first use of the names that need them
(PEP 562 module ``__getattr__``), so ``python -m edge_runtime --help`` and tools that only read manifests
start fast. The runtime never imports torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from edge_runtime import errors
from edge_runtime.errors import (
    AnytimeEdgeError,
    BundleError,
    ChecksumError,
    EdgeRuntimeError,
    InputError,
    ManifestError,
    MemberError,
    ModelLoadError,
    PolicyError,
    SessionConfigError,
)

if TYPE_CHECKING:
    from edge_runtime.bundle import Bundle, Calibration, LoadLimits, Manifest, PathLike, load_bundle
    from edge_runtime.calibrate import CalibrationTarget, calibrate, save_calibration
    from edge_runtime.deadline import DeadlineConfig
    from edge_runtime.ensemble import AnytimeRuntime, PrefixEvaluation
    from edge_runtime.policies import ExitPolicy
    from edge_runtime.result import Prediction
    from edge_runtime.session import SessionConfig

__all__ = [
    "AnytimeEdgeError",
    "AnytimeRuntime",
    "Bundle",
    "BundleError",
    "Calibration",
    "CalibrationTarget",
    "ChecksumError",
    "DeadlineConfig",
    "EdgeRuntimeError",
    "ExitPolicy",
    "InputError",
    "LoadLimits",
    "Manifest",
    "ManifestError",
    "MemberError",
    "ModelLoadError",
    "PolicyError",
    "Prediction",
    "PrefixEvaluation",
    "SessionConfig",
    "SessionConfigError",
    "calibrate",
    "errors",
    "load",
    "load_bundle",
    "save_calibration",
]

# Public name -> module that defines it; imported on first access.
_LAZY = {
    "AnytimeRuntime": "edge_runtime.ensemble",
    "Bundle": "edge_runtime.bundle",
    "Calibration": "edge_runtime.bundle",
    "CalibrationTarget": "edge_runtime.calibrate",
    "DeadlineConfig": "edge_runtime.deadline",
    "ExitPolicy": "edge_runtime.policies",
    "LoadLimits": "edge_runtime.bundle",
    "Manifest": "edge_runtime.bundle",
    "Prediction": "edge_runtime.result",
    "PrefixEvaluation": "edge_runtime.ensemble",
    "SessionConfig": "edge_runtime.session",
    "calibrate": "edge_runtime.calibrate",
    "load_bundle": "edge_runtime.bundle",
    "save_calibration": "edge_runtime.calibrate",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edge_runtime' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def load(
    path_or_bundle: "PathLike | Bundle",
    *,
    session_config: "SessionConfig | None" = None,
    entropy_threshold: float | str | None = "calibrated",
    budget_ms: float | str | None = None,
    latency_quantile: str = "p99.5",
    warmup: int = 8,
    deadline: "DeadlineConfig | None" = None,
) -> "AnytimeRuntime":
    """Load a bundle (directory or ``.zip``) and build its anytime runtime.

    The manifest is validated and every member's sha256 checked before ONNX Runtime reads a byte; then
    one session per member is created and warmed up.

    Args:
        path_or_bundle: a bundle directory, a ``.zip`` of one, or a loaded :class:`Bundle`.
        session_config: ORT session settings (threads etc.); the default suits small members.
        entropy_threshold: the default entropy exit for :meth:`AnytimeRuntime.predict`: ``"calibrated"``
            (the manifest's threshold; no entropy exit if the bundle was never calibrated), a number in
            nats, or ``"off"``. A per-call value overrides it.
        budget_ms: the default latency budget per request (ms), or None/``"off"``.
        latency_quantile: quantile of observed member latencies that predicts the next run for budgets
            (``"p50"`` ... ``"p99.5"``, the default; see :class:`~edge_runtime.ensemble.AnytimeRuntime`).
        warmup: single-sample warm-up runs per member.
        deadline: how latency estimates age and when a member is stopped in flight
            (:class:`edge_runtime.deadline.DeadlineConfig`; the default suits most bundles).

    Returns:
        The runtime, ready to serve.

    Raises:
        BundleError: missing or tampered files, unknown manifest version, ONNX that fails to load.
        PolicyError: an impossible default threshold or budget.
    """
    from edge_runtime.ensemble import AnytimeRuntime

    return AnytimeRuntime(
        path_or_bundle,
        session_config,
        entropy_threshold=entropy_threshold,
        budget_ms=budget_ms,
        latency_quantile=latency_quantile,
        warmup=warmup,
        deadline=deadline,
    )
