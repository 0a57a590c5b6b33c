"""Deadlines: estimates that recover after a load spike, the in-flight stop, ``late``, and joined threads.

Scripted sessions and a fake clock (see test_runtime_fake.py): no timing decides a test. The one real
ONNX Runtime test uses a member that loops for seconds, so it shows whether the watchdog stops it, not how
fast.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import edge_runtime
import edge_runtime.ensemble as ensemble
from edge_runtime._threads import live_threads
from edge_runtime.bundle import load_bundle
from edge_runtime.deadline import DeadlineConfig
from edge_runtime.device import fingerprint
from edge_runtime.errors import PolicyError
from test_runtime_fake import FakeClock, FakeSession, _inputs, _runtime

QUIET = [0.1, 0.2, 0.4]  # ms per member, also the profile
NO_THREAD = DeadlineConfig(latency_refresh_s=None, in_flight_stop=False)  # the test refreshes by hand


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(ensemble, "perf_counter", fake)
    return fake


def _drive(runtime, clock: FakeClock, seconds: float, budget: float, gap_ms: float = 1.0) -> list[tuple[float, int]]:
    """Requests every ``gap_ms`` (plus their own time) for ``seconds`` of fake time, refreshing the estimates
    every 0.1 s as the background thread would; (time, members used) per request."""
    out = []
    end = clock.now + seconds
    next_refresh = clock.now
    while clock.now < end:
        if clock.now >= next_refresh:
            runtime.latency_estimator.refresh()
            next_refresh += 0.1
        out.append((clock.now, runtime.predict(_inputs([0]), budget_ms=budget)[0].members_used))
        clock.advance_ms(gap_ms)
    return out


def test_members_come_back_within_the_window_after_a_load_spike(tiny_bundle: Path, clock: FakeClock) -> None:
    # ../shared/cases/deadline/06: after a burst of contention the budget policy kept using member 1 only.
    runtime, sessions = _runtime(tiny_bundle, clock, [{}, {}, {}], QUIET, profile_ms=QUIET, deadline=NO_THREAD)
    quiet = _drive(runtime, clock, 0.5, budget=1.0)
    assert [u for _, u in quiet[-100:]] == [3] * 100
    for s, ms in zip(sessions, QUIET):
        s.latency_ms = 10 * ms  # the spike: everything ten times slower
    spike = _drive(runtime, clock, 1.0, budget=1.0)
    assert np.mean([u for _, u in spike[-300:]]) < 1.1  # the policy cut members while it lasted
    spike_end = clock.now
    for s, ms in zip(sessions, QUIET):
        s.latency_ms = ms
    after = _drive(runtime, clock, 3.0, budget=1.0)
    # Within the window (+ refreshes) of the spike's end every request uses all members again, for good;
    # a count-based window would keep the slow runs of skipped members for ever.
    recovered = spike_end + runtime.deadline_config.latency_window_s + 2 * 0.1
    late_phase = [u for t, u in after if t > recovered]
    assert len(late_phase) > 1000 and set(late_phase) == {3}


def test_under_lasting_load_a_skipped_member_is_retried_about_once_per_window(tiny_bundle: Path, clock: FakeClock) -> None:
    runtime, sessions = _runtime(tiny_bundle, clock, [{}, {}, {}], QUIET, profile_ms=QUIET, deadline=NO_THREAD)
    _drive(runtime, clock, 0.5, budget=1.0)
    for s, ms in zip(sessions[1:], QUIET[1:]):
        s.latency_ms = 10 * ms  # members 2 and 3 slow; member 1 leaves slack for member 2's profile
    _drive(runtime, clock, 1.0, budget=1.0)
    lasting = _drive(runtime, clock, 4.0, budget=1.0)
    probes = sum(u > 1 for _, u in lasting)
    # Re-tried about once per 1 s window (two runs: the cold first one is not counted), not per request.
    assert len(lasting) > 1000 and 4 <= probes <= 12


def test_while_member_1_shows_the_device_loaded_skipped_members_are_not_probed(tiny_bundle: Path, clock: FakeClock) -> None:
    # Everything 3x slower (a busy process on the core): member 1 (0.3 ms) still leaves room for member 2's
    # profile (0.2 ms) under 0.6 ms, but a probe would take 0.6 ms and answer late. Member 1's own window
    # shows the load, so re-tries are predicted 3x slower and not made; once the load ends they come back.
    runtime, sessions = _runtime(tiny_bundle, clock, [{}, {}, {}], QUIET, profile_ms=QUIET, deadline=NO_THREAD)
    _drive(runtime, clock, 0.5, budget=0.6)
    for s, ms in zip(sessions, QUIET):
        s.latency_ms = 3 * ms
    _drive(runtime, clock, 1.5, budget=0.6)  # member 2's slow runs leave the window
    lasting = _drive(runtime, clock, 3.0, budget=0.6)
    assert len(lasting) > 1000 and all(u == 1 for _, u in lasting)
    assert runtime.latency_estimator.describe()["load"] == pytest.approx(3.0)
    for s, ms in zip(sessions, QUIET):
        s.latency_ms = ms
    quiet_from = clock.now + runtime.deadline_config.latency_window_s + 2 * 0.1
    after = _drive(runtime, clock, 2.0, budget=0.6)
    assert {u for t, u in after if t > quiet_from} == {2}  # members 1 + 2 fit 0.6 ms again (member 3 does not)
    assert runtime.latency_estimator.describe()["load"] == 1.0


# ---------------------------------------------------------------- in-flight stop


class SteppedSession(FakeSession):
    """A fake member that runs in 0.1 ms "operators" and, like ONNX Runtime, checks ``terminate`` between
    them; between steps it lets the runtime's watchdog look at the (fake) clock."""

    watchdog = None

    def run(self, names: list[str], feed: dict[str, np.ndarray], run_options: object = None) -> list[np.ndarray]:
        latency, self.latency_ms = self.latency_ms, 0.0
        try:
            outs = super().run(names, feed, run_options)  # the answer, without time passing
        finally:
            self.latency_ms = latency
        for _ in range(int(round(latency / 0.1))):
            self.clock.advance_ms(0.1)
            if self.watchdog is not None:
                self.watchdog.check()
            if run_options is not None and run_options.terminate:
                raise RuntimeError("Exiting due to terminate flag being set to true.")
        return outs


