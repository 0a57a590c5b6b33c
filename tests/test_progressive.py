"""B-DISTIL end to end on a tiny synthetic task: members, escalation, baselines, export, command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch

import distill.progressive.bdistil as bdistil
from distill.cli import main as cli_main
from distill.data import Dataset, load_dataset
from distill.errors import TrainingError
from distill.losses import CrossEntropy
from distill.models import Classifier, ModelConfig, build_model
from distill.progressive import (
    BaselineConfig,
    Candidate,
    Ensemble,
    ProgressiveConfig,
    chain_outputs,
    combined_logits,
    count_macs,
    no_resched_students,
    prefix_accuracies,
    progressive_ensemble,
    resched_ensemble,
    width_for_macs,
)
from distill.teacher import save_model
from distill.train import FitConfig, fit

# Members with one or two hidden units cannot fit a 4-class linear teacher alone: boosting has work to do.
TINY = (Candidate("mlp", 1, 1), Candidate("mlp", 2, 1))


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    w = np.random.default_rng(1).normal(size=(12, 4))
    x_train, x_test = rng.normal(size=(1500, 12)).astype(np.float32), rng.normal(size=(500, 12)).astype(np.float32)
    path = tmp_path_factory.mktemp("data") / "linear4.npz"
    np.savez(path, x_train=x_train, y_train=(x_train @ w).argmax(1), x_test=x_test, y_test=(x_test @ w).argmax(1))
    return path


@pytest.fixture(scope="module")
def dataset(data_file: Path) -> Dataset:
    return load_dataset(data_file)


@pytest.fixture(scope="module")
def teacher(dataset: Dataset) -> Classifier:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(ModelConfig(dataset.input_shape, dataset.num_classes, width=32, depth=1))
    fit(model, dataset.x_train, dataset.y_train, CrossEntropy(), FitConfig(epochs=15, lr=1e-2, progress=False))
    return model


@pytest.fixture(scope="module")
def ensemble(teacher: Classifier, dataset: Dataset) -> Ensemble:
    cfg = ProgressiveConfig(members=3, candidates=TINY[:1], epochs=20, batch_size=64, lr=1e-2, progress=False)
    return progressive_ensemble(teacher, dataset, cfg)


def test_members_are_bounded_scaled_and_sum_to_the_ensemble(ensemble: Ensemble, dataset: Dataset) -> None:
    members, connections, report = ensemble
    assert report.combine == "sum" and len(members) == 3
    # Each member first tries the previous member's features and escalates to all earlier ones.
    assert connections[0] == () and connections[1] == (0,) and connections[2] in ((1,), (0, 1))
    assert [list(c) for c in connections] == [r.attempts[-1]["connections"] for r in report.members]
    own, feats = chain_outputs(members, connections, dataset.x_val)
    for k, (member, row) in enumerate(zip(members, report.members)):
        assert float(member.scale) == pytest.approx(row.step) and row.step > 0
        assert np.abs(own[k]).max() < row.step  # eta * tanh(h): strictly inside the bound
        assert feats[k].shape == (len(dataset.x_val), member.feature_dim)
    prefixes = combined_logits(own, "sum")
    np.testing.assert_allclose(prefixes[-1], own[0] + own[1] + own[2], rtol=1e-6, atol=1e-6)
    for prefix, row in zip(prefixes, report.members):
        assert float((prefix.argmax(1) == dataset.y_val).mean()) == pytest.approx(row.val_accuracy)


def test_later_members_bring_the_ensemble_closer_to_the_teacher(ensemble: Ensemble, dataset: Dataset) -> None:
    rows = ensemble.report.members
    assert rows[-1].val_agreement > rows[0].val_agreement + 0.2
    assert rows[-1].residual_rms < rows[0].residual_rms
    test = prefix_accuracies(ensemble, dataset.x_test, dataset.y_test)
    assert test[-1] > test[0] + 0.2


def _scripted_edges(monkeypatch: pytest.MonkeyPatch, edges: list[float]) -> None:
    script: Iterator[float] = iter(edges)
    monkeypatch.setattr(bdistil, "weak_learning_edge", lambda *args: next(script))
    monkeypatch.setattr(bdistil, "line_search_step", lambda *args: 1.0)  # every scripted pass descends


def test_a_failed_check_escalates_connections_then_candidates_then_stops(
    monkeypatch: pytest.MonkeyPatch, teacher: Classifier, dataset: Dataset
) -> None:
    # Round 1: c1 fails, c2 passes. Round 2: c1 from member 1 fails, c2 passes. Round 3: c1 from member 2
    # fails, c1 from members 1 and 2 (the added connection) passes. Round 4: every rung fails.
    _scripted_edges(monkeypatch, [0.0, 0.9, 0.01, 0.9, -0.3, 0.9, 0.0, 0.0, 0.0, 0.0])
    cfg = ProgressiveConfig(members=5, candidates=TINY, epochs=1, gamma=0.05, progress=False)
    members, connections, report = progressive_ensemble(teacher, dataset, cfg)
    assert len(members) == 3
    assert [r.candidate for r in report.members] == [TINY[1], TINY[1], TINY[0]]
    assert connections == [(), (0,), (0, 1)]
    assert [len(r.attempts) for r in report.members] == [2, 2, 2]
    assert [a["accepted"] for a in report.members[2].attempts] == [False, True]
    assert "member 4" in report.stopped
    assert [(a["candidate"], a["connections"]) for a in report.stopped_attempts] == [
        ("mlp w1 d1", [2]),
        ("mlp w1 d1", [0, 1, 2]),
        ("mlp w2 d1", [2]),
        ("mlp w2 d1", [0, 1, 2]),
    ]


def test_no_weak_learner_at_all_is_an_error_naming_the_fix(
    monkeypatch: pytest.MonkeyPatch, teacher: Classifier, dataset: Dataset
) -> None:
    _scripted_edges(monkeypatch, [0.0, 0.0])
    with pytest.raises(TrainingError, match="lower --gamma"):
        progressive_ensemble(teacher, dataset, ProgressiveConfig(members=2, candidates=TINY, epochs=1, progress=False))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"members": 0}, "members"),
        ({"connect": "sideways"}, "connect"),
        ({"gamma": 2.5}, "gamma"),
        ({"epochs": -1}, "epochs"),
        ({"refine_loss": "mse"}, "refine_loss"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(TrainingError, match=message):
        ProgressiveConfig(**kwargs)


def test_resched_averages_independent_students(teacher: Classifier, dataset: Dataset) -> None:
    cfg = BaselineConfig(epochs=3, lr=1e-2, progress=False)
    members, connections, report = resched_ensemble(teacher, dataset, TINY, cfg)
    assert report.combine == "mean" and connections == [(), ()]
    own, _ = chain_outputs(members, connections, dataset.x_val)
    np.testing.assert_allclose(combined_logits(own, "mean")[1], (own[0] + own[1]) / 2, rtol=1e-6)
    assert [r.candidate for r in report.members] == list(TINY)
    with pytest.raises(TrainingError, match="loss"):
        BaselineConfig(loss="nope")


def test_no_resched_sizes_one_student_per_cumulative_budget(teacher: Classifier, dataset: Dataset) -> None:
    template = Candidate("mlp", 4, 1)
    unit = count_macs(build_model(template.model_config(dataset)), dataset.input_shape)
    assert width_for_macs(template, dataset, unit) == template
    students, report = no_resched_students(
        teacher, dataset, [unit, 2 * unit, 3 * unit], template, BaselineConfig(epochs=1, progress=False)
    )
    widths = [r.candidate.width for r in report.members]
    assert widths == [4, 8, 12]  # MLP cost is linear in width here
    assert [r.macs for r in report.members] == [unit, 2 * unit, 3 * unit]
    assert report.combine == "single" and len(students) == 3


def test_export_chains_in_onnx_runtime_exactly_like_torch(ensemble: Ensemble, dataset: Dataset, tmp_path: Path) -> None:
    from edge_runtime.bundle import load_bundle
    from edge_runtime.session import create_session
    from exporters import export_ensemble

    members, connections = ensemble.members[:2], ensemble.connections[:2]
    export_ensemble(
        members, dataset.task_spec(), tmp_path / "b", heldout=(dataset.x_test, dataset.y_test), connections=connections
    )
    bundle = load_bundle(tmp_path / "b")
    assert bundle.manifest.combine == "sum"
    assert [[c.member for c in m.connections] for m in bundle.manifest.members] == [[], [0]]
    sessions = [create_session(blob) for blob in bundle.member_bytes]
    x = dataset.x_test[:64]
    first = dict(zip([o.name for o in sessions[0].get_outputs()], sessions[0].run(None, {"x": x})))
    feed = {"x": x, "prev_logits": first["logits"], bundle.manifest.members[1].connections[0].input: first["features"]}
    second = dict(zip([o.name for o in sessions[1].get_outputs()], sessions[1].run(None, feed)))
    own, _ = chain_outputs(members, connections, x)
    np.testing.assert_allclose(first["logits"], own[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(second["logits"], own[0] + own[1], rtol=1e-4, atol=1e-4)


def test_command_writes_a_connected_bundle_and_prints_prefix_accuracy(
    data_file: Path, teacher: Classifier, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save_model(teacher, tmp_path / "teacher")
    out, report = tmp_path / "bundle", tmp_path / "report.json"
    argv = [
        "ensemble",
        "--data",
        str(data_file),
        "--teacher-dir",
        str(tmp_path / "teacher"),
        "--members",
        "2",
        "--epochs",
        "2",
        "--out",
        str(out),
        "--no-progress",
        "--json",
        str(report),
    ]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert "F_1" in printed and "F_2" in printed and "test accuracy" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["combine"] == "sum" and manifest["members"][1]["connections"][0]["member"] == 0
    assert manifest["members"][0]["info"]["candidate"]["family"] == "mlp"
    written = json.loads(report.read_text())
    assert written["method"] == "bdistil" and len(written["prefix_test_accuracy"]) == 2


def test_command_errors_are_one_line(
    data_file: Path, teacher: Classifier, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save_model(teacher, tmp_path / "teacher")
    base = [
        "ensemble",
        "--data",
        str(data_file),
        "--teacher-dir",
        str(tmp_path / "teacher"),
        "--out",
        str(tmp_path / "o"),
        "--no-progress",
    ]
    assert cli_main(base + ["--members", "0"]) == 1
    assert cli_main(base + ["--baseline", "resched", "--like", str(tmp_path / "missing")]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and "--members" in errors[0] and "does not exist" in errors[1]
    assert not (tmp_path / "o").exists()


def test_kl_step_scales_each_member_from_held_out_rows(
    monkeypatch: pytest.MonkeyPatch, teacher: Classifier, dataset: Dataset
) -> None:
    seen: list[tuple[int, ...]] = []

    def fake_kl_step(g: np.ndarray, ensemble: np.ndarray, f: np.ndarray) -> float:
        seen.append((g.shape[0], float(np.abs(ensemble).sum()) > 0))  # type: ignore[arg-type]
        return 0.75

    monkeypatch.setattr(bdistil, "kl_step", fake_kl_step)
    monkeypatch.setattr(bdistil, "line_search_step", lambda *args: pytest.fail("the cosh line search ran"))
    monkeypatch.setattr(bdistil, "weak_learning_edge", lambda *args: 1.0)  # every member passes the check
    cfg = ProgressiveConfig(members=2, candidates=TINY[1:], epochs=1, step="kl", progress=False)
    members, _, report = progressive_ensemble(teacher, dataset, cfg)
    n_val = len(dataset.x_val)
    assert seen == [(n_val, False), (n_val, True)]  # validation rows; F_0 = 0, then member 1's share
    assert [r.step for r in report.members] == [0.75, 0.75] and report.settings["step"] == "kl"
    with pytest.raises(TrainingError, match="step 'newton' is unknown"):
        ProgressiveConfig(step="newton")


def test_the_kd_refinement_trains_each_member_for_its_prefix_with_labels(
    monkeypatch: pytest.MonkeyPatch, teacher: Classifier, dataset: Dataset
) -> None:
    from distill.progressive.rounds import BoostedKD

    seen: list[tuple[int, bool]] = []
    real = BoostedKD.__call__

    def spy(self, member, packed, labels):  # type: ignore[no-untyped-def]
        seen.append((packed.shape[1], bool(torch.all(labels < dataset.num_classes))))
        return real(self, member, packed, labels)

    monkeypatch.setattr(BoostedKD, "__call__", spy)
    monkeypatch.setattr(bdistil, "weak_learning_edge", lambda *args: 1.0)  # every member passes the check
    cfg = ProgressiveConfig(members=2, candidates=TINY[1:], epochs=1, refine_epochs=1, refine_loss="kd", progress=False)
    _, _, report = progressive_ensemble(teacher, dataset, cfg)
    assert report.method == "bdistil+refined" and report.settings["refine_loss"] == "kd"
    c = dataset.num_classes
    assert seen and all(s == (2 * c, True) for s in seen)  # [teacher | prefix] logits and class labels, every batch
