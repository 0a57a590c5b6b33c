"""Load shedding and the bounded worker pool: 503 instead of answers past the budget, queue bounds.

Concurrent requests go through httpx's ASGI transport on one event loop, against the fake runtime of
test_server.py made slow. Assertions are about outcomes (who ran, who was shed, what budget reached the
runtime), never about how long anything took.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import httpx
import pytest

from edge_runtime.server import ServerConfig, create_app
from edge_runtime.server._scheduler import LatencyTracker, Scheduler
from test_server import INFER, FakeRuntime, infer_body


class UnstoppableRuntime(FakeRuntime):
    """A fake whose first member takes ``seconds`` whatever the budget (it cannot be cut short)."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def predict(self, x: Any, budget_ms: Any = None, entropy_threshold: Any = None) -> Any:
        time.sleep(self.seconds)
        return super().predict(x, budget_ms, entropy_threshold)


def body(budget_ms: float | None = None) -> dict[str, Any]:
    return infer_body(parameters={} if budget_ms is None else {"anytime_budget_ms": budget_ms})


async def _send(client: httpx.AsyncClient, payload: dict[str, Any], after_s: float = 0.0) -> httpx.Response:
    await asyncio.sleep(after_s)  # order the arrivals
    return await client.post(INFER, json=payload)


def run_concurrently(app: Any, payloads: list[tuple[dict[str, Any], float]]) -> list[httpx.Response]:
    async def main() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            return list(await asyncio.gather(*(_send(client, p, after) for p, after in payloads)))

    return asyncio.run(main())


def test_full_queue_is_shed_with_503_and_retry_after() -> None:
    fake = FakeRuntime(delay_s=0.3)
    app = create_app(fake, ServerConfig(workers=1, max_queue=1))
    first, second, third = run_concurrently(app, [(body(), 0.0), (body(), 0.05), (body(), 0.1)])
    assert first.status_code == 200 and second.status_code == 200
    assert third.status_code == 503
    assert "wait for 1 worker" in third.json()["error"]
    assert int(third.headers["retry-after"]) >= 1
    assert len(fake.calls) == 2  # the shed request never reached the runtime


def test_zero_queue_sheds_whatever_finds_every_worker_busy() -> None:
    fake = FakeRuntime(delay_s=0.2)
    app = create_app(fake, ServerConfig(workers=2, max_queue=0))
    statuses = sorted(r.status_code for r in run_concurrently(app, [(body(), 0.0), (body(), 0.0), (body(), 0.05)]))
    assert statuses == [200, 200, 503]


def test_queued_request_is_shed_when_its_budget_runs_out_instead_of_answered_late() -> None:
    fake = UnstoppableRuntime(0.4)
    app = create_app(fake, ServerConfig(workers=1, max_queue=8))
    running, late = run_concurrently(app, [(body(), 0.0), (body(budget_ms=100), 0.05)])
    assert running.status_code == 200
    assert late.status_code == 503
    assert "budget ran out" in late.json()["error"]
    assert len(fake.calls) == 1  # shed while waiting: it never ran


def test_queued_request_leaves_when_the_first_member_no_longer_fits() -> None:
    # Member 1 has recently taken 80 ms here, so a 100 ms budget stops being worth a worker 80 ms early;
    # the queued request is shed at ~20 ms, long before the running one ends.
    fake = UnstoppableRuntime(0.3)
    app = create_app(fake, ServerConfig(workers=1, max_queue=8))
    for _ in range(5):
        app.state.server.scheduler.tracker.record(80.0, members_used=1)
    running, late = run_concurrently(app, [(body(), 0.0), (body(budget_ms=100), 0.05)])
    assert (running.status_code, late.status_code) == (200, 503)
    assert len(fake.calls) == 1


def test_waiting_is_paid_from_the_budget() -> None:
    fake = UnstoppableRuntime(0.1)
    app = create_app(fake, ServerConfig(workers=1, max_queue=8, reserve_ms=0.5))
    first, second = run_concurrently(app, [(body(), 0.0), (body(budget_ms=2000), 0.05)])
    assert first.status_code == 200 and second.status_code == 200
    # the second waited for the first's 100 ms sleep (the part after its arrival at 50 ms)
    assert fake.calls[1]["budget_ms"] < 2000 - 40
    assert second.json()["parameters"]["anytime_queue_ms"] > 0


def test_requests_without_budget_wait_their_turn() -> None:
    fake = FakeRuntime(delay_s=0.05)
    app = create_app(fake, ServerConfig(workers=1, max_queue=8))
    responses = run_concurrently(app, [(body(), 0.0)] * 5)
    assert [r.status_code for r in responses] == [200] * 5
    assert app.state.server.scheduler.shed == 0


def test_server_keeps_serving_after_shedding() -> None:
    fake = FakeRuntime(delay_s=0.1)
    app = create_app(fake, ServerConfig(workers=1, max_queue=0))
    burst = run_concurrently(app, [(body(), 0.0)] * 4)
    assert sorted(r.status_code for r in burst) == [200, 503, 503, 503]
    fake.delay_s = 0.0
    again = run_concurrently(app, [(body(), 0.0)])
    assert again[0].status_code == 200
    assert app.state.server.scheduler.running == 0 and app.state.server.scheduler.queued == 0


