"""Exit policies: when does the anytime runtime stop evaluating members for a sample?

A policy looks at the running ensemble after member k and answers "stop, because ..." or "go on". It is a
small ABC with one abstract method, :meth:`ExitPolicy.stop_reason`, so a new policy is one class plus one
entry in :data:`POLICIES`. The runtime asks it once per member and sample, so implementations do a couple
of float compares and nothing else.

Thresholds and budgets can come from three places, and the same spellings are used everywhere (the Python
API, ``anytime-edge run`` and the server):

* ``entropy_threshold``: a number >= 0 (nats), ``"calibrated"`` (the threshold stored in the bundle's
  manifest by ``anytime-edge calibrate``; no entropy exit if the bundle has none) or ``"off"`` (never exit
  on entropy). ``None`` in a per-call argument means "the runtime's default".
* ``budget_ms``: a number > 0 (milliseconds per request) or ``"off"``; ``None`` per call means "the
  runtime's default".

The latency budget needs a prediction of the next member's latency; :class:`LatencyEstimator`
(:mod:`edge_runtime.latency`) makes it from the bundle's profile for this device and from the latencies
observed in the last second or so (a window in time, so a load spike is forgotten once it ends).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Mapping, Union

from edge_runtime.errors import PolicyError
from edge_runtime.latency import LatencyEstimator  # re-exported: policies and their latency source go together

__all__ = [
    "CALIBRATED",
    "EntropyAndBudget",
    "EntropyThreshold",
    "ExitPolicy",
    "LatencyBudget",
    "LatencyEstimator",
    "OFF",
    "POLICIES",
    "RunAll",
    "make_policy",
    "parse_budget",
    "parse_entropy_threshold",
    "policy_for",
]

OFF = "off"  # spelling for "no entropy exit" / "no budget"
CALIBRATED = "calibrated"  # spelling for "the threshold stored in the manifest"

ThresholdSpec = Union[float, int, str, None]


class ExitPolicy(ABC):
    """Decides after each member whether a sample's evaluation stops.

    Subclasses set ``uses_latency`` when they read ``next_ms`` (the runtime then keeps its latency
    predictions fresh) and implement :meth:`stop_reason`.
    """

    name: str = ""  # the key in POLICIES
    uses_latency: bool = False  # reads next_ms; the runtime only predicts latencies when this is set
    budget_ms: float | None = None  # the request's latency budget, if the policy has one (answers past it are late)

    @abstractmethod
    def stop_reason(self, entropy: float, elapsed_ms: float, next_ms: float) -> str | None:
        """Whether to stop before the next member.

        Args:
            entropy: the running ensemble's entropy for this sample after the member just run (nats).
            elapsed_ms: time since the request started.
            next_ms: predicted latency of the next member.

        Returns:
            ``"confident"`` or ``"budget"`` to stop, ``None`` to evaluate the next member.
        """

    def describe(self) -> dict[str, object]:
        """Name and parameters, for reports."""
        return {"policy": self.name}


class RunAll(ExitPolicy):
    """Never stops early: every member runs (the full ensemble)."""

    name = "all"

    def stop_reason(self, entropy: float, elapsed_ms: float, next_ms: float) -> str | None:
        return None


class EntropyThreshold(ExitPolicy):
    """Stops once the running ensemble is confident: entropy <= threshold."""

    name = "entropy"

    def __init__(self, threshold: float) -> None:
        self.threshold = _checked_threshold(threshold)

    def stop_reason(self, entropy: float, elapsed_ms: float, next_ms: float) -> str | None:
        # NaN entropy compares False, so a member that emits NaN never fakes confidence.
        return "confident" if entropy <= self.threshold else None

    def describe(self) -> dict[str, object]:
        return {"policy": self.name, "entropy_threshold": self.threshold}


class LatencyBudget(ExitPolicy):
    """Stops before member k+1 if elapsed time plus its predicted latency would exceed the budget.

    The first member always runs: the runtime asks a policy only after a member has produced an answer.
    """

    name = "budget"
    uses_latency = True
    budget_ms: float  # always set here

    def __init__(self, budget_ms: float) -> None:
        self.budget_ms = _checked_budget(budget_ms)

    def stop_reason(self, entropy: float, elapsed_ms: float, next_ms: float) -> str | None:
        return "budget" if elapsed_ms + next_ms > self.budget_ms else None

    def describe(self) -> dict[str, object]:
        return {"policy": self.name, "budget_ms": self.budget_ms}


class EntropyAndBudget(ExitPolicy):
    """Both: stop when confident, or when the next member would overrun the budget (confidence first)."""

    name = "entropy+budget"
    uses_latency = True
    budget_ms: float  # always set here

    def __init__(self, threshold: float, budget_ms: float) -> None:
        self.threshold = _checked_threshold(threshold)
        self.budget_ms = _checked_budget(budget_ms)

    def stop_reason(self, entropy: float, elapsed_ms: float, next_ms: float) -> str | None:
        if entropy <= self.threshold:
            return "confident"
        return "budget" if elapsed_ms + next_ms > self.budget_ms else None

    def describe(self) -> dict[str, object]:
        return {"policy": self.name, "entropy_threshold": self.threshold, "budget_ms": self.budget_ms}


# Resolved by name; the constructor keywords are listed so a caller can build one from a config file.
POLICIES: Mapping[str, type[ExitPolicy]] = {
    RunAll.name: RunAll,
    EntropyThreshold.name: EntropyThreshold,
    LatencyBudget.name: LatencyBudget,
    EntropyAndBudget.name: EntropyAndBudget,
}


def make_policy(name: str, **params: float) -> ExitPolicy:
    """Build the policy registered under ``name`` (see :data:`POLICIES`) with its parameters.

    Raises:
        PolicyError: unknown name or wrong parameters.
    """
    try:
        cls = POLICIES[name]
    except KeyError:
        raise PolicyError(f"exit policy '{name}' is unknown; use one of {sorted(POLICIES)}") from None
    try:
        return cls(**params)
    except TypeError as exc:
        raise PolicyError(f"exit policy '{name}' got wrong parameters {sorted(params)}: {exc}") from None


def policy_for(entropy_threshold: float | None, budget_ms: float | None) -> ExitPolicy:
    """The policy that applies a threshold and/or a budget (``None`` = not used)."""
    if entropy_threshold is None and budget_ms is None:
        return RunAll()
    if budget_ms is None:
        assert entropy_threshold is not None  # both None returned above
        return EntropyThreshold(entropy_threshold)
    if entropy_threshold is None:
        return LatencyBudget(budget_ms)
    return EntropyAndBudget(entropy_threshold, budget_ms)


def parse_entropy_threshold(value: ThresholdSpec, calibrated: float | None) -> float | None:
    """Turn a threshold spelling into a number or ``None`` (no entropy exit).

    Args:
        value: a number >= 0, ``"calibrated"``, ``"off"``, or a string holding a number.
        calibrated: the manifest's calibrated threshold, if any.

    Raises:
        PolicyError: anything else.
    """
    if value is None or value == OFF:
        return None
    if value == CALIBRATED:
        return calibrated
    return _checked_threshold(value)


def parse_budget(value: float | int | str | None) -> float | None:
    """Turn a budget spelling (a number > 0 in ms, or ``"off"``) into a number or ``None``."""
    if value is None or value == OFF:
        return None
    return _checked_budget(value)


def _checked_threshold(value: object) -> float:
    try:
        threshold = float(value)  # type: ignore[arg-type]  # any object: float() raising is the check
    except (TypeError, ValueError):
        raise PolicyError(f"entropy threshold {value!r} is not a number; give nats >= 0, '{CALIBRATED}' or '{OFF}'") from None
    if not math.isfinite(threshold) or threshold < 0:
        raise PolicyError(f"entropy threshold {value!r} must be a finite number >= 0 (nats), or '{OFF}'")
    return threshold


def _checked_budget(value: object) -> float:
    try:
        budget = float(value)  # type: ignore[arg-type]  # any object: float() raising is the check
    except (TypeError, ValueError):
        raise PolicyError(f"latency budget {value!r} is not a number; give milliseconds > 0 or '{OFF}'") from None
    if not math.isfinite(budget) or budget <= 0:
        raise PolicyError(f"latency budget {value!r} must be a finite number of milliseconds > 0, or '{OFF}'")
    return budget
