"""Threshold calibration: the exact sweep against brute force, targets met on the data, saving."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import edge_runtime
from edge_runtime.bundle import load_bundle
from edge_runtime.calibrate import CalibrationTarget, calibrate, calibrate_prefixes, save_calibration, tradeoff_curve
from edge_runtime.ensemble import PrefixEvaluation
from edge_runtime.errors import InputError, PolicyError
from onnx_members import make_bundle


def _brute_force(ev: PrefixEvaluation, y: np.ndarray, t: float) -> tuple[float, float]:
    k_all, n = ev.entropy.shape
    exit_at = np.full(n, k_all - 1)
    for i in range(n):
        for k in range(k_all - 1):
            if ev.entropy[k, i] <= t:
                exit_at[i] = k
                break
    labels = ev.labels[exit_at, np.arange(n)]
    return float((labels == y).mean()), float((exit_at + 1).mean())


def _random_prefixes(k_all: int, n: int, seed: int, ties: bool = False) -> tuple[PrefixEvaluation, np.ndarray]:
    rng = np.random.default_rng(seed)
    entropy = rng.random((k_all, n)).astype(np.float32)
    if ties:
        entropy = np.round(entropy, 1)  # many equal thresholds, and exact zeros
    probs = rng.random((k_all, n, 4)).astype(np.float32)
    return PrefixEvaluation(probs, entropy, np.zeros(k_all)), rng.integers(0, 4, n)


@pytest.mark.parametrize("k_all, ties", [(1, False), (2, False), (4, False), (5, True)])
def test_curve_matches_brute_force_at_every_point(k_all: int, ties: bool) -> None:
    ev, y = _random_prefixes(k_all, 120, seed=k_all, ties=ties)
    curve = tradeoff_curve(ev, y)
    assert np.all(np.diff(curve.threshold) > 0)
    assert np.all(np.diff(curve.mean_members) <= 0)  # higher threshold, earlier exits
    for i in range(len(curve.threshold)):
        for t in (curve.threshold[i], curve.stored_threshold(i)):
            assert (curve.accuracy[i], curve.mean_members[i]) == pytest.approx(_brute_force(ev, y, t))
    assert curve.full_accuracy == pytest.approx(_brute_force(ev, y, -1.0)[0])


@pytest.mark.parametrize("drop", [0.0, 0.5, 5.0, 30.0])
def test_accuracy_target_holds_for_every_threshold_up_to_the_choice(drop: float) -> None:
    ev, y = _random_prefixes(4, 400, seed=7)
    cal = calibrate_prefixes(ev, y, CalibrationTarget(accuracy_drop=drop))
    full = _brute_force(ev, y, -1.0)[0]
    acc, members = _brute_force(ev, y, cal.entropy_threshold)
    assert (acc, members) == pytest.approx((cal.accuracy, cal.mean_members))
    curve = tradeoff_curve(ev, y)
    upto = curve.threshold <= cal.entropy_threshold
    assert np.all(curve.accuracy[upto] >= full - drop / 100 - 1e-12)
    # And it is the largest such threshold: the next point breaks the target.
    after = np.flatnonzero(~upto)
    if len(after):
        assert curve.accuracy[after[0]] < full - drop / 100


@pytest.mark.parametrize("m", [1.0, 1.7, 2.5, 4.0])
def test_mean_members_target(m: float) -> None:
    ev, y = _random_prefixes(4, 300, seed=3)
    cal = calibrate_prefixes(ev, y, CalibrationTarget.members(m))
    acc, members = _brute_force(ev, y, cal.entropy_threshold)
    assert members <= m + 1e-9
    assert (acc, members) == pytest.approx((cal.accuracy, cal.mean_members))
    curve = tradeoff_curve(ev, y)
    assert acc == pytest.approx(curve.accuracy[curve.mean_members <= m + 1e-9].max())


def test_calibration_on_a_real_bundle_meets_its_target_through_predict(connected_bundle: Path) -> None:
    runtime = edge_runtime.load(connected_bundle, entropy_threshold="off")
    x = np.random.default_rng(5).normal(size=(300, 1, 4, 4)).astype(np.float32)
    y = runtime.evaluate_prefixes(x).labels[-1].copy()
    y[::10] = (y[::10] + 1) % 3  # the full ensemble is right on 90%
    cal = calibrate(runtime, x, y, CalibrationTarget(accuracy_drop=2.0))
    answers = runtime.predict(x, entropy_threshold=cal.entropy_threshold)
    accuracy = np.mean([a.label for a in answers] == y)
    mean_members = np.mean([a.members_used for a in answers])
    assert accuracy >= 0.9 - 0.02
    assert (accuracy, mean_members) == pytest.approx((cal.accuracy, cal.mean_members))
    assert mean_members < 3  # the threshold does save members on this data
    assert 2 <= len(cal.curve) <= 65
    assert "accuracy within 2 point(s)" in cal.target


def test_save_calibration_updates_the_manifest_atomically(tiny_bundle: Path) -> None:
    runtime = edge_runtime.load(tiny_bundle)
    x = np.random.default_rng(1).normal(size=(50, 1, 4, 4)).astype(np.float32)
    cal = calibrate(runtime, x, runtime.evaluate_prefixes(x).labels[-1])
    save_calibration(tiny_bundle, cal)
    assert load_bundle(tiny_bundle).manifest.calibration == cal
    assert edge_runtime.load(tiny_bundle).entropy_threshold == cal.entropy_threshold
    left = sorted(p.name for p in tiny_bundle.iterdir() if p.name != ".manifest.json.lock")  # the update lock stays
    assert left == ["manifest.json", "member_1.onnx", "member_2.onnx", "member_3.onnx"]


@pytest.mark.parametrize(
    "y, message",
    [(np.zeros(49, int), "labels of shape"), (np.full(50, 3), r"\[0, 2\]"), (np.full(50, 0.5), "integer")],
)
def test_bad_labels(tiny_bundle: Path, y: np.ndarray, message: str) -> None:
    runtime = edge_runtime.load(tiny_bundle)
    x = np.zeros((50, 1, 4, 4), np.float32)
    with pytest.raises(InputError, match=message):
        calibrate(runtime, x, y)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"accuracy_drop": None},
        {"accuracy_drop": -1},
        {"accuracy_drop": 1, "max_mean_members": 2},
        {"accuracy_drop": None, "max_mean_members": 0.5},
    ],
)
def test_targets_are_validated(kwargs: dict) -> None:
    with pytest.raises(PolicyError):
        CalibrationTarget(**kwargs)


def test_uncalibrated_bundle_from_make_bundle_has_no_threshold(tmp_path: Path) -> None:
    assert edge_runtime.load(make_bundle(tmp_path / "b")).entropy_threshold is None
