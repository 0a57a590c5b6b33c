"""Exit policies and the latency estimator on their own."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest

from edge_runtime.errors import PolicyError
from edge_runtime.policies import (
    POLICIES,
    EntropyAndBudget,
    EntropyThreshold,
    LatencyBudget,
    LatencyEstimator,
    RunAll,
    make_policy,
    parse_budget,
    parse_entropy_threshold,
    policy_for,
)

PARAMS = {
    "all": {},
    "entropy": {"threshold": 0.5},
    "budget": {"budget_ms": 3.0},
    "entropy+budget": {"threshold": 0.5, "budget_ms": 3.0},
}


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_registered_policy_builds_and_describes_itself(name: str) -> None:
    policy = make_policy(name, **PARAMS[name])
    assert policy.name == name and policy.describe()["policy"] == name
    assert policy.stop_reason(10.0, 0.0, 0.0) is None  # unsure, no time spent: go on
    assert policy.stop_reason(math.nan, 0.0, 0.0) is None  # NaN entropy never counts as confident


@pytest.mark.parametrize(
    "policy, entropy, elapsed, next_ms, expected",
    [
        (RunAll(), 0.0, 1e9, 1e9, None),
        (EntropyThreshold(0.5), 0.5, 0, 0, "confident"),
        (EntropyThreshold(0.5), 0.51, 1e9, 1e9, None),
        (LatencyBudget(3.0), 0.0, 1.0, 2.0, None),
        (LatencyBudget(3.0), 0.0, 1.0, 2.01, "budget"),
        (EntropyAndBudget(0.5, 3.0), 0.1, 5.0, 5.0, "confident"),
        (EntropyAndBudget(0.5, 3.0), 0.9, 1.0, 2.5, "budget"),
        (EntropyAndBudget(0.5, 3.0), 0.9, 1.0, 1.5, None),
    ],
)
def test_stop_reasons(policy, entropy: float, elapsed: float, next_ms: float, expected: str | None) -> None:
    assert policy.stop_reason(entropy, elapsed, next_ms) == expected


def test_policy_for_picks_by_what_is_set() -> None:
    assert isinstance(policy_for(None, None), RunAll)
    assert isinstance(policy_for(0.2, None), EntropyThreshold)
    assert isinstance(policy_for(None, 2.0), LatencyBudget)
    assert isinstance(policy_for(0.2, 2.0), EntropyAndBudget)


def test_spellings() -> None:
    assert parse_entropy_threshold("calibrated", 0.3) == 0.3
    assert parse_entropy_threshold("calibrated", None) is None
    assert parse_entropy_threshold("off", 0.3) is None
    assert parse_entropy_threshold("0.25", None) == 0.25
    assert parse_budget("off") is None and parse_budget(2) == 2.0
    for bad in ("soon", -1, 0, math.inf):
        with pytest.raises(PolicyError):
            parse_budget(bad)
    for bad in ("high", -0.1, math.nan):
        with pytest.raises(PolicyError):
            parse_entropy_threshold(bad, None)
    with pytest.raises(PolicyError, match="unknown"):
        make_policy("fastest")
    with pytest.raises(PolicyError, match="wrong parameters"):
        make_policy("budget", threshold=1.0)


class Clock:
    """A settable clock in seconds for the estimator (no timings in tests)."""

    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def _observe(est: LatencyEstimator, clock: Clock, k: int, values: list[float], every_s: float = 0.001) -> None:
    for v in values:
        clock.now += every_s
        est.observed[k].append((clock.now, v))


def test_estimator_prefers_the_larger_of_profile_and_enough_observations() -> None:
    clock = Clock()
    est = LatencyEstimator(2, profile_ms=[1.0, 2.0], quantile=0.9, min_observations=10, refresh_s=None, clock=clock)
    assert est.refresh() == (1.0, 2.0) and est.source() == "profile"
    _observe(est, clock, 1, [50.0] * 9)  # too few observations since load to override the profile
    assert est.refresh() == (1.0, 2.0)
    _observe(est, clock, 1, [50.0])
    assert est.refresh() == (1.0, 50.0) and est.source() == "profile+observed"


def test_estimator_forgets_by_time_not_by_count() -> None:
    clock = Clock()
    est = LatencyEstimator(1, quantile=0.99, window_s=1.0, refresh_s=None, clock=clock)
    _observe(est, clock, 0, [9.0] * 500)  # a slow period of 0.5 s...
    clock.now += 0.6
    fast = np.linspace(1.0, 2.0, 100).tolist()
    _observe(est, clock, 0, fast)  # ...then 0.1 s of fast runs: the slow ones still count
    assert est.refresh()[0] == pytest.approx(9.0)
    clock.now += 0.45  # the slow period is now more than 1 s old; the fast runs are not
    assert est.refresh()[0] == pytest.approx(np.quantile(fast, 0.99))


def test_a_member_no_longer_run_falls_back_to_its_profile_after_the_window() -> None:
    clock = Clock()
    est = LatencyEstimator(2, profile_ms=[0.1, 0.2], quantile=0.99, window_s=1.0, min_observations=4, refresh_s=None, clock=clock)
    _observe(est, clock, 1, [0.2] * 50)
    _observe(est, clock, 1, [8.0] * 50)  # a load spike; then the budget skips member 2: no new observations
    assert est.refresh()[1] == pytest.approx(8.0)
    clock.now += 0.9
    assert est.refresh()[1] == pytest.approx(8.0)
    clock.now += 0.2  # every observation is older than the window: back to the profile, so it is re-tried
    assert est.refresh()[1] == pytest.approx(0.2)
    row = est.describe()["members"][1]
    assert (row["source"], row["samples"], row["observed_ms"]) == ("profile", 0, None)
    assert row["age_s"] == pytest.approx(1.1)


def test_without_a_profile_a_stale_member_falls_back_to_its_quietest_window() -> None:
    clock = Clock()
    est = LatencyEstimator(1, quantile=0.5, window_s=1.0, refresh_s=None, clock=clock)
    _observe(est, clock, 0, [0.3] * 20)
    assert est.refresh()[0] == pytest.approx(0.3)  # a quiet window sets the baseline
    clock.now += 2.0
    _observe(est, clock, 0, [5.0] * 20)
    assert est.refresh()[0] == pytest.approx(5.0)  # fresh observations rule while they count
    clock.now += 1.0001
    assert est.refresh()[0] == pytest.approx(0.3, rel=1e-3)  # stale: the quietest window seen, not the spike
    assert est.describe()["members"][0]["source"] == "baseline"


def test_without_a_profile_a_baseline_learnt_under_load_decays() -> None:
    clock = Clock()
    est = LatencyEstimator(1, quantile=0.5, window_s=1.0, refresh_s=None, clock=clock)
    _observe(est, clock, 0, [8.0] * 20)  # started during a spike: the only baseline is slow
    assert est.refresh()[0] == pytest.approx(8.0)
    clock.now += 1.0 + 5 * 1.0  # unrun for five windows past the first: halved
    assert est.refresh()[0] == pytest.approx(4.0)
    clock.now += 5 * 4.0
    assert est.refresh()[0] == pytest.approx(0.25)  # small enough for any budget to re-try it


def test_estimator_describe_shows_each_members_state() -> None:
    clock = Clock()
    est = LatencyEstimator(
        2, profile_ms=[1.0, 2.0], quantile=0.5, min_observations=2, refresh_s=None, clock=clock, names=["a", "b"]
    )
    _observe(est, clock, 0, [3.0, 3.0, 3.0])
    est.refresh()
    state = est.describe()
    a, b = state["members"]
    assert (a["member"], a["source"], a["estimate_ms"], a["samples"], a["profile_ms"]) == ("a", "observed", 3.0, 3, 1.0)
    assert a["age_s"] == pytest.approx(0.0)
    # member 1 runs 3x its profile: b, never run in the window, is predicted 3x its profile
    assert (b["member"], b["source"], b["estimate_ms"], b["samples"], b["age_s"]) == ("b", "profile", 6.0, 0, None)
    assert state["window_s"] == 1.0 and state["quantile"] == 0.5 and state["load"] == 3.0


def test_a_slight_slowdown_of_member_1_does_not_scale_re_tries() -> None:
    clock = Clock()
    est = LatencyEstimator(2, profile_ms=[1.0, 2.0], quantile=0.5, min_observations=2, refresh_s=None, clock=clock)
    _observe(est, clock, 0, [1.4, 1.4, 1.4])  # under 1.5x: a quantile against a profile reads a little high
    assert est.refresh() == (1.4, 2.0) and est.describe()["load"] == 1.0
    _observe(est, clock, 1, [2.5, 2.5])  # a member with its own runs in the window keeps its own figure
    _observe(est, clock, 0, [4.0] * 10)
    assert est.refresh() == (4.0, 2.5) and est.describe()["load"] == 4.0


def test_estimator_adds_the_finish_time_to_every_member() -> None:
    clock = Clock()
    est = LatencyEstimator(2, profile_ms=[1.0, 2.0], quantile=0.5, refresh_s=None, clock=clock)
    est.finish.extend([(clock.now, 0.25)] * 3)
    assert est.refresh() == (1.25, 2.25)


def test_estimator_refreshes_in_the_background_while_asked_and_joins_on_close() -> None:
    est = LatencyEstimator(1, refresh_s=0.01, idle_s=0.5)
    assert est.estimates() == (0.0,)
    est.observed[0].append((time.perf_counter(), 4.0))
    assert est.estimates() == (0.0,)  # cached: a request never pays for a refresh
    deadline = time.monotonic() + 30  # generous: the machine may be busy; no timing is asserted
    while est.estimates() != (4.0,) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert est.estimates() == (4.0,)
    while est._thread.running and time.monotonic() < deadline:  # stops by itself when idle
        time.sleep(0.05)
    assert not est._thread.running
    est.estimates()  # starts it again
    thread = est._thread._thread
    assert thread is not None and thread.is_alive()
    est.close()
    assert not est._thread.running and not thread.is_alive() and thread not in threading.enumerate()
    est.estimates()  # closed: no new thread
    assert not est._thread.running


@pytest.mark.parametrize(
    "kwargs",
    [
        {"profile_ms": [1.0]},
        {"quantile": 0.2},
        {"window_s": 0},
        {"window_s": math.inf},
        {"max_observations": 0},
        {"refresh_s": 0},
    ],
)
def test_estimator_rejects_bad_settings(kwargs: dict) -> None:
    with pytest.raises(PolicyError):
        LatencyEstimator(2, **kwargs)


def test_the_first_run_after_a_gap_is_cold_and_not_counted() -> None:
    clock = Clock()
    est = LatencyEstimator(1, profile_ms=[0.2], quantile=0.99, window_s=1.0, min_observations=4, refresh_s=None, clock=clock)
    _observe(est, clock, 0, [0.2] * 50)
    clock.now += 1.5  # the member was skipped: its runs aged out, it is re-tried at its profile
    assert est.refresh()[0] == pytest.approx(0.2)
    _observe(est, clock, 0, [3.0])  # the re-try's first run is cold...
    est.raise_to(0, 3.0)
    assert est.estimates()[0] == pytest.approx(0.2) and est.refresh()[0] == pytest.approx(0.2)  # ...and ignored
    _observe(est, clock, 0, [0.25, 0.2, 0.2])
    assert est.refresh()[0] == pytest.approx(0.25, abs=0.01)


def test_a_retried_member_still_slow_is_skipped_from_its_second_run() -> None:
    clock = Clock()
    est = LatencyEstimator(1, profile_ms=[0.2], quantile=0.99, window_s=1.0, min_observations=4, refresh_s=None, clock=clock)
    _observe(est, clock, 0, [0.2] * 50)
    clock.now += 1.5
    est.refresh()
    _observe(est, clock, 0, [3.0])
    est.raise_to(0, 3.0)  # cold: ignored
    _observe(est, clock, 0, [2.5])
    est.raise_to(0, 2.5)  # still slow: the cached estimate rises at once, before any refresh
    assert est._cached[0] == pytest.approx(2.5)
    assert est.refresh()[0] == pytest.approx(2.5)  # and the refresh agrees (the cold run left out)
