"""A rolling window of timed samples and the quantile of its recent part: the one implementation behind
the runtime's latency estimates (:mod:`edge_runtime.latency`) and the server's shedding estimates
(:mod:`edge_runtime.server._scheduler`).

A :class:`TimeWindow` is a bounded deque of ``(time_s, value)`` pairs, appended in time order. The hot path
is a plain ``deque.append`` (atomic in CPython, so worker threads append without a lock); readers take
the values appended at or after a time, and their quantile. Two bounds apply together: the deque's
``maxlen`` (memory) and the ``since`` time a reader passes (age), so a window in time forgets a busy spell
even when few samples came after it.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import deque

import numpy as np

__all__ = ["TimeWindow"]


class TimeWindow(deque[tuple[float, float]]):
    """The last ``maxlen`` ``(time_s, value)`` samples, oldest first; append them in time order.

    Args:
        maxlen: the most samples kept (>= 1); older ones drop out as new ones are appended.
    """

    def __init__(self, maxlen: int) -> None:
        super().__init__(maxlen=maxlen)

    def values(self, since: float, gap_s: float | None = None) -> list[float]:
        """The values of the samples at or after ``since``, oldest first.

        Args:
            since: the earliest sample time that counts (same clock as the appended times).
            gap_s: if given, a first counted sample that came more than ``gap_s`` after the sample before it
                is left out (a member re-tried after a pause runs cold: caches, ONNX Runtime after idle).
                With ``gap_s`` no shorter than the span ``now - since``, only the first counted sample can
                follow such a gap.
        """
        pairs = list(self)  # copied in C under the GIL, so other threads' appends cannot interleave
        start = bisect_left(pairs, (since, -math.inf))
        if gap_s is not None and 0 < start < len(pairs) and pairs[start][0] - pairs[start - 1][0] > gap_s:
            start += 1
        return [v for _, v in pairs[start:]]

    def quantile(self, q: float, since: float, min_samples: int = 1, gap_s: float | None = None) -> float | None:
        """The ``q`` quantile (``q`` in [0, 1], linear interpolation) of :meth:`values`, or None with fewer
        than ``min_samples`` (at least one) of them."""
        values = self.values(since, gap_s)
        if len(values) < max(min_samples, 1):
            return None
        return float(np.quantile(values, q))
