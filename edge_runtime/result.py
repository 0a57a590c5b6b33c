"""What the runtime answers for one sample: the best-so-far prediction and how it was reached."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy is only needed for the annotation; keep `import edge_runtime` cheap
    import numpy as np

__all__ = ["EXIT_REASONS", "Prediction"]

# Why evaluation stopped for a sample:
#   confident - the running ensemble's entropy fell to the threshold or below;
#   budget    - the next member would have overrun the latency budget, or the in-flight stop ended the
#               running member at the deadline (then ``stopped_in_flight`` is True);
#   complete  - every member ran;
#   error     - a later member raised; the answer is the best one before it.
EXIT_REASONS = ("confident", "budget", "complete", "error")


@dataclass(frozen=True)
class Prediction:
    """The anytime answer for one sample.

    ``probabilities`` is a view of the ensemble output after ``members_used`` members (the graphs compute
    it); treat it as read-only.

    The budget is per request (the whole batch of a ``predict`` call), counted from the start of the call:
    ``elapsed_ms`` is when this sample's answer was settled, and ``late`` says it came after the budget
    (whatever the exit reason: a slow first member, which always runs, makes even a ``confident``
    answer late).
    """

    label: int  # class index, the arg-max of ``probabilities``
    label_name: str  # task.labels[label]
    probabilities: "np.ndarray"  # shape [C], float32, sums to 1
    members_used: int  # how many members were evaluated for this sample (>= 1)
    exit_reason: str  # one of EXIT_REASONS
    entropy: float  # natural-log entropy of ``probabilities`` (nats)
    elapsed_ms: float  # from the start of the request until this sample's answer was settled
    late: bool = False  # elapsed_ms > the request's budget (always False without a budget)
    stopped_in_flight: bool = False  # a member was stopped at the deadline; the answer is from the ones before

    def __post_init__(self) -> None:
        # Cheap checks only: this runs once per sample on the hot path.
        if self.exit_reason not in EXIT_REASONS:
            raise ValueError(f"exit_reason '{self.exit_reason}' is not one of {list(EXIT_REASONS)}")
        if self.members_used < 1:
            raise ValueError("members_used must be >= 1: the first member always runs")

    def to_dict(self, probabilities: bool = True) -> dict[str, Any]:
        """JSON-ready form (plain Python numbers; ``probabilities`` as a list unless left out).

        Args:
            probabilities: include the class probabilities.

        Returns:
            A dict with keys label, label_name, members_used, exit_reason, entropy, elapsed_ms, late,
            stopped_in_flight (and probabilities).
        """
        d: dict[str, Any] = {
            "label": int(self.label),
            "label_name": self.label_name,
            "members_used": int(self.members_used),
            "exit_reason": self.exit_reason,
            "entropy": _finite_or_none(float(self.entropy)),
            "elapsed_ms": float(self.elapsed_ms),
            "late": bool(self.late),
            "stopped_in_flight": bool(self.stopped_in_flight),
        }
        if probabilities:
            d["probabilities"] = [float(p) for p in self.probabilities.tolist()]
        return d


def _finite_or_none(value: float) -> float | None:
    # JSON has no NaN; a member that emitted NaN entropy reports null rather than invalid JSON.
    return value if math.isfinite(value) else None