def _stepped(
    bundle_path: Path,
    clock: FakeClock,
    latencies: list[float],
    profile_ms: list[float],
    entropies: list[dict[int, float]] | None = None,
    **kwargs: object,
):
    bundle = load_bundle(bundle_path)
    rows = [{"name": m.name, "latency_ms": {"p99": v}} for m, v in zip(bundle.manifest.members, profile_ms)]
    bundle = bundle.with_manifest(replace(bundle.manifest, profiles={fingerprint(): {"members": rows}}))
    entropies = entropies or [{}, {}, {}]
    sessions = [SteppedSession(k, lambda i, k=k: entropies[k].get(i, 2.0), latencies[k], clock, False) for k in range(3)]
    kwargs.setdefault("deadline", DeadlineConfig(latency_refresh_s=None, stop_min_ms=1.0, stop_lead_ms=0.3))
    runtime = ensemble.AnytimeRuntime(bundle, sessions=sessions, warmup=0, **kwargs)
    for s in sessions:
        s.watchdog = runtime.watchdog
    return runtime, sessions


def test_a_member_running_past_the_deadline_is_stopped_and_the_answer_is_the_one_before(
    tiny_bundle: Path, clock: FakeClock
) -> None:
    # Member 2 is profiled at 2 ms (1 + 2 fits a 5 ms budget) but runs 10 ms.
    runtime, sessions = _stepped(tiny_bundle, clock, [1.0, 10.0, 1.0], [1.0, 2.0, 2.0])
    answer = runtime.predict(_inputs([0]), budget_ms=5.0)[0]
    assert (answer.members_used, answer.exit_reason, answer.stopped_in_flight) == (1, "budget", True)
    assert answer.label == 0  # member 1's answer: (id + 0) % 3
    assert answer.elapsed_ms == pytest.approx(4.7, abs=0.11) and not answer.late  # stopped 0.3 ms before
    state = runtime.watchdog.describe()
    assert (state["guarded_runs"], state["stopped"]) == (1, 1)
    # The stopped run still counts as an observation: at least the time it ran.
    assert runtime.latency_observations()[1] == pytest.approx([3.7], abs=0.11)


