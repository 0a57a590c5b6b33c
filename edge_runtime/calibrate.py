"""Choose the entropy exit threshold on held-out data, and show the accuracy / cost trade-off.

Every member runs once on the validation set (:meth:`AnytimeRuntime.evaluate_prefixes`); from the
per-prefix entropies and predictions the outcome of *every* threshold follows exactly, without running a
member again: a sample stops at the first member k < K whose running entropy is <= t, else after all K.

Exact sweep: as t rises, a sample's exit member only changes at its "record lows" (an entropy lower than
every earlier prefix's), so the whole curve is a sorted list of at most N*(K-1) events, each moving one
sample from one exit member to an earlier one. Sorting them and taking cumulative sums gives accuracy and
mean members at every distinct threshold in O(NK log NK).

Targets:

* ``accuracy_drop=D`` - accuracy within D percentage points of the full ensemble (default 0.5). The
  chosen threshold is the largest t such that *every* threshold up to t meets the target, so one lucky
  isolated point of a noisy curve is never picked;
* ``max_mean_members=m`` - mean members evaluated <= m; among the thresholds that meet it, the most
  accurate (ties: fewer members).

The stored threshold sits midway between the chosen event and the next one, so a last-bit difference
between batched (calibration) and single-sample (serving) entropies cannot flip a sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_runtime.bundle import Calibration, PathLike, update_manifest
from edge_runtime.errors import InputError, PolicyError

if TYPE_CHECKING:
    from edge_runtime.ensemble import AnytimeRuntime, PrefixEvaluation

__all__ = [
    "CalibrationTarget",
    "TradeoffCurve",
    "calibrate",
    "calibrate_prefixes",
    "save_calibration",
    "tradeoff_curve",
]


@dataclass(frozen=True)
class CalibrationTarget:
    """What the threshold must achieve on validation data: give exactly one of the two."""

    accuracy_drop: float | None = 0.5  # percentage points below the full ensemble's accuracy allowed
    max_mean_members: float | None = None  # mean members evaluated per sample allowed

    def __post_init__(self) -> None:
        if (self.accuracy_drop is None) == (self.max_mean_members is None):
            raise PolicyError("give exactly one calibration target: an accuracy drop or a maximum of mean members")
        if self.accuracy_drop is not None and not (math.isfinite(self.accuracy_drop) and self.accuracy_drop >= 0):
            raise PolicyError(f"accuracy drop {self.accuracy_drop} must be a finite number of points >= 0")
        if self.max_mean_members is not None and not (math.isfinite(self.max_mean_members) and self.max_mean_members >= 1):
            raise PolicyError(f"max mean members {self.max_mean_members} must be >= 1 (the first member always runs)")

    @classmethod
    def members(cls, m: float) -> "CalibrationTarget":
        """The "mean members <= m" target."""
        return cls(accuracy_drop=None, max_mean_members=m)

    def describe(self, full_accuracy: float) -> str:
        """A one-line description stored in the manifest."""
        if self.accuracy_drop is not None:
            return (
                f"accuracy within {self.accuracy_drop:g} point(s) of the full ensemble ({100 * full_accuracy:.2f}% on validation)"
            )
        return f"mean members <= {self.max_mean_members:g}"


@dataclass(frozen=True)
class TradeoffCurve:
    """Accuracy and mean members at every distinct threshold (ascending), from an exact sweep.

    Point i applies to thresholds in ``[threshold[i], threshold[i+1])``; point 0 is "no early exit"
    when ``threshold[0]`` is 0 and no sample has zero entropy.
    """

    threshold: np.ndarray  # (P,) float64, ascending
    accuracy: np.ndarray  # (P,) fraction correct
    mean_members: np.ndarray  # (P,) mean members evaluated
    full_accuracy: float  # accuracy of the full ensemble (no early exit)
    num_members: int

    def stored_threshold(self, i: int) -> float:
        """A threshold that reproduces point i robustly: midway to the next event."""
        if i + 1 < len(self.threshold):
            return float((self.threshold[i] + self.threshold[i + 1]) / 2)
        return float(self.threshold[i] * (1 + 1e-3) + 1e-6)

    def points(self, max_points: int = 64, keep: tuple[int, ...] = ()) -> tuple[dict[str, float], ...]:
        """At most ``max_points`` (+ ``keep``) evenly spread points, JSON-ready, for the manifest."""
        n = len(self.threshold)
        idx = set(np.unique(np.linspace(0, n - 1, num=min(n, max_points)).round().astype(int)).tolist())
        idx.update(keep)
        return tuple(
            {
                "threshold": self.stored_threshold(i),
                "accuracy": float(self.accuracy[i]),
                "mean_members": float(self.mean_members[i]),
            }
            for i in sorted(idx)
        )


def tradeoff_curve(evaluation: "PrefixEvaluation", y: Any) -> TradeoffCurve:
    """The exact accuracy / mean-members curve over all entropy thresholds.

    Args:
        evaluation: every prefix's probabilities and entropies (from ``evaluate_prefixes``).
        y: integer class labels, shape (N,).

    Raises:
        InputError: labels do not match the samples or are not class indices.
    """
    probs, entropy = evaluation.probs, evaluation.entropy
    k_all, n = entropy.shape
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != n:
        raise InputError(f"labels of shape {list(y.shape)} for {n} samples; give one integer label per sample")
    if y.dtype.kind not in "iu":
        if y.dtype.kind != "f" or not np.all(np.mod(y, 1) == 0):
            raise InputError(f"labels have dtype {y.dtype}; give integer class indices")
        y = y.astype(np.int64)
    if n and (y.min() < 0 or y.max() >= probs.shape[-1]):
        raise InputError(f"labels must lie in [0, {probs.shape[-1] - 1}] (the bundle's classes)")
    correct = (probs.argmax(axis=-1) == y[None, :]).astype(np.int64)  # (K, N)
    full = float(correct[-1].mean()) if n else float("nan")
    # Entropies below 0 are float noise on certain answers; a threshold is >= 0, so they act as 0.
    e = np.maximum(entropy[:-1].astype(np.float64), 0.0)  # (K-1, N): the last member's entropy never matters
    events_t, events_dc, events_dm = [], [], []
    nxt = np.full(n, k_all - 1)  # exit member of each sample just below the current event
    prev_min = np.full(n, np.inf)
    record = np.zeros_like(e, dtype=bool)
    for k in range(k_all - 1):
        record[k] = e[k] < prev_min
        prev_min = np.minimum(prev_min, e[k])
    for k in range(k_all - 2, -1, -1):  # later record lows are lower, so they are passed first
        i = np.flatnonzero(record[k])
        events_t.append(e[k, i])
        events_dc.append(correct[k, i] - correct[nxt[i], i])
        events_dm.append(k - nxt[i])
        nxt[i] = k
    t = np.concatenate(events_t) if events_t else np.zeros(0)
    order = np.argsort(t, kind="stable")
    t = t[order]
    dc = np.concatenate(events_dc)[order] if events_t else np.zeros(0, dtype=np.int64)
    dm = np.concatenate(events_dm)[order] if events_t else np.zeros(0, dtype=np.int64)
    base_correct, base_members = int(correct[-1].sum()), k_all * n
    cum_c = base_correct + np.cumsum(dc)
    cum_m = base_members + np.cumsum(dm)
    # Keep the last event of each run of equal thresholds: entropy <= t lets all of them exit together.
    last = np.r_[t[1:] != t[:-1], True] if len(t) else np.zeros(0, dtype=bool)
    thr, acc, mem = t[last], cum_c[last] / max(n, 1), cum_m[last] / max(n, 1)
    if len(thr) == 0 or thr[0] > 0:  # threshold 0 exits nobody: the full-ensemble point
        thr = np.r_[0.0, thr]
        acc = np.r_[base_correct / max(n, 1), acc]
        mem = np.r_[float(k_all), mem]
    return TradeoffCurve(threshold=thr, accuracy=acc, mean_members=mem, full_accuracy=full, num_members=k_all)


def calibrate_prefixes(
    evaluation: "PrefixEvaluation",
    y: Any,
    target: CalibrationTarget | None = None,
    curve_points: int = 64,
) -> Calibration:
    """Pick the threshold for ``target`` from a prefix evaluation (no member runs again).

    Returns:
        The :class:`~edge_runtime.bundle.Calibration`: threshold, target, validation accuracy and mean
        members at it, and a thinned trade-off curve.

    Raises:
        InputError: bad or empty labels.
    """
    target = target or CalibrationTarget()
    if evaluation.entropy.shape[1] == 0:
        raise InputError("the validation set is empty; give at least one labelled sample")
    curve = tradeoff_curve(evaluation, y)
    if target.accuracy_drop is not None:
        floor = curve.full_accuracy - target.accuracy_drop / 100 - 1e-12
        failing = np.flatnonzero(curve.accuracy < floor)
        # The largest threshold below the first failing one (point 0 is the full ensemble or a threshold
        # that exits only zero-entropy samples; it meets any drop >= 0 in practice).
        chosen = int(failing[0]) - 1 if len(failing) else len(curve.threshold) - 1
        chosen = max(chosen, 0)
    else:
        assert target.max_mean_members is not None  # CalibrationTarget sets exactly one of the two
        ok = np.flatnonzero(curve.mean_members <= target.max_mean_members + 1e-12)
        best = ok[np.lexsort((curve.mean_members[ok], -curve.accuracy[ok]))[0]]
        chosen = int(best)
    return Calibration(
        entropy_threshold=curve.stored_threshold(chosen),
        target=target.describe(curve.full_accuracy),
        accuracy=float(curve.accuracy[chosen]),
        mean_members=float(curve.mean_members[chosen]),
        curve=curve.points(curve_points, keep=(chosen,)),
    )


def calibrate(
    runtime: "AnytimeRuntime",
    x: Any,
    y: Any,
    target: CalibrationTarget | None = None,
    curve_points: int = 64,
) -> Calibration:
    """Run every member once on validation data ``x`` (raw inputs) and pick the threshold for ``target``.

    Args:
        runtime: the loaded bundle's runtime.
        x: validation inputs as clients send them (preprocess is applied).
        y: their integer labels.
        target: accuracy drop (default 0.5 point) or maximum mean members.
        curve_points: how many trade-off points to keep in the result.

    Raises:
        InputError: bad inputs or labels.
        MemberError: a member raised.
    """
    return calibrate_prefixes(runtime.evaluate_prefixes(x), y, target, curve_points)


def save_calibration(bundle_path: PathLike, calibration: Calibration) -> None:
    """Store ``calibration`` in the bundle's manifest, atomically and under the manifest lock.

    The manifest is re-read under the lock (:func:`~edge_runtime.bundle.update_manifest`), so a profile
    stored by another process meanwhile is kept.

    Raises:
        BundleError: the bundle cannot be read, verified or written.
    """
    update_manifest(bundle_path, lambda bundle: replace(bundle.manifest, calibration=calibration))
