"""Low-rank students end to end on a tiny digits teacher: distillation recovers accuracy, latency search, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from distill.cli import main as cli_main
from distill.data import Dataset, load_dataset
from distill.errors import TrainingError
from distill.losses import make_loss
from distill.lowrank.factorize import plan_ranks
from distill.lowrank.latency import LatencyConfig
from distill.lowrank.student import LowRankConfig, lowrank_student, plan_for_latency
from distill.models import Classifier, ModelConfig, build_model
from distill.teacher import save_model
from distill.train import FitConfig, fit
from edge_runtime.bundle import load_bundle

FAST_TIMING = LatencyConfig(rounds=2, calls_per_round=5, warmup=2)


@pytest.fixture(scope="module")
def teacher_and_data() -> tuple[Classifier, Dataset]:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    dataset = load_dataset("digits", seed=0)
    model = build_model(ModelConfig(input_shape=dataset.input_shape, num_classes=10, family="mlp", width=96, depth=2))
    fit(model, dataset.x_train, dataset.y_train, make_loss("ce"), FitConfig(epochs=20, lr=3e-3, progress=False))
    return model.eval(), dataset


def test_distillation_recovers_what_the_truncation_lost(teacher_and_data: tuple[Classifier, Dataset]) -> None:
    teacher, dataset = teacher_and_data
    before = [p.detach().clone() for p in teacher.parameters()]
    student, report = lowrank_student(teacher, dataset, LowRankConfig(rank=6, epochs=15, lr=3e-3))
    assert report.teacher_accuracy > 0.9
    assert report.student_params < report.teacher_params
    assert report.init_accuracy < report.teacher_accuracy - 0.05  # rank 6 really cuts the teacher down
    assert report.student_accuracy > report.init_accuracy + 0.05  # ... and distillation wins most of it back
    assert report.student_accuracy >= report.teacher_accuracy - 0.08
    factored = [row for row in report.layers if row["factored"]]
    assert factored and all(row["rank"] == 6 for row in factored)
    assert report.layers[-1]["layer"] == "head" and not report.layers[-1]["factored"]  # the head stays dense
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))  # the teacher is untouched
    logits, features = student(torch.from_numpy(dataset.x_test[:5]))
    assert logits.shape == (5, 10) and features.shape == (5, teacher.feature_dim)


def test_energy_students_keep_the_requested_energy(teacher_and_data: tuple[Classifier, Dataset]) -> None:
    teacher, dataset = teacher_and_data
    _, report = lowrank_student(teacher, dataset, LowRankConfig(energy=0.6, epochs=0))
    assert report.energy == 0.6
    assert all(row["energy_kept"] >= 0.6 for row in report.layers)
    assert any(row["factored"] for row in report.layers)


def test_config_needs_exactly_one_rank_choice() -> None:
    with pytest.raises(TrainingError, match="exactly one"):
        LowRankConfig()
    with pytest.raises(TrainingError, match="exactly one"):
        LowRankConfig(energy=0.9, rank=4)
    with pytest.raises(TrainingError, match="energy"):
        LowRankConfig(energy=1.5)
    with pytest.raises(TrainingError, match="loss"):
        LowRankConfig(rank=2, loss="nope")
    with pytest.raises(TrainingError, match="speedup"):
        LowRankConfig(speedup=0.5)
    with pytest.raises(TrainingError, match="decreasing"):
        LowRankConfig(latency_ms=1.0, search="energy", ladder=(0.5, 0.9))
    with pytest.raises(TrainingError, match="whole numbers"):
        LowRankConfig(speedup=2.0, ladder=(8.5, 4))
    with pytest.raises(TrainingError, match="search"):
        LowRankConfig(speedup=2.0, search="width")


def test_latency_search_prefers_the_most_faithful_candidate(teacher_and_data: tuple[Classifier, Dataset]) -> None:
    teacher, dataset = teacher_and_data
    plans, energy, log, teacher_ms = plan_for_latency(
        teacher, dataset, latency_ms=1e4, search="energy", config=FAST_TIMING, ladder=(0.99, 0.5)
    )
    assert energy == 0.99  # a generous target keeps the most energy
    assert [row["energy"] for row in log] == [0.5, 0.99]  # the cheapest candidate is measured first
    assert all(row["p50_ms"] > 0 for row in log) and teacher_ms > 0
    assert [p.rank for p in plans] == [p.rank for p in plan_ranks(teacher, energy=0.99)]
    with pytest.raises(TrainingError, match="lower --speedup"):
        plan_for_latency(teacher, dataset, speedup=1e6, search="rank", config=FAST_TIMING, ladder=(2,))
    with pytest.raises(TrainingError, match="exactly one"):
        plan_for_latency(teacher, dataset, latency_ms=1.0, speedup=2.0)


def test_cli_writes_a_one_member_bundle(
    teacher_and_data: tuple[Classifier, Dataset], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    teacher, _ = teacher_and_data
    checkpoint = save_model(teacher, tmp_path / "teacher")
    out, report = tmp_path / "bundle", tmp_path / "report.json"
    code = cli_main(
        [
            "lowrank",
            "--data",
            "digits",
            "--teacher-dir",
            str(checkpoint),
            "--rank",
            "6",
            "--epochs",
            "2",
            "--out",
            str(out),
            "--json",
            str(report),
        ]
    )
    assert code == 0
    bundle = load_bundle(out)
    assert bundle.manifest.num_members == 1
    info = bundle.manifest.members[0].info
    assert info["method"] == "lowrank" and set(info["ranks"].values()) == {6}
    data = json.loads(report.read_text())
    assert data["student_params"] < data["teacher_params"]
    assert set(data["latency_ms"]) == {"teacher", "student"} and data["latency_ms"]["student"]["1"]["p50"] > 0
    assert "faster" in capsys.readouterr().out


def test_cli_rejects_two_rank_choices(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["lowrank", "--energy", "0.9", "--rank", "4", "--out", str(tmp_path / "b")])
    assert exit_info.value.code == 2
