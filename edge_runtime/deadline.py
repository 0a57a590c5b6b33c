"""Deadlines: how latency estimates age, and stopping a member in flight when its request's budget runs out.

The budget is checked between members (:mod:`edge_runtime.policies`); a member that runs long anyway (a
busy core, a cold cache, ONNX Runtime after an idle gap) would overrun by its whole duration. ONNX Runtime
stops a run between operators once ``RunOptions.terminate`` is set from another thread; the run then
raises and its outputs are discarded, which costs nothing here since the best answer so far is held.

:class:`Watchdog` is one thread per runtime (started on the first guarded run, stopped and joined by
``AnytimeRuntime.close`` and at interpreter exit) that sets ``terminate`` on the running member's
``RunOptions`` when its request's deadline, less ``stop_lead_ms``, passes. No thread or timer per request:
a guarded run costs a ``RunOptions`` and two lock round-trips (a few microseconds), so only members whose
predicted latency is at least ``stop_min_ms`` are guarded, where the stop can save more than it costs.

Member 1 is never stopped: without it there is no answer at all, so a first member slower than the budget
returns late (``Prediction.late``) rather than not at all. A stopped member k answers with members
1..k-1, exit reason ``"budget"`` and ``stopped_in_flight=True``.

Defaults, measured with ``python benchmarks/deadline.py --phases stop_latency`` (an 808-node graph, the
flag set at a random point of a ~1.6-3.3 ms run; 3 runs) on the project's 2-core development machine while
shared (load average ~5), ORT 1.32: flag -> stop p50 0.08-0.22 ms, watchdog wake-up lateness p50
0.08-0.11 ms (p99s of 4-10 ms on that loaded box), guarding a run 1.2-1.3 µs; issue 14 measured flag ->
stop median 0.26 ms, max 2.2 ms on a quiet machine. ``stop_min_ms`` = 0.3 ms: guarding costs well under 1%
of such a member, and a member predicted just under 1 ms (the earlier default) could run unguarded past the
deadline when its estimate was low (an estimate decayed toward its baseline after the member was skipped):
that was most of the late answers left with the stop on (``late_member``: 0.30-0.35% -> see README). Below
~0.3 ms a stop could not end the run much before it ends anyway. ``stop_lead_ms`` = 0.5 ms covers wake-up,
stop and the answer's own finish at their medians with margin; the tails depend on the machine and on the
member's longest operator, since ORT only checks the flag between operators.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass
from time import perf_counter
from typing import Any, Callable, Sequence

import numpy as np

from edge_runtime._threads import BackgroundThread
from edge_runtime.errors import PolicyError
from edge_runtime.session import new_run_options

__all__ = ["DeadlineConfig", "StoppedInFlight", "Watchdog"]


@dataclass(frozen=True)
class DeadlineConfig:
    """How the runtime keeps its budgets: latency-estimate ageing and the in-flight stop."""

    latency_window_s: float = 1.0  # observed latencies count this long; a skipped member is re-tried after it
    latency_refresh_s: float | None = 0.1  # background refresh of the estimates; None: only refresh() (tests)
    in_flight_stop: bool = True  # stop a member that is still running at its request's deadline
    stop_min_ms: float = 0.3  # guard only members predicted to take at least this long (stop cost ~0.1-0.3 ms)
    stop_lead_ms: float = 0.5  # set terminate this long before the deadline: waking and stopping take time

    def __post_init__(self) -> None:
        if not (self.latency_window_s > 0 and math.isfinite(self.latency_window_s)):
            raise PolicyError(f"latency_window_s must be a finite number of seconds > 0, not {self.latency_window_s}")
        if self.latency_refresh_s is not None and not (0 < self.latency_refresh_s < math.inf):
            raise PolicyError(f"latency_refresh_s must be seconds > 0 or None, not {self.latency_refresh_s}")
        if not (0 <= self.stop_min_ms < math.inf) or not (0 <= self.stop_lead_ms < math.inf):
            raise PolicyError("stop_min_ms and stop_lead_ms must be finite numbers of milliseconds >= 0")


class StoppedInFlight(Exception):
    """The watchdog stopped a guarded run at its deadline (internal: the runtime answers best-so-far)."""


class _Guard:
    __slots__ = ("options", "fire_at", "fired_at")

    def __init__(self, options: Any, fire_at: float) -> None:
        self.options = options
        self.fire_at = fire_at  # clock seconds
        self.fired_at: float | None = None


class Watchdog:
    """Stops guarded member runs at their deadlines; one thread, see the module docstring.

    Args:
        stop_lead_ms: how long before a deadline ``terminate`` is set.
        clock: seconds (``time.perf_counter``; the runtime's clock, so deadlines compare).
    """

    def __init__(self, stop_lead_ms: float = 0.5, clock: Callable[[], float] = perf_counter) -> None:
        self._lead_s = stop_lead_ms / 1e3
        self._clock = clock
        self._cond = threading.Condition(threading.Lock())
        self._armed: dict[int, _Guard] = {}
        self._next = math.inf  # the fire time the thread sleeps towards
        self._thread = BackgroundThread("edge_runtime-watchdog", self._loop, wake=self._wake)
        self.guarded_runs = 0
        self.fired = 0  # terminate set (a run may still finish before ORT looks at the flag)
        self.stopped = 0  # runs that the flag stopped
        self._stop_ms: deque[float] = deque(maxlen=1024)  # terminate set -> run raised
        self._wake_ms: deque[float] = deque(maxlen=1024)  # fire time -> terminate set (the thread's lateness)

    def run(self, run: Callable[..., Any], names: Sequence[str], feed: dict[str, Any], deadline: float) -> Any:
        """``run(names, feed, run_options)`` with ``terminate`` set at ``deadline`` (clock seconds) less the lead.

        Raises:
            StoppedInFlight: the watchdog stopped the run (its outputs are lost).
            Exception: whatever the run raised for another reason.
        """
        guard = _Guard(new_run_options(), deadline - self._lead_s)
        if not self._thread.running:
            self._thread.start()
        key = id(guard)
        with self._cond:
            self._armed[key] = guard
            self.guarded_runs += 1
            if guard.fire_at < self._next:
                self._cond.notify()
        try:
            return run(names, feed, guard.options)
        except Exception as exc:  # ORT has no error type for a stop; the guard decides
            with self._cond:
                self._armed.pop(key, None)
                fired_at = guard.fired_at  # set under this lock, so final once disarmed
                if fired_at is not None:
                    self.stopped += 1
            if fired_at is not None:
                self._stop_ms.append((self._clock() - fired_at) * 1e3)
                raise StoppedInFlight(f"stopped at the deadline ({type(exc).__name__})") from exc
            raise
        finally:
            with self._cond:
                self._armed.pop(key, None)

    def check(self) -> int:
        """Set ``terminate`` on every guarded run whose fire time has passed; how many (the thread's step).

        Tests with a fake clock call it from inside a fake member run to play "the deadline passes now".
        """
        with self._cond:
            return self._fire_due(self._clock())

    def describe(self) -> dict[str, Any]:
        """Counts and latencies of the last 1024 stops, for metrics and benchmarks.

        Returns:
            ``guarded_runs``, ``fired`` (terminate set), ``stopped`` (runs that raised for it), ``stop_lead_ms``,
            ``stop_latency_ms`` (terminate set -> run raised) and ``wake_late_ms`` (fire time -> terminate set),
            each ``{"p50", "p99", "max"}`` or None before the first stop, and ``running`` (the thread).
        """
        return {
            "guarded_runs": self.guarded_runs,
            "fired": self.fired,
            "stopped": self.stopped,
            "stop_lead_ms": self._lead_s * 1e3,
            "stop_latency_ms": _summary(self._stop_ms),
            "wake_late_ms": _summary(self._wake_ms),
            "running": self._thread.running,
        }

    def close(self) -> None:
        """Stop and join the thread; guarded runs after this are not stopped. Idempotent."""
        self._thread.close()

    def _fire_due(self, now: float) -> int:
        fired = [key for key, g in self._armed.items() if g.fire_at <= now]
        for key in fired:
            guard = self._armed.pop(key)
            guard.options.terminate = True
            guard.fired_at = self._clock()
            self.fired += 1
            self._wake_ms.append((guard.fired_at - guard.fire_at) * 1e3)
        return len(fired)

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify()

    def _loop(self, stop: threading.Event) -> None:
        with self._cond:
            while not stop.is_set():
                now = self._clock()
                self._fire_due(now)
                self._next = min((g.fire_at for g in self._armed.values()), default=math.inf)
                # Sleep to the next fire time; an earlier one, or close, notifies. An idle watchdog wakes
                # once a second only to notice a stop that raced the notify.
                self._cond.wait(min(max(self._next - now, 0.0), 1.0))
            self._next = math.inf


def _summary(values: deque[float]) -> dict[str, float] | None:
    v = list(values)
    return None if not v else {"p50": float(np.median(v)), "p99": float(np.quantile(v, 0.99)), "max": float(max(v))}
