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

The latency budget needs a prediction of the next member's latency; :class:`LatencyEstimator` makes it
from the bundle's profile for this device and from the latencies observed since start-up.
"""

from __future__ import annotations

import math
import threading
from abc import ABC, abstractmethod
from collections import deque
from time import monotonic, sleep
from typing import Mapping, Sequence, Union

import numpy as np

from edge_runtime.errors import PolicyError

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
        return EntropyThreshold(entropy_threshold)  # type: ignore[arg-type]
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
        threshold = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise PolicyError(
            f"entropy threshold {value!r} is not a number; give nats >= 0, '{CALIBRATED}' or '{OFF}'"
        ) from None
    if not math.isfinite(threshold) or threshold < 0:
        raise PolicyError(f"entropy threshold {value!r} must be a finite number >= 0 (nats), or '{OFF}'")
    return threshold


def _checked_budget(value: object) -> float:
    try:
        budget = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise PolicyError(f"latency budget {value!r} is not a number; give milliseconds > 0 or '{OFF}'") from None
    if not math.isfinite(budget) or budget <= 0:
        raise PolicyError(f"latency budget {value!r} must be a finite number of milliseconds > 0, or '{OFF}'")
    return budget


class LatencyEstimator:
    """Predicts, before member k runs, how long until the answer is out if it does.

    Per member the prediction is ``max(profile, observed) + finish``:

    * ``profile``: the bundle's profile for this device (a quantile measured offline, ``profile_ms``);
    * ``observed``: the ``quantile`` of the member's last ``window`` single-sample runs since start-up;
    * ``finish``: the same quantile of the time from the end of the last member run to the answer being
      returned (best-so-far answer and result object), so a budget covers the whole call.

    Why the larger of profile and observed: a profile is measured on a quiet machine, and a factory PC
    that also runs other work is slower; the max keeps the deadline when contention rises and returns to
    the profile when it ends (the window forgets). Why a high quantile over a recent window rather than a
    mean or a max: the budget is missed when the next member runs longer than predicted, so the
    prediction has to cover the tail (p99 -> about 1% of such decisions can miss), while one scheduler
    hiccup must not make the runtime give up on members for good (a max would). Observed values only
    count once ``min_observations`` exist when a profile is present, so a few slow first runs do not
    override it; with no profile any observation is better than none.

    Hot path: the runtime appends to :attr:`observed` and :attr:`finish` directly (deque appends) and
    :meth:`estimates` returns a cached tuple. Quantiles are recomputed by a daemon thread every
    ``refresh_s`` while estimates are being asked for (it stops after ``idle_s`` without a call), so no
    request ever pays for a refresh (tens of microseconds, more than a small member's run).
    """

    def __init__(
        self,
        num_members: int,
        profile_ms: Sequence[float] | None = None,
        quantile: float = 0.99,
        window: int = 512,
        min_observations: int = 32,
        refresh_s: float = 0.1,
        idle_s: float = 10.0,
    ) -> None:
        if profile_ms is not None and len(profile_ms) != num_members:
            raise PolicyError(f"profile has {len(profile_ms)} latencies for {num_members} members; re-profile the bundle")
        if not 0.5 <= quantile <= 1.0:
            raise PolicyError(f"latency quantile {quantile} must lie in [0.5, 1]; 0.99 keeps misses near 1%")
        if window < 1 or min_observations < 1:
            raise PolicyError("latency window and minimum observations must be >= 1")
        if not (refresh_s > 0 and idle_s > 0):
            raise PolicyError("latency refresh and idle intervals must be > 0 seconds")
        self.profile_ms = None if profile_ms is None else tuple(float(v) for v in profile_ms)
        self.quantile = quantile
        self.min_observations = min_observations
        self.refresh_s = refresh_s
        self.idle_s = idle_s
        self.observed: tuple[deque[float], ...] = tuple(deque(maxlen=window) for _ in range(num_members))
        self.finish: deque[float] = deque(maxlen=window)
        self._cached = self._compute()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._last_call = 0.0

    def estimates(self) -> tuple[float, ...]:
        """Predicted ms from the start of member k to the answer, for every k (cached; see the class)."""
        self._last_call = monotonic()  # before the check below, so a stopping refresher is seen as stopped
        if self._thread is None:
            self._start_refresher()
        return self._cached

    def refresh(self) -> tuple[float, ...]:
        """Recompute now (after warm-up, or in tests) and return the estimates."""
        self._cached = self._compute()
        return self._cached

    def observations(self) -> list[np.ndarray]:
        """Recent observed single-sample latencies (ms) per member, oldest first."""
        return [np.array(list(d), dtype=np.float64) for d in self.observed]

    def source(self) -> str:
        """Where predictions come from: ``"profile"``, ``"observed"`` or ``"profile+observed"``."""
        if self.profile_ms is None:
            return "observed"
        enough = any(len(d) >= self.min_observations for d in self.observed)
        return "profile+observed" if enough else "profile"

    def _start_refresher(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._refresh_loop, name="edge_runtime-latency", daemon=True)
                self._thread.start()

    def _refresh_loop(self) -> None:
        while True:
            sleep(self.refresh_s)
            self._cached = self._compute()
            with self._lock:
                if monotonic() - self._last_call > self.idle_s:
                    self._thread = None
                    return

    def _quantile(self, window: deque[float], needed: int) -> float:
        values = list(window)  # copied in C under the GIL, so other threads' appends cannot interleave
        return float(np.quantile(values, self.quantile)) if len(values) >= needed else 0.0

    def _compute(self) -> tuple[float, ...]:
        needed = 1 if self.profile_ms is None else self.min_observations
        finish = self._quantile(self.finish, 1)
        out = []
        for k, window in enumerate(self.observed):
            prior = 0.0 if self.profile_ms is None else self.profile_ms[k]
            out.append(max(prior, self._quantile(window, needed)) + finish)
        return tuple(out)
