"""B-DISTIL members sized by measured latency (distill.progressive.sizing): the rule, its fallbacks, its wiring."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import distill.progressive.sizing as sizing_module
from distill.data import Dataset, load_dataset
from distill.errors import TrainingError
from distill.losses import CrossEntropy
from distill.models import Classifier, ModelConfig, build_model
from distill.progressive import Candidate, ProgressiveConfig, default_candidates, progressive_ensemble
from distill.progressive.sizing import latency_candidates
from distill.train import FitConfig, fit
from edge_runtime.bundle import Preprocess


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 1, 8, 8)).astype(np.float32)
    y = (x[:, 0, :4].mean(axis=(1, 2)) > x[:, 0, 4:].mean(axis=(1, 2))).astype(np.int64)  # top half brighter
    path = tmp_path_factory.mktemp("data") / "halves.npz"
    np.savez(path, x_train=x[:300], y_train=y[:300], x_test=x[300:], y_test=y[300:])  # 30 validation rows: warns
    return load_dataset(path)


@pytest.fixture(scope="module")
def teacher(images: Dataset) -> Classifier:
    torch.manual_seed(0)
    model = build_model(ModelConfig(images.input_shape, images.num_classes, family="resnet", width=8, depth=2))
    fit(model, images.x_train, images.y_train, CrossEntropy(), FitConfig(epochs=3, lr=1e-2, progress=False))
    return model.eval()


def test_ladder_follows_the_measured_latencies(images: Dataset, teacher: Classifier) -> None:
    sizing = latency_candidates(teacher, images, 3, widths=(2, 4, 8), min_teacher_ms=0.0)
    assert sizing.basis == "latency"
    assert sizing.target_ms == pytest.approx(sizing.teacher_ms / 3)
    assert [row["width"] for row in sizing.measured] == [2, 4, 8]
    # the teacher's family and depth, only the width searched
    assert all(c.family == "resnet" and c.depth == 2 for c in sizing.candidates)
    widths = [c.width for c in sizing.candidates]
    assert widths == sorted(widths) and len(set(widths)) == len(widths)
    # rung 1: the widest width whose measured p50 is within the target, else the fastest one measured
    fits = [r["width"] for r in sizing.measured if r["p50_ms"] <= sizing.target_ms]
    fastest = min(sizing.measured, key=lambda r: r["p50_ms"])["width"]
    assert widths[0] == (max(fits) if fits else fastest)
    assert sizing.to_dict()["candidates"][0] == sizing.candidates[0].to_dict()


def test_fast_teacher_falls_back_to_the_macs_ladder(images: Dataset, teacher: Classifier) -> None:
    sizing = latency_candidates(teacher, images, 4, widths=(2, 4), min_teacher_ms=1e9)
    assert sizing.basis == "macs"
    assert sizing.candidates == default_candidates(images)
    assert "per-call floor" in sizing.note


def test_bad_requests_name_the_fix(images: Dataset, teacher: Classifier) -> None:
    with pytest.raises(TrainingError, match="members >= 1"):
        latency_candidates(teacher, images, 0)
    with pytest.raises(TrainingError, match="sizing 'time'"):
        ProgressiveConfig(sizing="time")


def test_ensemble_records_how_members_were_sized(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(12, 3))
    x = rng.normal(size=(900, 12)).astype(np.float32)
    y = (x @ w).argmax(1)
    data = Dataset(
        name="linear3",
        x_train=x[:600],
        y_train=y[:600],
        x_val=x[600:750],
        y_val=y[600:750],
        x_test=x[750:],
        y_test=y[750:],
        labels=("a", "b", "c"),
        preprocess=Preprocess(),
    )
    torch.manual_seed(0)
    teacher = build_model(ModelConfig(data.input_shape, data.num_classes, width=32, depth=1))
    fit(teacher, data.x_train, data.y_train, CrossEntropy(), FitConfig(epochs=10, lr=1e-2, progress=False))
    monkeypatch.setattr(sizing_module, "_widths", lambda template, teacher: [4, 8])  # two exports, not the full grid
    built = progressive_ensemble(teacher, data, ProgressiveConfig(members=1, sizing="latency", epochs=30, progress=False))
    sizing = built.report.settings["member_sizing"]
    assert sizing["basis"] == "latency" and [r["width"] for r in sizing["measured"]] == [4, 8]
    assert built.report.members[0].candidate in [Candidate(**c) for c in sizing["candidates"]]
    # an explicit ladder is used as given, and nothing is timed
    given = progressive_ensemble(
        teacher,
        data,
        ProgressiveConfig(members=1, sizing="latency", epochs=30, progress=False, candidates=(Candidate("mlp", 8, 1),)),
    )
    assert "member_sizing" not in given.report.settings
    assert given.report.members[0].candidate == Candidate("mlp", 8, 1)