def test_without_the_stop_the_late_member_finishes_and_the_answer_is_late(tiny_bundle: Path, clock: FakeClock) -> None:
    off = DeadlineConfig(latency_refresh_s=None, in_flight_stop=False)
    runtime, _ = _stepped(tiny_bundle, clock, [1.0, 10.0, 1.0], [1.0, 2.0, 2.0], deadline=off)
    answer = runtime.predict(_inputs([0]), budget_ms=5.0)[0]
    assert (answer.members_used, answer.exit_reason, answer.stopped_in_flight, answer.late) == (2, "budget", False, True)
    assert answer.elapsed_ms == pytest.approx(11.0)
    assert runtime.watchdog.describe()["guarded_runs"] == 0


def test_members_predicted_below_the_threshold_are_not_guarded(tiny_bundle: Path, clock: FakeClock) -> None:
    runtime, _ = _stepped(tiny_bundle, clock, [1.0, 10.0, 1.0], [1.0, 0.5, 0.5])  # 0.5 ms < stop_min_ms 1.0
    answer = runtime.predict(_inputs([0]), budget_ms=5.0)[0]
    assert (answer.members_used, answer.stopped_in_flight, answer.late) == (2, False, True)
    assert runtime.watchdog.describe()["guarded_runs"] == 0


def test_member_1_is_never_stopped_so_a_slow_one_answers_late(tiny_bundle: Path, clock: FakeClock) -> None:
    runtime, _ = _stepped(tiny_bundle, clock, [10.0, 1.0, 1.0], [2.0, 2.0, 2.0])
    answer = runtime.predict(_inputs([0]), budget_ms=5.0)[0]
    assert (answer.members_used, answer.exit_reason, answer.stopped_in_flight, answer.late) == (1, "budget", False, True)
    assert answer.elapsed_ms == pytest.approx(10.0)
    assert runtime.watchdog.describe()["guarded_runs"] == 0


def test_a_stop_in_a_batch_answers_every_running_row_with_the_member_before(tiny_bundle: Path, clock: FakeClock) -> None:
    runtime, _ = _stepped(tiny_bundle, clock, [1.0, 10.0, 1.0], [1.0, 2.0, 2.0], entropies=[{0: 0.1}, {}, {}])
    answers = runtime.predict(_inputs([0, 1, 2]), budget_ms=5.0, entropy_threshold=0.3)
    assert [(a.members_used, a.exit_reason, a.stopped_in_flight) for a in answers] == [
        (1, "confident", False),
        (1, "budget", True),
        (1, "budget", True),
    ]
    assert [a.label for a in answers] == [0, 1, 2]
    assert not any(a.late for a in answers)


def test_a_cold_confident_answer_past_the_budget_says_late(tiny_bundle: Path, clock: FakeClock) -> None:
    runtime, _ = _stepped(tiny_bundle, clock, [2.0, 1.0, 1.0], [0.1, 0.1, 0.1], entropies=[{0: 0.1}, {}, {}])
    answer = runtime.predict(_inputs([0]), budget_ms=0.2, entropy_threshold=0.3)[0]
    assert (answer.exit_reason, answer.late, answer.elapsed_ms) == ("confident", True, pytest.approx(2.0))
    assert not runtime.predict(_inputs([0]), entropy_threshold=0.3)[0].late  # no budget: never late
    assert answer.to_dict()["late"] is True


