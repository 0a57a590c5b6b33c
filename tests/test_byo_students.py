"""A user's own teacher (plain logits, BatchNorm, residual blocks; grouped/depthwise/bias-free layers; the
same saved as .pt2 and loaded back) used by every method that rewrites layers: low-rank, FCPTS, DSD², channels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from byo_teachers import GroupedNet, SmallResNet, export_pt2, separable_images, trained
from distill.data import Dataset
from distill.exported import load_exported_module
from distill.lowrank import LowRankConfig, LowRankConv, LowRankLinear, factorize, lowrank_student, plan_ranks
from distill.sparse import (
    DSD2Config,
    FCPTSConfig,
    channel_student,
    fcpts_student,
    global_sparsity,
    recalibrate_batchnorm,
    run_dsd2,
)
from distill.train import accuracy, predict_logits

CHANCE = 0.25  # four balanced classes


@pytest.fixture(scope="module")
def data() -> Dataset:
    return separable_images(400)


@pytest.fixture(scope="module")
def resnet(data: Dataset) -> nn.Module:
    torch.manual_seed(0)
    teacher = trained(SmallResNet(width=16), data)
    assert accuracy(teacher, data.x_test, data.y_test) > 0.9
    return teacher


@pytest.fixture(scope="module")
def grouped(data: Dataset) -> nn.Module:
    torch.manual_seed(0)
    teacher = trained(GroupedNet(width=8), data)
    assert accuracy(teacher, data.x_test, data.y_test) > 0.9
    return teacher


@pytest.fixture(scope="module")
def loaded(resnet: nn.Module, data: Dataset, tmp_path_factory: pytest.TempPathFactory) -> nn.Module:
    return load_exported_module(export_pt2(resnet, tmp_path_factory.mktemp("pt2") / "teacher.pt2", data.x_train))


def _notes(report: Any) -> dict[str, str]:  # a LowRankReport or ChannelReport: both have .layers
    return {row["layer"]: row["note"] for row in report.layers}


def _full_rank(model: nn.Module) -> nn.Module:
    plans = [
        p.__class__(**{**p.__dict__, "factor": True}) if not p.note.startswith(("depthwise", "grouped", "not called")) else p
        for p in plan_ranks(model, rank=10_000, example=torch.zeros(2, 1, 8, 8))
    ]
    return factorize(model, plans).eval()


@pytest.mark.parametrize("which", ["resnet", "grouped", "loaded"])
def test_full_rank_factorisation_reproduces_the_teachers_logits(
    which: str, data: Dataset, request: pytest.FixtureRequest
) -> None:
    teacher = request.getfixturevalue(which)
    student = _full_rank(teacher)
    assert any(isinstance(m, (LowRankConv, LowRankLinear)) for m in student.modules())
    np.testing.assert_allclose(predict_logits(student, data.x_test), predict_logits(teacher, data.x_test), atol=1e-4)


@pytest.mark.parametrize("which", ["resnet", "loaded"])
@pytest.mark.parametrize("choice", [{"rank": 3}, {"energy": 0.6}])
def test_lowrank_students_of_a_plain_logits_teacher(
    which: str, choice: dict, data: Dataset, request: pytest.FixtureRequest
) -> None:
    teacher = request.getfixturevalue(which)
    student, report = lowrank_student(teacher, data, LowRankConfig(**choice, epochs=8, lr=1e-2, batch_size=32))
    factored = [row["layer"] for row in report.layers if row["factored"]]
    assert "blocks.0.conv1" in factored and isinstance(student.get_submodule("blocks.0.conv1"), LowRankConv)
    assert _notes(report)["head"].startswith("classifier head") and isinstance(student.get_submodule("head"), nn.Linear)
    assert report.student_params < report.teacher_params
    assert predict_logits(student, data.x_test[:3]).shape == (3, 4)
    assert report.student_accuracy > CHANCE + 0.3


def test_lowrank_reports_the_layers_it_cannot_factor(grouped: nn.Module, data: Dataset) -> None:
    student, report = lowrank_student(grouped, data, LowRankConfig(rank=2, epochs=8, lr=1e-2, batch_size=32))
    notes = _notes(report)
    assert notes["dw"].startswith("depthwise conv") and notes["grouped"].startswith("grouped conv")
    assert notes["unused"] == "not called by the model's forward" and notes["head"].startswith("classifier head")
    assert notes["fc"] == "" and isinstance(student.fc, LowRankLinear) and student.fc.up.bias is None
    assert type(student.dw) is nn.Conv2d and type(student.unused) is nn.Linear
    assert report.student_accuracy > CHANCE + 0.3


@pytest.mark.parametrize("which", ["resnet", "grouped", "loaded"])
def test_fcpts_sparsifies_any_teacher_to_the_target(which: str, data: Dataset, request: pytest.FixtureRequest) -> None:
    teacher = request.getfixturevalue(which)
    cfg = FCPTSConfig(target=0.5, iterations=40, batch_size=16, calibration_samples=64)
    student, report = fcpts_student(teacher, data, cfg=cfg)
    assert abs(report.final_global - 0.5) <= 0.005 and abs(global_sparsity(student) - 0.5) <= 0.005
    assert set(report.final_sparsities) >= {"blocks.0.conv1" if which != "grouped" else "dw", "head"}
    assert report.test_accuracy > CHANCE + 0.2


def test_fcpts_can_prune_layers_with_weights_above_one(resnet: nn.Module, data: Dataset) -> None:
    teacher = SmallResNet(width=16)
    teacher.load_state_dict(resnet.state_dict())
    with torch.no_grad():
        teacher.stem[0].weight.mul_(20.0 / teacher.stem[0].weight.abs().max())  # |w| up to 20
    cfg = FCPTSConfig(target=0.7, iterations=20, batch_size=16, calibration_samples=64, init="uniform", project=True)
    _, report = fcpts_student(teacher.eval(), data, cfg=cfg)
    assert report.final_sparsities["stem.0"] > 0.3 and abs(report.final_global - 0.7) <= 0.005


def test_fcpts_re_estimates_batchnorm_statistics_of_the_sparse_model(resnet: nn.Module, data: Dataset) -> None:
    cfg = FCPTSConfig(target=0.8, iterations=40, batch_size=16, calibration_samples=128)
    student, report = fcpts_student(resnet, data, cfg=cfg)
    assert report.recalibrated_bn == 5 and report.accuracy_before_recalibration is not None
    assert report.test_accuracy >= report.accuracy_before_recalibration
    assert not torch.equal(student.blocks[1].bn2.running_mean, resnet.blocks[1].bn2.running_mean)
    _, plain = fcpts_student(resnet, data, cfg=FCPTSConfig(**{**cfg.__dict__, "recalibrate_bn": False}))
    assert plain.recalibrated_bn == 0 and plain.test_accuracy == report.accuracy_before_recalibration


def test_recalibration_averages_the_inputs_statistics_with_dropout_off() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5), nn.BatchNorm1d(3)).eval()
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(256, 4)).astype(np.float32)
    assert recalibrate_batchnorm(model, x, batch_size=128) == 1
    assert not model.training and model[2].momentum == 0.1
    with torch.no_grad():
        h = model[0](torch.from_numpy(x))
    torch.testing.assert_close(model[2].running_mean, h.mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model[2].running_var, h.var(0), rtol=0.05, atol=1e-3)


@pytest.mark.parametrize("source", ["module", "pt2"])
def test_dsd2_prunes_a_users_module(source: str, data: Dataset, tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = DSD2Config(rounds=2, epochs=2, dense_epochs=3, lr=1e-2, batch_size=32, entropy_samples=64)
    model: nn.Module = SmallResNet(width=8)
    if source == "pt2":  # an untrained architecture given as a program: it trains and prunes the same way
        model = load_exported_module(export_pt2(model, tmp_path / "arch.pt2", data.x_train))
    result, student, dense = run_dsd2(data, model, cfg)
    sparsities = [r.sparsity for r in result.distilled]
    assert sparsities[0] == 0.0 and sparsities[1] == pytest.approx(0.2, abs=0.01) and sparsities[2] > sparsities[1]
    assert not any(hasattr(m, "weight_mask") for m in student.modules())  # masks baked into plain weights
    assert global_sparsity(student) == pytest.approx(result.distilled[result.picked_round].sparsity)
    assert np.isfinite(result.distilled[0].entropy) == (source == "module")  # the program's ReLUs are functional
    assert result.config["model"] == {"module": type(model).__name__}
    assert accuracy(student, data.x_test, data.y_test) > CHANCE + 0.3


@pytest.mark.parametrize("which", ["resnet", "grouped", "loaded"])
def test_channel_students_of_a_plain_logits_teacher(which: str, data: Dataset, request: pytest.FixtureRequest) -> None:
    teacher = request.getfixturevalue(which)
    student, report = channel_student(teacher, data, 0.5, epochs=40)
    assert report.kept["head"].startswith("classifier head") and report.layers["head"][0] == report.layers["head"][1] == 4
    assert report.params_shrunk < 0.5 * report.params_dense
    assert predict_logits(student, data.x_test[:2]).shape == (2, 4)
    assert report.accuracy_finetuned > 0.8 and report.accuracy_finetuned > report.accuracy_shrunk


class _Adapter(nn.Module):
    """What a caller may wrap around a user's module: an affine input map, then the module."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor(2.0))
        self.inner = inner

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.inner(x * self.scale / 2.0)}


def test_a_wrapped_teacher_with_mapping_outputs_works_for_every_method(resnet: nn.Module, data: Dataset) -> None:
    teacher = _Adapter(resnet).eval()
    student, report = lowrank_student(teacher, data, LowRankConfig(rank=3, epochs=2, lr=1e-2, batch_size=32))
    assert isinstance(student.get_submodule("inner.blocks.0.conv1"), LowRankConv)
    assert _notes(report)["inner.head"].startswith("classifier head") and set(student(torch.zeros(1, 1, 8, 8))) == {"logits"}
    _, fcpts = fcpts_student(teacher, data, cfg=FCPTSConfig(target=0.5, iterations=10, batch_size=16, calibration_samples=32))
    assert abs(fcpts.final_global - 0.5) <= 0.005
    logits = predict_logits(teacher, data.x_train)
    _, channels = channel_student(teacher, data, 0.5, epochs=1, teacher_logits=logits)
    assert channels.kept == {"inner.head": "classifier head: its outputs are the classes"}
    assert channels.layers["inner.blocks.0.conv1"] == [16, 8]
