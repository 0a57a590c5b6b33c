"""Exit logic with fake sessions: scripted entropies and latencies, a fake clock, no real models.

Each fake member reads a sample id from ``x[:, 0, 0, 0]`` and answers with that sample's scripted entropy;
its logits encode (member, id) so the next member can check that ``prev_logits`` and connection tensors
arrive row-aligned after the batch shrinks. Running a member advances the fake clock by its scripted
latency, so budget decisions are exact.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

import edge_runtime.ensemble as ensemble
from edge_runtime.bundle import load_bundle
from edge_runtime.device import fingerprint
from edge_runtime.ensemble import AnytimeRuntime
from edge_runtime.errors import MemberError

NUM_CLASSES = 3


class FakeClock:
    """Stands in for time.perf_counter inside the runtime; fake members advance it."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance_ms(self, ms: float) -> None:
        self.now += ms / 1e3


@dataclass
class _Node:
    name: str
    shape: tuple = ()


class FakeSession:
    """Member ``k`` of a scripted ensemble (see the module docstring)."""

    def __init__(
        self,
        k: int,
        entropy: Callable[[int], float],
        latency_ms: float,
        clock: FakeClock,
        connected: bool,
        fails: Callable[[np.ndarray], bool] = lambda ids: False,
    ) -> None:
        self.k, self.entropy, self.latency_ms, self.clock = k, entropy, latency_ms, clock
        self.connected = connected
        self.fails = fails
        self.calls: list[list[int]] = []  # sample ids of every call
        self.misaligned: list[str] = []  # rows whose carried tensors came from another sample

    def get_inputs(self) -> list[_Node]:
        names = ["x"] + (["prev_logits"] if self.k else []) + (["conn_features"] if self.k and self.connected else [])
        return [_Node(n) for n in names]

    def get_outputs(self) -> list[_Node]:
        return [_Node(n) for n in ("logits", "probs", "entropy", "features")]

    def run(self, names: list[str], feed: dict[str, np.ndarray], run_options: object = None) -> list[np.ndarray]:
        ids = feed["x"][:, 0, 0, 0].astype(int)
        self.calls.append(ids.tolist())
        if self.k:
            if not np.array_equal(feed["prev_logits"][:, 0], ids + 1000 * (self.k - 1)):
                self.misaligned.append("prev_logits")
            if self.connected and not np.array_equal(feed["conn_features"][:, 0], ids + 5000 + self.k - 1):
                self.misaligned.append("conn_features")
        if self.fails(ids):
            raise RuntimeError(f"scripted failure of member {self.k}")
        self.clock.advance_ms(self.latency_ms)
        n = len(ids)
        logits = np.zeros((n, NUM_CLASSES), np.float32)
        logits[:, 0] = ids + 1000 * self.k
        probs = np.full((n, NUM_CLASSES), 0.1, np.float32)
        probs[np.arange(n), (ids + self.k) % NUM_CLASSES] = 0.8  # label depends on member and sample
        entropy = np.array([self.entropy(i) for i in ids], np.float32)
        features = np.zeros((n, 4), np.float32)
        features[:, 0] = ids + 5000 + self.k
        out = {"logits": logits, "probs": probs, "entropy": entropy, "features": features}
        return [out[name] for name in names]


def _inputs(ids: list[int]) -> np.ndarray:
    x = np.zeros((len(ids), 1, 4, 4), np.float32)
    x[:, 0, 0, 0] = ids
    return x


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(ensemble, "perf_counter", fake)
    return fake


def _runtime(
    bundle_path: Path,
    clock: FakeClock,
    entropies: list[dict[int, float]],
    latencies: list[float],
    profile_ms: list[float] | None = None,
    fails: dict[int, Callable[[np.ndarray], bool]] | None = None,
    **kwargs: object,
) -> tuple[AnytimeRuntime, list[FakeSession]]:
    bundle = load_bundle(bundle_path)
    connected = bool(bundle.manifest.members[1].connections)
    if profile_ms is not None:
        rows = [{"name": m.name, "latency_ms": {"p99": v}} for m, v in zip(bundle.manifest.members, profile_ms)]
        bundle = bundle.with_manifest(replace(bundle.manifest, profiles={fingerprint(): {"members": rows}}))
    fails = fails or {}
    sessions = [
        FakeSession(k, lambda i, k=k: entropies[k].get(i, 2.0), latencies[k], clock, connected, fails.get(k, lambda ids: False))
        for k in range(len(latencies))
    ]
    kwargs.setdefault("warmup", 0)
    return AnytimeRuntime(bundle, sessions=sessions, **kwargs), sessions  # type: ignore[arg-type]  # the caller's keywords