def test_at_most_workers_calls_run_at_once() -> None:
    active, peak, lock = [0], [0], threading.Lock()

    class Counting(FakeRuntime):
        def predict(self, x: Any, budget_ms: Any = None, entropy_threshold: Any = None) -> Any:
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            try:
                return super().predict(x, budget_ms, entropy_threshold)
            finally:
                with lock:
                    active[0] -= 1

    app = create_app(Counting(delay_s=0.03), ServerConfig(workers=2, max_queue=16))
    responses = run_concurrently(app, [(body(), 0.0)] * 8)
    assert all(r.status_code == 200 for r in responses)
    assert peak[0] == 2


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    "records, expected",
    [
        ([], 0.0),  # nothing known: nobody is shed for want of an estimate
        ([(10.0, 2), (12.0, 3)], pytest.approx(4.9)),  # p90 of the time per member (5, 4)
        ([(3.0, 1)] * 5, 3.0),  # enough single-member samples: the first member directly
        ([(3.0, 1)] * 4 + [(40.0, 4)], pytest.approx(7.2)),  # too few: time per member (3, 3, 3, 3, 10)
    ],
)
def test_latency_tracker(records: list[tuple[float, int]], expected: Any) -> None:
    clock = Clock()
    tracker = LatencyTracker(clock=clock)
    for service_ms, used in records:
        tracker.record(service_ms, used)
    clock.now += 1.0
    assert tracker.first_member_ms() == expected


def test_latency_tracker_forgets_a_busy_spell() -> None:
    clock = Clock()
    tracker = LatencyTracker(clock=clock)
    for _ in range(10):
        tracker.record(50.0, 1)
        tracker.record_return(4.0)
    clock.now += 1.0
    assert tracker.first_member_ms() == 50.0 and tracker.return_ms() == 4.0
    clock.now += 60.0  # nothing ran since (everything was shed, say): the old estimate must not persist
    assert tracker.first_member_ms() == 0.0 and tracker.return_ms() == 0.0


def _run_scheduled(spent_ms: float, budget_ms: float, first_ms: float, return_ms: float = 0.0) -> Any:
    """One call through a free scheduler for a request that arrived ``spent_ms`` ago."""
    clock = Clock()
    tracker = LatencyTracker(clock=clock)
    for _ in range(5):
        tracker.record(first_ms, members_used=1)
        tracker.record_return(return_ms)
    clock.now += 1.0
    scheduler = Scheduler(workers=1, max_queue=4, reserve_ms=0.5, tracker=tracker)

    async def main() -> Any:
        arrival = time.perf_counter() - spent_ms / 1e3
        return await scheduler.run(lambda left: left, arrival, budget_ms, lambda result: 1)

    try:
        return asyncio.run(main())
    finally:
        scheduler.close()


def test_request_that_finds_a_free_worker_is_not_shed() -> None:
    # the whole budget went before it got here, but nothing queued: not overload, it runs with the
    # minimum budget (the runtime answers with its first member)
    done = _run_scheduled(spent_ms=120, budget_ms=100, first_ms=20)
    assert done.result == pytest.approx(0.01)


def test_budget_left_reaches_the_call() -> None:
    done = _run_scheduled(spent_ms=30, budget_ms=100, first_ms=20)
    assert 0 < done.result <= 100 - 30 - 0.5 and done.budget_ms == done.result  # time only moves on


def test_slow_hand_back_to_the_event_loop_is_kept_back_from_the_budget() -> None:
    # results have lately taken 10 ms to get back to the event loop: the runtime gets 10 ms less
    done = _run_scheduled(spent_ms=30, budget_ms=100, first_ms=20, return_ms=10)
    assert 0 < done.result <= 100 - 30 - 0.5 - 10


def test_budget_that_never_fit_the_first_member_still_runs() -> None:
    # not overload: the runtime answers with its first member (and says "budget")
    done = _run_scheduled(spent_ms=0, budget_ms=10, first_ms=20)
    assert 0 < done.result <= 9.5


@pytest.mark.parametrize("no_budget_due_ms, first_after_the_running_one", [(1000.0, "budgeted"), (10.0, "unbudgeted")])
def test_queue_is_earliest_deadline_first(no_budget_due_ms: float, first_after_the_running_one: str) -> None:
    fake = UnstoppableRuntime(0.2)
    app = create_app(fake, ServerConfig(workers=1, max_queue=8, no_budget_due_ms=no_budget_due_ms))
    # B has no budget (due at arrival + no_budget_due_ms), C arrives later with an 800 ms budget
    responses = run_concurrently(app, [(body(), 0.0), (body(), 0.05), (body(budget_ms=800), 0.1)])
    assert [r.status_code for r in responses] == [200, 200, 200]
    second = "unbudgeted" if fake.calls[1]["budget_ms"] == "off" else "budgeted"
    assert second == first_after_the_running_one


def test_a_held_request_is_checked_against_its_wait_even_with_a_worker_free() -> None:
    clock = Clock()
    tracker = LatencyTracker(clock=clock)
    for _ in range(5):
        tracker.record(2.0, members_used=1)  # first member 2 ms: need = 5 ms reserve + 2
    clock.now += 1.0
    scheduler = Scheduler(workers=1, max_queue=4, reserve_ms=5.0, tracker=tracker)
    tracker.first_member_ms()  # (the first estimate imports what it needs: not on the clock below)
    now = time.perf_counter()
    assert scheduler.in_time(now - 0.001, 10.0)  # waited 1 ms: 9 left >= 7
    assert not scheduler.in_time(now - 0.005, 10.0)  # waited 5 ms: 5 left < 7: refused, not answered late
    assert scheduler.in_time(now - 0.5, 10.0, waited=False)  # not held: a free worker takes it, as before
    # A budget the estimates say is too short even unwaited (6 < 7): served if it has hardly waited (the first
    # member answers it, as on an idle server), refused once it has waited a tenth of its budget.
    assert scheduler.in_time(time.perf_counter(), 6.0)
    assert not scheduler.in_time(now - 0.001, 6.0)
    assert scheduler.in_time(now - 10.0, None)  # no budget: never refused for its wait
    scheduler.close()
