"""Latency estimates for the budget policy: profile, recent observations, and how they age.

:class:`LatencyEstimator` predicts, before member k runs, how long until the answer is out if it does.
Per member the prediction is ``max(profile, observed) + finish``:

* ``profile``: the bundle's profile for this device (a quantile measured offline, ``profile_ms``);
* ``observed``: the ``quantile`` of the member's single-sample runs of the last ``window_s`` seconds
  (a window in *time*, at most ``max_observations`` runs);
* ``finish``: the same quantile of the time from the end of the last member run to the answer being
  returned, so a budget covers the whole call.

Why the larger of profile and observed: a profile is measured on a quiet machine; a factory PC that also
runs other work is slower, and the observed quantile keeps the deadline while contention lasts. Why a
high quantile: the budget is missed when the next member runs longer than predicted, so the prediction
covers the tail. The runtime asks for p99.5, not p99: short stalls (timer interrupts, ~17-24 us a few hundred
times a second on a VM) strike per unit of time, so a request is exposed over its last member *and* the
finish, while each piece's p99 sits below a stall that hits under 1% of its runs; p99 left ~1-1.5% of
requests late at the tightest budgets, p99.5 0.25-0.55%.

Why a window in time and not the last N runs: a member that the budget skips is not run, so a window of
its last N runs never forgets the slow runs of a load spike, and the member stays predicted slow for good
(../shared/cases/deadline/06: after a 3 s burst the runtime kept using one member of four until restarted).
Observations older than ``window_s`` no longer count. A member with no run in the window falls back to
its profile (measured on a quiet machine), so a skipped member is re-admitted, and re-measured, within
``window_s`` (+ one refresh) of its last slow run: if the load is gone it stays, if not its new slow runs
keep it out for another window. The first run of such a re-try is not counted: it runs cold (caches, ONNX
Runtime after idle), and counting it would hold a member out for good on a quiet machine. Under contention that lasts, each skipped member is thus probed about
once per ``window_s``; the in-flight stop (:mod:`edge_runtime.deadline`) bounds what such a probe costs
for ms-scale members. With no profile, the fallback is the member's *baseline*: the lowest windowed
quantile seen since load (the quietest the device has shown, over windows with at least
``_BASELINE_SAMPLES`` runs), halved for every ``_BASELINE_HALVING`` windows the member has gone unrun, so a
baseline learnt under load (a runtime started during a spike) cannot lock a member out either.

Re-tries under lasting load: member 1 runs on every request, so its window always shows how loaded the
device is *now*. While it runs at least ``_LOADED`` (1.5) times slower than its own reference (profile, else
baseline), a member being re-tried (no run in the window) is predicted that many times slower than its
fallback: a re-try is then made only where even the loaded prediction fits. Without this, each skipped
member was probed about once a window into a core shared with a busy process, and those probes were the
answers that came late despite the in-flight stop (the stop itself waits for the core: flag-to-stop up to
4-8 ms there; ``benchmarks/deadline.py --phases late_member``). The factor is live, never a stale record:
once member 1's slow runs leave the window, re-tries are back at the fallback, so recovery after a spike
takes at most ``window_s`` (+ one refresh) as before.

Start-up: when a profile exists, observed values only count once a member has been observed
``min_observations`` times since load, so a few slow first runs do not override it; with no profile any
observation is better than none.

Hot path: the runtime appends ``(time_s, ms)`` to :attr:`LatencyEstimator.observed` and
:attr:`LatencyEstimator.finish` directly (:class:`~edge_runtime._window.TimeWindow`, no lock) and :meth:`estimates`
returns a cached tuple; a re-tried member's run far slower than its prediction (twice) raises the cached
value at once (:meth:`LatencyEstimator.raise_to`), so a re-try of a member that is still slow costs one
late request, not every request until the next refresh. Quantiles are recomputed by one background thread every ``refresh_s`` while
estimates are being asked for (it stops after ``idle_s`` without a call, and :meth:`close` or interpreter
exit stop and join it), so no request pays for a refresh (~80 us for four members of 4096 runs, more than a small member's run; the windows are numpy rings,
not deques, because the refresher holds the interpreter lock while it reads them and a request thread leaving
ONNX Runtime waits for it). ``refresh_s=None`` runs no thread: the caller refreshes (tests with a fake clock).
"""

from __future__ import annotations

import math
import threading
from time import monotonic, perf_counter
from typing import Any, Callable, Sequence

import numpy as np

from edge_runtime._threads import BackgroundThread
from edge_runtime._window import TimeWindow, linear_quantile
from edge_runtime.errors import PolicyError

__all__ = ["LatencyEstimator"]

_BASELINE_SAMPLES = 4  # runs a window needs before its quantile may lower a member's baseline
_BASELINE_HALVING = 5.0  # windows without a run after which a no-profile member's fallback halves
_LOADED = 1.5  # member 1 this many times slower than its reference: re-tried members are predicted that much slower