def test_deadline_config_is_checked() -> None:
    for bad in ({"latency_window_s": 0}, {"latency_refresh_s": 0}, {"stop_min_ms": -1}, {"stop_lead_ms": float("inf")}):
        with pytest.raises(PolicyError):
            DeadlineConfig(**bad)  # type: ignore[arg-type]  # wrong values on purpose


def test_onnx_runtime_stops_a_real_member_in_flight(tmp_path: Path) -> None:
    from onnx_members import looping_member_graph, make_bundle, set_member_bytes

    path = make_bundle(tmp_path / "b", num_members=3)
    set_member_bytes(path, 1, looping_member_graph(1, (1, 4, 4), 3, trip_count=3 * 10**6))  # seconds per run
    bundle = load_bundle(path)
    rows = [{"name": m.name, "latency_ms": {"p99": 2.0}} for m in bundle.manifest.members]  # a profile that lies
    bundle = bundle.with_manifest(replace(bundle.manifest, profiles={fingerprint(): {"members": rows}}))
    with edge_runtime.load(bundle, entropy_threshold="off", warmup=0) as runtime:
        answer = runtime.predict(np.zeros((1, 1, 4, 4), np.float32), budget_ms=50.0)[0]
        assert (answer.members_used, answer.exit_reason, answer.stopped_in_flight) == (1, "budget", True)
        assert runtime.watchdog.describe()["stopped"] == 1
        watchdog_thread = runtime.watchdog._thread._thread
        assert watchdog_thread is not None and watchdog_thread.is_alive()
    assert not watchdog_thread.is_alive()  # close() joined it


# ---------------------------------------------------------------- threads at close and at exit


def test_close_stops_and_joins_every_thread_of_the_runtime(tiny_bundle: Path) -> None:
    runtime = edge_runtime.load(tiny_bundle, deadline=DeadlineConfig(stop_min_ms=0.0))
    runtime.predict(np.zeros((1, 1, 4, 4), np.float32), budget_ms=1000.0)  # starts the refresher and the watchdog
    mine = [t for t in (runtime.latency_estimator._thread._thread, runtime.watchdog._thread._thread) if t is not None]
    assert len(mine) == 2 and all(t in live_threads() for t in mine)
    runtime.close()
    assert not any(t.is_alive() for t in mine)
    assert len(runtime.predict(np.zeros((2, 1, 4, 4), np.float32), budget_ms=1000.0)) == 2  # still answers
    assert not any(t in live_threads() for t in mine)


def test_no_runtime_thread_is_left_running_at_interpreter_exit(tiny_bundle: Path) -> None:
    # Issue 14, item 7: a native thread still running at shutdown aborted a demo (exit 134). The check is
    # registered first, so atexit runs it last, after the runtime's own hook.
    script = textwrap.dedent(f"""
        import atexit, sys, threading
        def check():
            left = [t.name for t in threading.enumerate() if t.name.startswith("edge_runtime")]
            sys.stdout.write("left=" + ",".join(left) + "\\n"); sys.stdout.flush()
        atexit.register(check)
        import numpy as np, edge_runtime
        from edge_runtime.deadline import DeadlineConfig
        rt = edge_runtime.load({str(tiny_bundle)!r}, deadline=DeadlineConfig(stop_min_ms=0.0))
        for _ in range(50):
            rt.predict(np.zeros((1, 1, 4, 4), np.float32), budget_ms=1000.0)
        names = sorted(t.name for t in threading.enumerate() if t.name.startswith("edge_runtime"))
        print("running=" + ",".join(names))
    """)
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert "running=edge_runtime-latency,edge_runtime-watchdog" in done.stdout
    assert "left=\n" in done.stdout
