"""Exit policies and the latency estimator on their own."""

from __future__ import annotations

import math
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

PARAMS = {"all": {}, "entropy": {"threshold": 0.5}, "budget": {"budget_ms": 3.0}, "entropy+budget": {"threshold": 0.5, "budget_ms": 3.0}}


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


def test_estimator_prefers_the_larger_of_profile_and_enough_observations() -> None:
    est = LatencyEstimator(2, profile_ms=[1.0, 2.0], quantile=0.9, window=100, min_observations=10)
    assert est.refresh() == (1.0, 2.0) and est.source() == "profile"
    for v in range(1, 10):  # too few observations to override the profile
        est.observed[1].append(50.0)
    assert est.refresh() == (1.0, 2.0)
    est.observed[1].append(50.0)
    assert est.refresh() == (1.0, 50.0) and est.source() == "profile+observed"


def test_estimator_window_forgets_and_uses_a_high_quantile() -> None:
    est = LatencyEstimator(1, quantile=0.99, window=100)
    for _ in range(100):
        est.observed[0].append(9.0)  # a slow period...
    for v in np.linspace(1.0, 2.0, 100):
        est.observed[0].append(float(v))  # ...pushed out of the window by fast runs
    assert est.refresh()[0] == pytest.approx(np.quantile(np.linspace(1.0, 2.0, 100), 0.99))


def test_estimator_adds_the_finish_time_to_every_member() -> None:
    est = LatencyEstimator(2, profile_ms=[1.0, 2.0], quantile=0.5)
    est.finish.extend([0.25, 0.25, 0.25])
    assert est.refresh() == (1.25, 2.25)


def test_estimator_refreshes_in_the_background_while_asked() -> None:
    est = LatencyEstimator(1, refresh_s=0.01, idle_s=0.5)
    assert est.estimates() == (0.0,)
    est.observed[0].append(4.0)
    assert est.estimates() == (0.0,)  # cached: a request never pays for a refresh
    deadline = time.monotonic() + 30  # generous: the machine may be busy; no timing is asserted
    while est.estimates() != (4.0,) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert est.estimates() == (4.0,)
    while est._thread is not None and time.monotonic() < deadline:  # stops by itself when idle
        time.sleep(0.05)
    assert est._thread is None


@pytest.mark.parametrize("kwargs", [{"profile_ms": [1.0]}, {"quantile": 0.2}, {"window": 0}, {"refresh_s": 0}])
def test_estimator_rejects_bad_settings(kwargs: dict) -> None:
    with pytest.raises(PolicyError):
        LatencyEstimator(2, **kwargs)