def test_per_sample_exit_shrinks_the_batch_and_keeps_rows_aligned(connected_bundle: Path, clock: FakeClock) -> None:
    # Samples 0 and 2 are confident after member 1, sample 1 after member 2, samples 3 and 4 never.
    entropies = [{0: 0.1, 2: 0.05}, {1: 0.2}, {}]
    runtime, sessions = _runtime(connected_bundle, clock, entropies, [1.0, 1.0, 1.0], entropy_threshold=0.3)
    answers = runtime.predict(_inputs([0, 1, 2, 3, 4]))
    assert [s.calls for s in sessions] == [[[0, 1, 2, 3, 4]], [[1, 3, 4]], [[3, 4]]]
    assert all(not s.misaligned for s in sessions)
    assert [a.members_used for a in answers] == [1, 2, 1, 3, 3]
    assert [a.exit_reason for a in answers] == ["confident", "confident", "confident", "complete", "complete"]
    # Each answer is the one of the member it stopped at: label = (id + member index) % classes.
    assert [a.label for a in answers] == [(i + a.members_used - 1) % NUM_CLASSES for i, a in zip(range(5), answers)]
    assert [a.entropy for a in answers] == pytest.approx([0.1, 0.2, 0.05, 2.0, 2.0])
    assert [a.elapsed_ms for a in answers] == pytest.approx([1.0, 2.0, 1.0, 3.0, 3.0])


def test_batched_and_single_requests_agree(connected_bundle: Path, clock: FakeClock) -> None:
    entropies = [{0: 0.1, 2: 0.05}, {1: 0.2}, {}]
    runtime, _ = _runtime(connected_bundle, clock, entropies, [1.0, 1.0, 1.0], entropy_threshold=0.3)
    batched = runtime.predict(_inputs([0, 1, 2, 3, 4]))
    single = [runtime.predict(_inputs([i]))[0] for i in range(5)]
    for b, s in zip(batched, single):
        assert (b.label, b.members_used, b.exit_reason, b.entropy) == (s.label, s.members_used, s.exit_reason, s.entropy)
        np.testing.assert_array_equal(b.probabilities, s.probabilities)


def test_entropy_threshold_off_runs_every_member(tiny_bundle: Path, clock: FakeClock) -> None:
    runtime, sessions = _runtime(tiny_bundle, clock, [{0: 0.0}, {0: 0.0}, {}], [1.0, 1.0, 1.0], entropy_threshold=0.5)
    assert runtime.predict(_inputs([0]))[0].exit_reason == "confident"
    answer = runtime.predict(_inputs([0]), entropy_threshold="off")[0]
    assert (answer.members_used, answer.exit_reason) == (3, "complete")


@pytest.mark.parametrize(
    "budget, used",
    [
        (0.1, 1),  # below member 1 alone: the first member still runs
        (2.5, 1),  # 1 ms elapsed + 2 ms predicted for member 2 > 2.5
        (3.05, 2),  # 1 + 2 fits; then 3 + 4 > 3.05
        (6.95, 2),
        (7.05, 3),
    ],
)
def test_budget_stops_before_a_member_that_would_overrun(tiny_bundle: Path, clock: FakeClock, budget: float, used: int) -> None:
    runtime, _ = _runtime(tiny_bundle, clock, [{}, {}, {}], [1.0, 2.0, 4.0], profile_ms=[1.0, 2.0, 4.0])
    answer = runtime.predict(_inputs([0]), budget_ms=budget)[0]
    assert answer.members_used == used
    assert answer.exit_reason == ("complete" if used == 3 else "budget")
    assert answer.elapsed_ms == pytest.approx([1.0, 3.0, 7.0][used - 1])


def test_confidence_wins_over_budget_when_both_apply(tiny_bundle: Path, clock: FakeClock) -> None:
    runtime, _ = _runtime(tiny_bundle, clock, [{0: 0.1}, {}, {}], [1.0, 2.0, 4.0], profile_ms=[1.0, 2.0, 4.0])
    answers = runtime.predict(_inputs([0, 1]), budget_ms=2.5, entropy_threshold=0.3)
    assert [(a.members_used, a.exit_reason) for a in answers] == [(1, "confident"), (1, "budget")]


def test_budget_without_profile_uses_observed_latencies(tiny_bundle: Path, clock: FakeClock) -> None:
    runtime, _ = _runtime(tiny_bundle, clock, [{}, {}, {}], [1.0, 2.0, 4.0], warmup=3)
    assert runtime.latency_estimator.source() == "observed"
    assert runtime.latency_estimator.estimates() == pytest.approx((1.0, 2.0, 4.0))
    assert runtime.predict(_inputs([0]), budget_ms=2.5)[0].members_used == 1
    assert runtime.predict(_inputs([0]), budget_ms=3.5)[0].members_used == 2


def test_observed_latencies_override_a_too_optimistic_profile(tiny_bundle: Path, clock: FakeClock) -> None:
    # The profile says member 2 takes 0.5 ms; under "contention" it takes 2 ms. Once enough runs are
    # observed, the prediction follows what is observed and the budget holds again.
    runtime, _ = _runtime(tiny_bundle, clock, [{}, {}, {}], [1.0, 2.0, 4.0], profile_ms=[1.0, 0.5, 4.0])
    assert runtime.predict(_inputs([0]), budget_ms=2.5)[0].members_used == 2  # trusts the profile: overruns
    for _ in range(runtime.latency_estimator.min_observations):
        runtime.predict(_inputs([0]))
    runtime.latency_estimator.refresh()
    assert runtime.latency_estimator.source() == "profile+observed"
    answer = runtime.predict(_inputs([0]), budget_ms=2.5)[0]
    assert (answer.members_used, answer.exit_reason) == (1, "budget")