class LatencyEstimator:
    """Predicts each member's latency for the budget policy; see the module docstring.

    Args:
        num_members: members in evaluation order.
        profile_ms: the profile's latency per member (ms), or None when the bundle has no profile here.
        quantile: quantile of observed latencies that predicts the next run, in [0.5, 1].
        window_s: observations count for this many seconds (> 0).
        min_observations: runs of a member since load before its observations override a profile.
        refresh_s: seconds between background refreshes, or None for no background thread.
        idle_s: the background thread stops after this many seconds without an :meth:`estimates` call.
        max_observations: memory bound per member (the window holds at most this many runs).
        clock: seconds, the same clock as the timestamps the runtime appends (``time.perf_counter``).
        names: member names, for :meth:`describe`.

    Raises:
        PolicyError: a setting out of range, or a profile of the wrong length.
    """

    def __init__(
        self,
        num_members: int,
        profile_ms: Sequence[float] | None = None,
        quantile: float = 0.99,
        window_s: float = 1.0,
        min_observations: int = 32,
        refresh_s: float | None = 0.1,
        idle_s: float = 10.0,
        max_observations: int = 4096,
        clock: Callable[[], float] = perf_counter,
        names: Sequence[str] | None = None,
    ) -> None:
        if profile_ms is not None and len(profile_ms) != num_members:
            raise PolicyError(f"profile has {len(profile_ms)} latencies for {num_members} members; re-profile the bundle")
        if not 0.5 <= quantile <= 1.0:
            raise PolicyError(f"latency quantile {quantile} must lie in [0.5, 1]; 0.99 keeps misses near 1%")
        if not (window_s > 0 and math.isfinite(window_s)):
            raise PolicyError(f"latency window {window_s} s must be a finite number of seconds > 0")
        if max_observations < 1 or min_observations < 1:
            raise PolicyError("latency window size and minimum observations must be >= 1")
        if (refresh_s is not None and not refresh_s > 0) or not idle_s > 0:
            raise PolicyError("latency refresh and idle intervals must be > 0 seconds (refresh may be None)")
        self.profile_ms = None if profile_ms is None else tuple(float(v) for v in profile_ms)
        self.quantile = quantile
        self.window_s = float(window_s)
        self.min_observations = min_observations
        self.refresh_s = refresh_s
        self.idle_s = idle_s
        self.names = tuple(names) if names is not None else tuple(f"member_{k + 1}" for k in range(num_members))
        self._clock = clock
        # (time_s, ms) per single-sample run of each member, and per answer's finish; appended by the runtime.
        self.observed: tuple[TimeWindow, ...] = tuple(TimeWindow(max_observations) for _ in range(num_members))
        self.finish = TimeWindow(max_observations)
        self._baseline = [math.inf] * (num_members + 1)  # lowest windowed quantile per member, then finish
        self._last_call = 0.0
        self._refreshed_at = clock()
        self._finish_ms = 0.0
        self._retrying = (False,) * num_members  # no run in the window at the last refresh
        self._thread = BackgroundThread("edge_runtime-latency", self._refresh_loop)
        self._cached = self.refresh()

    # ------------------------------------------------------------------ hot path
    def estimates(self) -> tuple[float, ...]:
        """Predicted ms from the start of member k to the answer, for every k (cached; see the module)."""
        self._last_call = monotonic()  # before the check below, so a stopping refresher is seen as stopped
        if self.refresh_s is not None and not self._thread.running:
            self._thread.start()
        return self._cached

    def raise_to(self, k: int, ms: float) -> None:
        """A run of member k took ``ms``, far more than predicted. If k was being re-tried (no run of it in
        the window at the last refresh), predict at least that from now on, until the next refresh: a
        member that is still slow is skipped again from the very next request, not after up to
        ``refresh_s`` of slow runs. A member that runs all the time ignores it: one scheduler hiccup among
        its many runs must not move its prediction (the refresh's quantile decides)."""
        if not self._retrying[k]:
            return
        runs = self.observed[k]
        if len(runs) < 2 or runs[-1][0] - runs[-2][0] > self.window_s:
            return  # the re-try's first run is cold (caches, ORT after idle): the second one decides
        cached = self._cached
        value = ms + self._finish_ms
        if value > cached[k]:
            self._cached = (*cached[:k], value, *cached[k + 1 :])

    # ------------------------------------------------------------------ reading
    def refresh(self) -> tuple[float, ...]:
        """Recompute now (after warm-up, or in tests) and return the estimates."""
        state = self._state()
        self._finish_ms = state["finish_ms"]
        self._retrying = tuple(row["samples"] == 0 for row in state["members"])
        self._cached = tuple(row["estimate_ms"] for row in state["members"])
        self._refreshed_at = state["now"]
        return self._cached

    def observations(self) -> list[np.ndarray]:
        """The observed single-sample latencies (ms) per member that count now (inside the window), oldest first."""
        since = self._clock() - self.window_s
        return [d.values(since, self.window_s) for d in self.observed]

    def source(self) -> str:
        """Where predictions come from: ``"profile"``, ``"observed"`` or ``"profile+observed"``."""
        if self.profile_ms is None:
            return "observed"
        return "profile+observed" if any(self._warm_now(k) for k in range(len(self.observed))) else "profile"

    def describe(self) -> dict[str, Any]:
        """The estimator's state, for metrics and reports (computed now; the cached estimates stay).

        Returns:
            ``{"quantile", "window_s", "load" (member 1's slowdown applied to re-tries, 1 when quiet),
            "finish_ms", "refreshed_age_s" (age of the cached estimates the
            policy reads), "now" (the clock, s), "members": [...]}``, with per member
            ``member``, ``estimate_ms`` (what the policy uses: member plus finish), ``member_ms``,
            ``source`` (``"observed"``, ``"profile"``, ``"baseline"`` or ``"none"``), ``profile_ms``,
            ``observed_ms`` (quantile over the window, None if no run counts), ``baseline_ms``,
            ``samples`` (runs in the window) and ``age_s`` (since its last run; None if never run).
        """
        return self._state()

    def close(self) -> None:
        """Stop and join the background thread (it also stops at interpreter exit); idempotent."""
        self._thread.close()

    # ------------------------------------------------------------------ internals
    def _refresh_loop(self, stop: threading.Event) -> None:
        assert self.refresh_s is not None  # the thread only starts when it is set
        while not stop.wait(self.refresh_s):
            self.refresh()
            if monotonic() - self._last_call > self.idle_s:
                return

    def _warm_now(self, k: int) -> bool:
        # Nothing is removed from a deque (old runs are filtered by time when read), so its length only grows
        # until it is full: this is "observed min_observations times since load".
        return len(self.observed[k]) >= self.min_observations

    def _stats(self, window: TimeWindow, since: float, slot: int, counts: bool) -> tuple[float | None, int]:
        """(quantile of the runs since ``since`` or None, how many); lowers the slot's baseline. A first run
        after a gap longer than the window is left out: a re-tried member's first run is cold (caches, ONNX
        Runtime after idle) and would hold it out for another window."""
        values = window.values(since, gap_s=self.window_s)
        if not len(values) or not counts:
            return None, len(values)
        q = linear_quantile(values, self.quantile)
        if len(values) >= _BASELINE_SAMPLES and q < self._baseline[slot]:
            self._baseline[slot] = q
        return q, len(values)

    @staticmethod
    def _load(observed: float | None, profile: float | None, baseline: float) -> float:
        """How much slower than its reference (profile, else baseline) member 1 runs in the window, when that
        is at least ``_LOADED`` times; 1 otherwise (a quantile of the window against a p99 or a minimum reads
        a little above 1 on a quiet device)."""
        reference = profile if profile is not None else baseline
        if observed is None or not 0 < reference < math.inf:
            return 1.0
        ratio = observed / reference
        return ratio if ratio >= _LOADED else 1.0

    def _state(self) -> dict[str, Any]:
        now = self._clock()
        since = now - self.window_s
        k_all = len(self.observed)
        finish, _ = self._stats(self.finish, since, k_all, True)
        if finish is None:
            finish = 0.0 if math.isinf(self._baseline[k_all]) else self._baseline[k_all]
        rows = []
        load = 1.0
        for k, window in enumerate(self.observed):
            profile = None if self.profile_ms is None else self.profile_ms[k]
            counts = profile is None or self._warm_now(k)
            observed, samples = self._stats(window, since, k, counts)
            baseline = self._baseline[k]
            last = window[-1][0] if window else None
            if observed is not None and (profile is None or observed >= profile):
                member_ms, source = observed, "observed"
            elif profile is not None:
                member_ms, source = profile, "profile"
            elif not math.isinf(baseline):
                stale_windows = 0.0 if last is None else max(0.0, now - last - self.window_s) / self.window_s
                member_ms, source = baseline * 0.5 ** (stale_windows / _BASELINE_HALVING), "baseline"
            else:
                member_ms, source = 0.0, "none"  # never measured: nothing to predict with, so it runs
            if k == 0:
                load = self._load(observed, profile, baseline)
            elif samples == 0 and source in ("profile", "baseline"):
                member_ms *= load  # a re-try under load is predicted as slow as member 1 shows the device is
            rows.append(
                {
                    "member": self.names[k],
                    "estimate_ms": member_ms + finish,
                    "member_ms": member_ms,
                    "source": source,
                    "profile_ms": profile,
                    "observed_ms": observed,
                    "baseline_ms": None if math.isinf(baseline) else baseline,
                    "samples": samples,
                    "age_s": None if last is None else now - last,
                }
            )
        return {
            "quantile": self.quantile,
            "window_s": self.window_s,
            "load": load,
            "finish_ms": finish,
            "refreshed_age_s": now - self._refreshed_at,
            "now": now,
            "members": rows,
        }
