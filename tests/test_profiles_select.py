"""Choosing what to deploy: candidates, accuracy against the runtime's real early exit, front, choice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import edge_runtime
from onnx_members import make_bundle
from profiles import (
    Candidate,
    MeasureConfig,
    SelectionError,
    choose,
    evaluate_candidates,
    find_profile,
    pareto_front,
    plot_selection,
    profile_bundle,
    select,
    store_profile,
)

FAST = MeasureConfig(min_queries=20, min_seconds=0.0, warmup_queries=2, batch=2, pool=4, memory_probe=False)


@pytest.fixture
def calibrated(tmp_path: Path) -> Path:
    """Three members growing in confidence, calibrated at entropy 0.6, with a stored profile."""
    bundle = make_bundle(tmp_path / "calibrated", num_members=3, calibration=0.6, scales=[1.0, 2.0, 3.0])
    store_profile(bundle, profile_bundle(bundle, FAST))
    return bundle


def _validation(bundle: Path, n: int = 120, noise: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and labels: the full ensemble's answers, a fraction replaced at random."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, 1, 4, 4)).astype(np.float32)
    y = edge_runtime.load(bundle, entropy_threshold="off", warmup=0).evaluate_prefixes(x).labels[-1].copy()
    flip = rng.random(n) < noise
    y[flip] = rng.integers(0, 3, int(flip.sum()))
    return x, y


def test_ensemble_gives_each_prefix_and_its_threshold(calibrated: Path) -> None:
    x, y = _validation(calibrated)
    candidates = evaluate_candidates([calibrated], x, y, measure=FAST)
    assert [(c.kind, c.members) for c in candidates] == [("prefix", 1), ("prefix", 2), ("prefix", 3), ("threshold", 3)]
    truth = edge_runtime.load(calibrated, entropy_threshold="off", warmup=0).evaluate_prefixes(x).accuracy(y)
    assert [c.accuracy for c in candidates[:3]] == pytest.approx(list(truth))
    profile = find_profile(calibrated)
    for c in candidates[:3]:
        assert c.latency_ms["p50"] == profile["prefixes"][c.members - 1]["latency_ms"]["p50"]
        assert c.mean_members == c.members
    assert candidates[0].size_bytes < candidates[1].size_bytes < candidates[2].size_bytes


def test_threshold_candidate_matches_the_runtimes_real_early_exit(calibrated: Path) -> None:
    x, y = _validation(calibrated)
    threshold = evaluate_candidates([calibrated], x, y, measure=FAST)[-1]
    runtime = edge_runtime.load(calibrated, warmup=0)
    answers = [runtime.predict(row, entropy_threshold=0.6)[0] for row in x]
    assert threshold.threshold == pytest.approx(0.6)
    assert threshold.accuracy == pytest.approx(np.mean([a.label == t for a, t in zip(answers, y)]))
    assert threshold.mean_members == pytest.approx(np.mean([a.members_used for a in answers]))
    assert 1 < threshold.mean_members < 3  # the test data really exercises early exit


def test_missing_profile_is_measured_and_stored_only_when_asked(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "fresh", num_members=2)
    x, y = _validation(bundle)
    notes: list[str] = []
    evaluate_candidates([bundle], x, y, measure=FAST, store=False, notes=notes)
    assert find_profile(bundle) is None and "not stored" in notes[0]
    evaluate_candidates([bundle], x, y, measure=FAST, store=True)
    assert find_profile(bundle) is not None


def _candidate(name: str, accuracy: float, p50: float, memory: float = 50.0) -> Candidate:
    latency = {"p50": p50, "p90": p50 * 1.5, "p95": p50 * 2, "p99": p50 * 3}
    return Candidate(name, "b", "prefix", 1, 1.0, None, accuracy, latency, memory, 100)


def test_pareto_front_drops_only_dominated_candidates() -> None:
    cands = [
        _candidate("fast", 0.80, 1.0),
        _candidate("slow-better", 0.90, 3.0),
        _candidate("dominated", 0.85, 3.5),
        _candidate("tie-a", 0.88, 2.0),
        _candidate("tie-b", 0.88, 2.0),
    ]
    front = {c.name for c in pareto_front(cands) if c.pareto}
    assert front == {"fast", "slow-better", "tie-a", "tie-b"}


def test_choice_is_the_most_accurate_that_fits() -> None:
    cands = pareto_front(
        [
            _candidate("fast", 0.80, 1.0, memory=40),
            _candidate("mid", 0.88, 2.0, memory=60),
            _candidate("best", 0.90, 3.0, memory=90),
        ]
    )
    assert choose(cands).name == "best"
    assert choose(cands, budget_ms=3.1, quantile="p90").name == "mid"  # best's p90 is 4.5
    assert choose(cands, budget_ms=3.1, quantile="p50").name == "best"
    assert choose(cands, memory_mb=50).name == "fast"
    with pytest.raises(SelectionError, match="fastest, fast"):
        choose(cands, budget_ms=0.5)
    with pytest.raises(SelectionError, match="quantile"):
        choose(cands, quantile="p75")
    with pytest.raises(SelectionError, match="positive"):
        choose(cands, budget_ms=0)


def test_select_marks_front_and_choice_over_several_bundles(calibrated: Path, tmp_path: Path) -> None:
    student = make_bundle(tmp_path / "student", num_members=1, hidden=8)
    x, y = _validation(calibrated)
    selection = select([calibrated, student], x, y, measure=FAST)
    names = [c.name for c in selection.candidates]
    assert len(names) == 5 and len(set(names)) == 5
    assert selection.chosen.accuracy == max(c.accuracy for c in selection.candidates)
    assert selection.chosen.pareto
    assert set(selection.to_dict()["front"]) == {c.name for c in selection.candidates if c.pareto}


@pytest.mark.parametrize(
    "labels, message",
    [(np.zeros(5, np.int64), "one integer label per row"), (np.full(120, 7), "3 classes"), (np.full(120, 0.5), "integer")],
)
def test_bad_labels_say_what_to_fix(calibrated: Path, labels: np.ndarray, message: str) -> None:
    x, _ = _validation(calibrated)
    with pytest.raises(SelectionError, match=message):
        evaluate_candidates([calibrated], x, labels, measure=FAST)


def test_plot_is_written_or_skipped_with_one_line(calibrated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = _validation(calibrated)
    selection = select([calibrated], x, y, budget_ms=1.0, measure=FAST)
    assert plot_selection(selection, tmp_path / "front.png") is None
    assert (tmp_path / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)  # as if not installed
    note = plot_selection(selection, tmp_path / "none.png")
    assert note is not None and "matplotlib" in note and "\n" not in note
    assert not (tmp_path / "none.png").exists()


def test_profile_with_other_thread_settings_is_measured_again(calibrated: Path) -> None:
    from edge_runtime.session import SessionConfig

    x, y = _validation(calibrated)
    notes: list[str] = []
    evaluate_candidates([calibrated], x, y, measure=FAST, notes=notes)
    assert notes == []  # the stored profile fits
    evaluate_candidates([calibrated], x, y, session_config=SessionConfig(intra_op_threads=2), measure=FAST, notes=notes)
    assert "other session settings" in notes[0]
    assert find_profile(calibrated)["settings"]["intra_op_threads"] == 2
