"""The bounded inference pool: worker threads, a bounded earliest-deadline-first queue, shedding.

Why not just a ThreadPoolExecutor: its queue is unbounded, first-come-first-served and blind to
deadlines, so under overload every request waits behind every other and all of them miss their budgets.

Here a request waits for one of ``workers`` slots in a queue of at most ``max_queue`` (a fuller queue is
refused at once with 503). The queue is served earliest deadline first: a request with a budget is due at
arrival + budget; one without is treated as due ``no_budget_due_ms`` after arrival, so it yields to budgeted
requests due sooner but cannot be starved.

A request with a budget that has to wait leaves the queue (503) the moment what is left of its budget
could no longer pay for the first member, instead of being answered late. A request that finds a worker
free is not shed: a budget too small for the first member even on an idle server is not overload, and
the runtime answers it with the first member. The runtime gets what is left of the budget when the worker
starts, minus what the answer still needs (a fixed reserve for encoding and sending, plus the measured
time for a result to get back to the event loop), so queueing and a busy machine cost members, not
deadlines: the anytime answer under load.

A batch is queued as separate chunks (``chunk_rows`` each, see the app): one client's large batch then
holds a worker for one chunk at a time, and a request due sooner runs in between. Only the first chunk
can be shed; the later ones (``shed=False``) wait their turn past the queue bound and run with what is
left of the budget, so work already done is never thrown away.

The queue is shared by the event loop (which adds jobs and refuses) and the workers (which take the most
urgent job the moment they finish one), under one lock held for microseconds.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Generic, List, Sequence, Tuple, TypeVar

from edge_runtime._window import TimeWindow
from edge_runtime.server._errors import OverloadedError

__all__ = ["LatencyTracker", "Scheduled", "Scheduler", "most_members"]

T = TypeVar("T")

_WINDOW = 128  # most recent requests an estimate looks at
_HORIZON_S = 5.0  # ... and none older than this, so an estimate from a busy spell cannot outlive it
_MIN_SAMPLES = 5  # fewer single-member samples than this and the estimate uses the time per member
_REFRESH_S = 0.25  # recompute the quantiles at most this often (a percentile per request costs the loop)
_MIN_BUDGET_MS = 0.01  # what a request with its budget spent is handed: enough for the first member only
_FRESH_SHARE = 0.1  # a held request that waited under this share of its budget still counts as not having waited


class LatencyTracker:
    """What the scheduler knows about this server's latencies right now, from its own recent requests.

    * the first member: p90 time of recent calls that one member answered (the runtime's per-request
      work included; it grows when the machine is busy), or else the p90 time per member of recent calls;
    * return: p90 of recent times from a call's end on its worker to the event loop taking the result
      back (a thread wake-up: microseconds on an idle machine, milliseconds on a busy one). It is kept
      back from every budget, like the fixed reserve, so the answer leaves in time.

    Only samples from the last few seconds count, and with none the estimate is 0: a request is never
    shed for want of an estimate. That matters: shedding everything would stop new samples, and an
    estimate left over from a busy spell would then shed every request for good. (The runtime's own
    latency predictions have that problem when nothing runs, so they are not used here.)
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._first = TimeWindow(_WINDOW)
        self._per_member = TimeWindow(_WINDOW)
        self._return = TimeWindow(_WINDOW)
        self._computed_at = -math.inf
        self._first_ms = 0.0
        self._return_ms = 0.0

    def record_return(self, ms: float) -> None:
        """Note how long a finished call took to get back to the event loop (a thread wake-up)."""
        self._return.append((self._clock(), ms))

    def record(self, service_ms: float, members_used: int) -> None:
        """Note one request's wall time in ``predict`` and the most members any of its samples used."""
        if members_used <= 0:
            return
        now = self._clock()
        if members_used == 1:
            self._first.append((now, service_ms))
        self._per_member.append((now, service_ms / members_used))

    def _refresh(self) -> None:
        now = self._clock()
        if now - self._computed_at < _REFRESH_S:
            return
        self._computed_at = now
        since = now - _HORIZON_S
        first = self._first.quantile(0.9, since, _MIN_SAMPLES)
        if first is None:
            first = self._per_member.quantile(0.9, since)
        self._first_ms = first or 0.0
        self._return_ms = self._return.quantile(0.9, since) or 0.0

    def first_member_ms(self) -> float:
        """Estimate (ms) of one evaluation of the first member here and now; 0 while nothing is known."""
        self._refresh()
        return self._first_ms

    def return_ms(self) -> float:
        """p90 of recent worker-to-event-loop return times (ms); 0 while nothing is known."""
        self._refresh()
        return self._return_ms