def test_batch_budget_scales_prediction_by_the_batch_slowdown(tiny_bundle: Path, clock: FakeClock) -> None:
    runtime, sessions = _runtime(tiny_bundle, clock, [{}, {}, {}], [1.0, 2.0, 4.0], profile_ms=[0.5, 1.0, 2.0])
    # Member 1 ran 2x slower than profiled, so member 2 is predicted at 2 ms: 1 + 2 > 2.5 stops.
    answers = runtime.predict(_inputs([0, 1]), budget_ms=2.5)
    assert [(a.members_used, a.exit_reason) for a in answers] == [(1, "budget"), (1, "budget")]


def test_member_error_mid_request_answers_best_so_far_and_keeps_serving(tiny_bundle: Path, clock: FakeClock) -> None:
    fails = {1: lambda ids: 3 in ids.tolist()}  # member 2 raises whenever sample 3 is in its batch
    runtime, sessions = _runtime(tiny_bundle, clock, [{0: 0.1}, {}, {}], [1.0, 1.0, 1.0], fails=fails, entropy_threshold=0.3)
    answers = runtime.predict(_inputs([0, 1, 3]))
    assert [(a.members_used, a.exit_reason) for a in answers] == [(1, "confident"), (1, "error"), (1, "error")]
    assert [a.label for a in answers] == [0, 1, 0]  # member 1's answers: (id + 0) % 3
    single = runtime.predict(_inputs([3]))[0]
    assert (single.members_used, single.exit_reason, single.label) == (1, "error", 0)
    healthy = runtime.predict(_inputs([1, 4]))
    assert [(a.members_used, a.exit_reason) for a in healthy] == [(3, "complete"), (3, "complete")]
    assert runtime.member_errors() == (0, 2, 0)


def test_error_after_the_batch_shrank_keeps_earlier_exits(tiny_bundle: Path, clock: FakeClock) -> None:
    fails = {2: lambda ids: True}
    runtime, _ = _runtime(tiny_bundle, clock, [{0: 0.1}, {1: 0.1}, {}], [1.0, 1.0, 1.0], fails=fails, entropy_threshold=0.3)
    answers = runtime.predict(_inputs([0, 1, 2, 4]))
    assert [(a.members_used, a.exit_reason) for a in answers] == [(1, "confident"), (2, "confident"), (2, "error"), (2, "error")]
    assert [a.label for a in answers] == [0, 2, 0, 2]  # rows 2 and 4 answered by member 2: (id + 1) % 3


def test_first_member_error_raises(tiny_bundle: Path, clock: FakeClock) -> None:
    runtime, _ = _runtime(tiny_bundle, clock, [{}, {}, {}], [1.0, 1.0, 1.0], fails={0: lambda ids: 7 in ids.tolist()})
    with pytest.raises(MemberError, match="first member 'member_1'"):
        runtime.predict(_inputs([7]))
    with pytest.raises(MemberError):
        runtime.predict(_inputs([1, 7]))
    assert runtime.predict(_inputs([1]))[0].exit_reason == "complete"  # still serving


def test_failure_during_warm_up_is_a_load_error(tiny_bundle: Path, clock: FakeClock) -> None:
    from edge_runtime.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="warm-up"):
        _runtime(tiny_bundle, clock, [{}, {}, {}], [1.0, 1.0, 1.0], fails={2: lambda ids: True}, warmup=2)


def test_observations_come_from_single_sample_requests(tiny_bundle: Path, clock: FakeClock) -> None:
    runtime, _ = _runtime(tiny_bundle, clock, [{}, {}, {}], [1.0, 2.0, 4.0])
    runtime.predict(_inputs([0]))
    runtime.predict(_inputs([0, 1]))
    observed = runtime.latency_observations()
    assert [len(o) for o in observed] == [1, 1, 1]
    assert np.concatenate(observed) == pytest.approx([1.0, 2.0, 4.0])


def test_entropy_of_the_wrong_rank_is_refused_at_load(tiny_bundle: Path, clock: FakeClock) -> None:
    from edge_runtime.errors import ModelLoadError

    class WrongEntropy(FakeSession):
        def get_outputs(self) -> list[_Node]:
            return [_Node("logits", ("N", 3)), _Node("probs", ("N", 3)), _Node("entropy", ("N", 1)), _Node("features", ("N", 4))]

    sessions = [WrongEntropy(k, lambda i: 1.0, 1.0, clock, False) for k in range(3)]
    with pytest.raises(ModelLoadError, match="entropy"):
        AnytimeRuntime(load_bundle(tiny_bundle), sessions=sessions, warmup=0)
