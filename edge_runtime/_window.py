"""A rolling window of timed samples and the quantile of its recent part: the one implementation behind
the runtime's latency estimates (:mod:`edge_runtime.latency`) and the server's shedding estimates
(:mod:`edge_runtime.server._scheduler`).

A :class:`TimeWindow` is a ring of ``(time_s, value)`` pairs in two preallocated float arrays, appended in
time order. Two bounds apply together: its capacity (memory) and the ``since`` time a reader passes (age),
so a window in time forgets a busy spell even when few samples came after it.

Why arrays and not a deque of tuples: readers run on a background thread while requests run, and every
microsecond a reader holds the interpreter lock is a microsecond a request thread that has just left ONNX
Runtime may wait for it. A deque of 4096 tuples took ~165 us per window to copy, filter and convert for
``np.quantile`` (~0.8 ms per refresh of a 4-member estimator, every 0.1 s), and that was most of the
runtime's late answers at microsecond-scale budgets (``benchmarks/deadline.py --phases budgets``: misses
of 10-60 us at ~1% of requests). Here a read is a few vectorised numpy calls.

Threads: :meth:`append` is a few item assignments under the interpreter lock, with no lock of its own.
Two threads appending at once may write the same slot (one sample is lost), and a reader racing an append
may see the slot being written with its old time, or without the sample; the value is written before the
time, so a half-written slot keeps its old, usually out-of-window, time. Latency estimates tolerate
that; nothing here is a count that must be exact.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np

__all__ = ["TimeWindow"]


class TimeWindow:
    """The last ``maxlen`` ``(time_s, value)`` samples; append them in time order.

    Args:
        maxlen: the most samples kept (>= 1); older ones drop out as new ones are appended.
    """

    def __init__(self, maxlen: int) -> None:
        if maxlen < 1:
            raise ValueError(f"a window holds at least one sample, not {maxlen}")
        self.maxlen = maxlen
        self._times = np.full(maxlen, -math.inf)
        self._values = np.zeros(maxlen)
        self._count = 0  # samples ever appended; the next goes to slot _count % maxlen

    def append(self, sample: tuple[float, float]) -> None:
        """Add ``(time_s, value)``, the newest sample."""
        i = self._count
        slot = i % self.maxlen
        self._values[slot] = sample[1]  # value first: see the module on readers racing an append
        self._times[slot] = sample[0]
        self._count = i + 1

    def extend(self, samples: Iterable[tuple[float, float]]) -> None:
        """:meth:`append` each sample, in order."""
        for sample in samples:
            self.append(sample)

    def __len__(self) -> int:
        return min(self._count, self.maxlen)

    def __getitem__(self, index: int) -> tuple[float, float]:
        """Sample ``index`` counted from the oldest kept (negative: from the newest, ``-1`` the newest)."""
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"window index {index} out of range for {n} samples")
        slot = (self._count - n + index % n) % self.maxlen
        return float(self._times[slot]), float(self._values[slot])

    def values(self, since: float, gap_s: float | None = None) -> np.ndarray:
        """The values of the samples at or after ``since``, oldest first (float64 array).

        Args:
            since: the earliest sample time that counts (same clock as the appended times).
            gap_s: if given, a first counted sample that came more than ``gap_s`` after the sample before it
                is left out (a member re-tried after a pause runs cold: caches, ONNX Runtime after idle).
                With ``gap_s`` no shorter than the span ``now - since``, only the first counted sample can
                follow such a gap.
        """
        count = self._count
        n = min(count, self.maxlen)
        if n == count:  # not wrapped yet: slots 0..n-1 are in time order
            times, values = self._times[:n], self._values[:n]
        else:  # oldest at slot count % maxlen
            split = count % self.maxlen
            times = np.concatenate((self._times[split:], self._times[:split]))
            values = np.concatenate((self._values[split:], self._values[:split]))
        counts = times >= since
        if gap_s is not None and counts.any():
            first = int(counts.argmax())
            if 0 < first and times[first] - times[first - 1] > gap_s:
                counts[first] = False
        kept: np.ndarray = values[counts]
        return kept

    def quantile(self, q: float, since: float, min_samples: int = 1, gap_s: float | None = None) -> float | None:
        """The ``q`` quantile (``q`` in [0, 1], linear interpolation, as ``np.quantile``) of :meth:`values`,
        or None with fewer than ``min_samples`` (at least one) of them."""
        values = self.values(since, gap_s)
        if len(values) < max(min_samples, 1):
            return None
        return linear_quantile(values, q)


def linear_quantile(values: np.ndarray, q: float) -> float:
    """``np.quantile(values, q)`` (linear interpolation) of a non-empty 1-D float array, by one partial sort:
    the same number for a fraction of ``np.quantile``'s fixed cost (which dominates at a few thousand values).
    ``values`` is reordered in place."""
    position = q * (len(values) - 1)
    lo = int(math.floor(position))
    hi = min(lo + 1, len(values) - 1)
    values.partition((lo, hi) if hi != lo else lo)
    low = float(values[lo])
    return low + (float(values[hi]) - low) * (position - lo)