@dataclass(frozen=True)
class Scheduled(Generic[T]):
    """What a call returned, and where its time went."""

    result: T
    queue_ms: float  # waiting for a worker
    service_ms: float  # the call itself, on the worker
    budget_ms: float | None  # the budget handed to the call (what was left of the request's), or None


class _Job:
    """One call waiting for, or running on, a worker."""

    __slots__ = ("call", "deadline", "reserve_ms", "first_ms", "shed", "waited", "future", "loop", "state", "enqueued")

    def __init__(
        self,
        call: Callable[[float | None], Any],
        deadline: float | None,
        future: "asyncio.Future[Any]",
        loop: asyncio.AbstractEventLoop,
        shed: bool,
    ) -> None:
        self.call = call
        self.deadline = deadline
        self.future = future
        self.loop = loop
        self.shed = shed
        self.reserve_ms = 0.0
        self.first_ms = 0.0
        self.waited = False  # queued behind busy workers (only such a job can be shed when it starts)
        self.state = _QUEUED
        self.enqueued = time.perf_counter()


_QUEUED, _TAKEN, _GONE = 0, 1, 2  # a job's state: waiting, taken by a worker, expired or cancelled


class Scheduler:
    """Runs blocking calls on ``workers`` threads with a bounded earliest-deadline-first queue.

    The workers take their next job from the queue themselves, the moment they finish one: a worker
    does not wait for the event loop (which, under a retry storm, may be milliseconds behind) to hand it
    work, and a slot is visibly free as soon as its call returns. The event loop only enqueues jobs,
    refuses, and takes results back.

    Args:
        workers: worker threads; at most this many calls run at once.
        max_queue: calls allowed to wait for a worker; one more is refused with :class:`OverloadedError`.
        reserve_ms: taken off every budget for what happens after the call (encoding, sending).
        tracker: the latency estimates used to shed hopeless queued requests and to size the reserve.
        no_budget_due_ms: where a request without a budget sits in the queue: due this long after arrival.
    """

    def __init__(
        self,
        workers: int,
        max_queue: int,
        reserve_ms: float,
        tracker: LatencyTracker | None = None,
        no_budget_due_ms: float = 1000.0,
    ) -> None:
        self.workers = workers
        self.max_queue = max_queue
        self.reserve_ms = reserve_ms
        self.no_budget_due_s = no_budget_due_ms / 1e3
        self.tracker = tracker or LatencyTracker()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        # (due time, arrival order, job): a heap, earliest due first. Jobs expired or cancelled while
        # waiting stay until popped (state _GONE); ``_queued`` counts the live ones.
        self._heap: List[Tuple[float, int, _Job]] = []
        self._order = itertools.count()
        self._queued = 0
        self._free = workers  # workers not running a call (read without the lock: a hint)
        self._closing = False
        self.shed = 0  # requests refused so far (queue full or budget spent waiting)
        self.completed = 0  # calls that returned on a worker
        self._threads: list[threading.Thread] = []  # started with the first call (none for an app never used)
        # Called on the event loop whenever a worker or a queue slot has come free (the connection layer's
        # read gate resumes a paused connection then); None = nobody listens.
        self.on_free: Callable[[], None] | None = None
        self.on_queued: Callable[[], None] | None = None  # called on the event loop after a job is queued

    @property
    def queued(self) -> int:
        """Requests waiting for a worker now."""
        return self._queued

    @property
    def running(self) -> int:
        """Calls on a worker now."""
        return self.workers - self._free

    async def run(
        self,
        call: Callable[[float | None], T],
        arrival: float,
        budget_ms: float | None,
        members_used: Callable[[T], int],
        shed: bool = True,
        record: bool = True,
    ) -> Scheduled[T]:
        """Queue ``call`` for a worker and run it with what is left of the budget.

        Args:
            call: the blocking work; it receives the budget left in milliseconds (None = no budget).
            arrival: ``time.perf_counter()`` when the request arrived; the budget counts from it.
            budget_ms: the request's budget, or None.
            members_used: reads the most members used from the result, for the latency estimate.
            shed: False for the later chunks of a request already started: they wait their turn (never
                refused, past the queue bound) and run with what is left of the budget, so work done is
                not thrown away.
            record: whether the call's time feeds the first-member estimate (False for large batches,
                whose time says nothing about a single request's).

        Raises:
            OverloadedError: the queue is full, or the budget ran out while waiting (only with ``shed``).
        """
        deadline = None if budget_ms is None else arrival + budget_ms / 1e3
        loop = asyncio.get_running_loop()
        job = _Job(call, deadline, loop.create_future(), loop, shed)
        job.reserve_ms = self.reserve_ms + self.tracker.return_ms()
        job.first_ms = self.tracker.first_member_ms()
        give_up = None
        with self._lock:
            if not self._threads:
                self._start_workers()
            job.waited = self._queued >= self._free
            if job.waited and shed:
                if self._queued >= self.max_queue:
                    self.shed += 1
                    raise self._full()
                if deadline is not None:
                    # Leave the queue the moment the budget left could no longer pay for the first member.
                    give_up = deadline - (job.reserve_ms + job.first_ms) / 1e3
                    if give_up <= time.perf_counter():  # it never could: refuse now, no timer
                        self.shed += 1
                        raise OverloadedError(
                            "overloaded: every worker is busy and the latency budget is too short to wait; "
                            "retry, or raise anytime_budget_ms",
                            reason="deadline",
                        )
            due = deadline if deadline is not None else job.enqueued + self.no_budget_due_s
            heapq.heappush(self._heap, (due, next(self._order), job))
            self._queued += 1
            self._wake.notify()
        if self.on_queued is not None:
            self.on_queued()
        timer = None if give_up is None else loop.call_later(give_up - time.perf_counter(), self._expire, job)
        try:
            result, left_ms, started, call_start, call_end = await job.future
        except OverloadedError:
            if job.state == _TAKEN:  # refused by the worker that took it (counted here, on the event loop)
                self.shed += 1
            raise
        except asyncio.CancelledError:
            with self._lock:  # left by cancellation (client gone, forced shutdown); a running call just finishes
                if job.state == _QUEUED:
                    job.state = _GONE
                    self._queued -= 1
            raise
        finally:
            if timer is not None:
                timer.cancel()
        resumed = time.perf_counter()
        self.completed += 1
        service_ms = (call_end - call_start) * 1e3
        if record:
            self.tracker.record(service_ms, members_used(result))
        self.tracker.record_return((resumed - call_end) * 1e3)
        return Scheduled(result, (started - job.enqueued) * 1e3, service_ms, left_ms)

    def _full(self) -> OverloadedError:
        return OverloadedError(f"overloaded: {self._queued} requests already wait for {self.workers} worker(s); retry later")

    def check_capacity(self) -> None:
        """Refuse now if a new request could neither run nor queue (callers check before costly decoding).

        Raises:
            OverloadedError: every worker is busy and the queue is full.
        """
        if self._free == 0 and self._queued >= self.max_queue:
            self.shed += 1
            raise self._full()

    def check_deadline(self, arrival: float, budget_ms: float | None, waited: bool = False) -> None:
        """Refuse now a request that would have to queue and could not start in time (costs microseconds).

        What the queue shows: every worker is busy, and the requests already waiting with earlier
        deadlines need at least one first member each (spread over the workers) before this one could
        start; if what would then be left of its budget cannot pay for its own first member plus the
        reserve, it is refused before its body is decoded, never queued. A request that finds a worker
        free is not refused here, unless it ``waited`` already (held by the connection layer under
        overload) and the wait is what spent its budget: then the same test applies with nothing ahead of it.

        Raises:
            OverloadedError: as above, or every worker is busy and the queue is full.
        """
        self.check_capacity()
        ahead = self._late_behind(arrival, budget_ms, waited)
        if ahead is not None:
            self.shed += 1
            raise OverloadedError(
                f"overloaded: {self.running} request(s) running and {ahead} due sooner waiting; the {budget_ms:g} ms "
                "budget cannot be met: retry, or raise anytime_budget_ms",
                reason="deadline",
            )

    def in_time(self, arrival: float, budget_ms: float | None, waited: bool = True) -> bool:
        """Whether a request could still start in time, by :meth:`check_deadline`'s test (counts nothing)."""
        return self._late_behind(arrival, budget_ms, waited) is None

    def _late_behind(self, arrival: float, budget_ms: float | None, waited: bool) -> int | None:
        """None if the request can start in time, else how many queued requests are due before it."""
        free = self._free > self._queued
        if budget_ms is None or (free and not waited):
            return None
        deadline = arrival + budget_ms / 1e3
        first_ms = self.tracker.first_member_ms()
        with self._lock:
            ahead = sum(1 for due, _, job in self._heap if due <= deadline and job.state == _QUEUED)
        need_ms = self.reserve_ms + self.tracker.return_ms() + first_ms * (1 + ahead / self.workers)
        waited_ms = (time.perf_counter() - arrival) * 1e3
        if free and budget_ms < need_ms and waited_ms < _FRESH_SHARE * budget_ms:
            # Too short by the estimates even unwaited, and it has hardly waited: the first member answers it now, as on
            # an idle server. (Under load the estimates exceed a short budget; one that waited longer is refused.)
            return None
        return ahead if (deadline - time.perf_counter()) * 1e3 < need_ms else None

    def _expire(self, job: _Job) -> None:
        """On the event loop: the job's budget can no longer pay for the first member; refuse it if still waiting."""
        with self._lock:
            if job.state != _QUEUED:
                return
            job.state = _GONE
            self._queued -= 1
            self.shed += 1
        if self.on_free is not None:
            self.on_free()
        if not job.future.done():
            job.future.set_exception(
                OverloadedError(
                    "overloaded: the latency budget ran out while waiting for a worker; retry, or raise anytime_budget_ms",
                    reason="expired",
                )
            )

    # -- the worker threads ------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._lock:
                job = self._next()
                while job is None:
                    if self._closing:
                        return
                    self._wake.wait()
                    job = self._next()
                self._free -= 1
            try:
                outcome: Any = self._execute(job)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting request, which answers it
                outcome = exc
            finally:
                with self._lock:
                    self._free += 1  # free now, not when the event loop gets round to the result
            job.loop.call_soon_threadsafe(self._finished, job.future, outcome)

    def _finished(self, future: "asyncio.Future[Any]", outcome: Any) -> None:
        """On the event loop: hand a call's outcome to its request, then say a worker is free."""
        _resolve(future, outcome)
        if self.on_free is not None:
            self.on_free()

    def _start_workers(self) -> None:
        if self._closing:
            raise OverloadedError("the server is shutting down; retry on another instance", reason="shutdown")
        self._threads = [threading.Thread(target=self._work, name=f"anytime-infer-{k}", daemon=True) for k in range(self.workers)]
        for thread in self._threads:
            thread.start()

    def _next(self) -> _Job | None:
        """Pop the most urgent live job (the lock is held)."""
        while self._heap:
            _, _, job = heapq.heappop(self._heap)
            if job.state == _QUEUED:
                job.state = _TAKEN
                self._queued -= 1
                return job
        return None

    def _execute(self, job: _Job) -> Any:
        """Run a job on this worker with the budget left *now*: the hand-off to this thread costs time too."""
        started = time.perf_counter()
        left_ms = None
        if job.deadline is not None:
            left_ms = (job.deadline - started) * 1e3 - job.reserve_ms
            # Overload: it had to wait for a worker, and what is left cannot pay for the first member;
            # answering would be late. A request that found a worker free runs whatever is left (the
            # runtime always runs the first member, so a too-small budget gets that answer, "budget").
            if job.shed and job.waited and left_ms < job.first_ms:
                return OverloadedError(
                    f"overloaded: waited {(started - job.enqueued) * 1e3:.1f} ms for a worker; too little of the "
                    "budget is left for one member: retry, or raise anytime_budget_ms",
                    reason="expired",
                )
            left_ms = max(left_ms, _MIN_BUDGET_MS)  # the runtime wants a positive budget: first member only
        result = job.call(left_ms)
        return result, left_ms, started, started, time.perf_counter()

    def close(self) -> None:
        """Let running calls finish, then stop and join the worker threads (queued requests are dropped)."""
        with self._lock:
            self._closing = True
            for _, _, job in self._heap:
                job.state = _GONE
            self._heap.clear()
            self._queued = 0
            self._wake.notify_all()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join()


def _resolve(future: "asyncio.Future[Any]", outcome: Any) -> None:
    if future.done():  # expired or cancelled meanwhile
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def most_members(predictions: Sequence[object]) -> int:
    """The largest ``members_used`` among a request's predictions (0 for none)."""
    return max((int(getattr(p, "members_used", 0)) for p in predictions), default=0)
