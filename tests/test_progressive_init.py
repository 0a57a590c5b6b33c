"""B-DISTIL members initialised from the teacher (init="teacher"): pruned copies, keep sizing, baselines, export, CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import distill.progressive.bdistil as bdistil
import distill.progressive.sizing as sizing_module
import edge_runtime
from distill.cli import main as cli_main
from distill.data import Dataset, load_dataset
from distill.errors import TrainingError
from distill.losses import CrossEntropy
from distill.models import Classifier, ModelConfig, build_model
from distill.progressive import (
    BaselineConfig,
    Candidate,
    ProgressiveConfig,
    PrunedCandidate,
    candidate_from_dict,
    chain_outputs,
    combined_logits,
    count_macs,
    no_resched_students,
    progressive_ensemble,
    resched_ensemble,
)
from distill.progressive.inherit import ROUND_TO, InheritedClassifier, build_student, pruned_teacher, start_head
from distill.progressive.sizing import keep_candidates
from distill.sparse.structured import shrink_channels
from distill.teacher import save_model
from distill.train import FitConfig, fit

HALF = PrunedCandidate(0.5)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 1, 8, 8)).astype(np.float32)
    score = np.stack([x[:, 0, :4].mean((1, 2)), x[:, 0, 4:].mean((1, 2)), x[:, 0, :, :4].mean((1, 2))], axis=1)
    y = score.argmax(1)  # which of three regions is brightest
    path = tmp_path_factory.mktemp("data") / "regions.npz"
    np.savez(path, x_train=x[:400], y_train=y[:400], x_test=x[400:], y_test=y[400:])
    return path


@pytest.fixture(scope="module")
def images(data_file: Path) -> Dataset:
    return load_dataset(data_file)


@pytest.fixture(scope="module")
def teacher(images: Dataset) -> Classifier:
    torch.manual_seed(0)
    model = build_model(ModelConfig(images.input_shape, images.num_classes, family="resnet", width=8, depth=2))
    fit(model, images.x_train, images.y_train, CrossEntropy(), FitConfig(epochs=4, lr=1e-2, progress=False))
    return model.eval()


def _cfg(**kwargs: Any) -> ProgressiveConfig:
    base: dict[str, Any] = dict(members=2, init="teacher", candidates=(HALF,), gamma=0.0, epochs=1, lr=1e-3, progress=False)
    return ProgressiveConfig(**{**base, **kwargs})


def _convs(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_members_start_as_pruned_copies_of_the_teacher(
    images: Dataset, teacher: Classifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    starts: list[np.ndarray] = []
    fit_for_real = bdistil._fit

    def record_then_fit(model: Any, n: int, *args: Any, **kwargs: Any) -> None:
        with torch.no_grad():
            model.eval()
            starts.append(model(torch.arange(n))[0].numpy())  # the raw h on the training rows, before any step
        fit_for_real(model, n, *args, **kwargs)

    monkeypatch.setattr(bdistil, "_fit", record_then_fit)
    built = progressive_ensemble(teacher, images, _cfg(first_head="keep", head_start="zero"))
    assert len(built.members) == 2 and built.connections == [(), ()]
    pruned = shrink_channels(teacher, 0.5, images.x_train[:2])
    with torch.no_grad():
        expected = pruned(torch.from_numpy(images.x_train))[0].numpy()
    np.testing.assert_allclose(starts[0], expected, rtol=1e-5, atol=1e-5)  # member 1: the pruned teacher's logits
    np.testing.assert_array_equal(starts[1], 0.0)  # member 2, head_start="zero": h = 0
    for member, row in zip(built.members, built.report.members):
        assert isinstance(member.body, InheritedClassifier) and row.candidate == HALF
        assert _convs(member.body) == _convs(pruned) and sum(_convs(pruned)) < sum(_convs(teacher))
    assert built.report.members[1].head_scale == 0.0 and built.report.members[0].head_scale == 1.0
    settings = built.report.to_dict()["settings"]
    assert settings["init"] == "teacher" and settings["connect"] == "none"
    # the default: member 1's head rescaled to the barrier's target, so h starts at s * the pruned teacher's logits
    starts.clear()
    rescaled = progressive_ensemble(teacher, images, _cfg(members=1))
    scale = rescaled.report.members[0].head_scale
    assert scale is not None and scale > 0 and scale != 1.0
    np.testing.assert_allclose(starts[0], scale * expected, rtol=1e-4, atol=1e-5)
    assert built.report.to_dict()["members"][0]["candidate"] == {"init": "teacher", "keep": 0.5}


def test_head_starts_scale_the_classifier_head(images: Dataset, teacher: Classifier) -> None:
    x = images.x_train[:64]
    logits = pruned_teacher(teacher, 0.5, images)(torch.from_numpy(x))[0].detach().numpy()
    target = 0.3 * logits + np.random.default_rng(0).normal(size=logits.shape) * 0.01
    for mode, expected in (("keep", 1.0), ("zero", 0.0), ("rescale", 0.3)):
        body = pruned_teacher(teacher, 0.5, images)
        scale = start_head(body, mode, x, target, images)
        assert scale == pytest.approx(expected, abs=0.01)
        with torch.no_grad():
            h = body(torch.from_numpy(x))[0].numpy()
        np.testing.assert_allclose(h, scale * logits, rtol=1e-4, atol=1e-5)  # the head's weights and bias scaled
    with pytest.raises(TrainingError, match="head_start 'half'"):
        start_head(pruned_teacher(teacher, 0.5, images), "half", x, target, images)


def _fake_timing(p50: dict[str, float], monkeypatch: pytest.MonkeyPatch) -> Any:
    """Fixed p50s by model name; exports skipped (the fake never runs them)."""
    import exporters

    monkeypatch.setattr(exporters, "export_onnx", lambda model, example: b"")

    def measure(blobs: dict[str, bytes], x: np.ndarray, config: Any) -> dict[str, dict[int, dict[str, float]]]:
        return {name: {1: {"p50": p50[name]}} for name in blobs}

    return measure


def test_keep_ratios_follow_the_measured_latencies(images: Dataset, teacher: Classifier, monkeypatch: pytest.MonkeyPatch) -> None:
    p50 = {"teacher": 1.0, "k0.25": 0.2, "k0.5": 0.3, "k0.75": 0.45, "k0.9": 0.6}
    monkeypatch.setattr(sizing_module, "measure_side_by_side", _fake_timing(p50, monkeypatch))
    sizing = keep_candidates(teacher, images, 3, keeps=(0.25, 0.5, 0.75, 0.9), basis="latency", round_to=None)
    # target 1/3 ms: rung 1 the largest keep within it, then within 1.5x (0.5 ms) and 2x (0.667 ms)
    assert sizing.basis == "latency" and sizing.target_ms == pytest.approx(1 / 3)
    assert sizing.candidates == (PrunedCandidate(0.5), PrunedCandidate(0.75), PrunedCandidate(0.9))
    assert [r["p50_ms"] for r in sizing.measured] == [0.2, 0.3, 0.45, 0.6]
    assert sizing.latency_of(PrunedCandidate(0.75)) == 0.45
    # nothing within the target: the fastest keep, once
    slow = {**p50, "k0.25": 0.5, "k0.5": 0.6, "k0.75": 0.8, "k0.9": 0.9}
    monkeypatch.setattr(sizing_module, "measure_side_by_side", _fake_timing(slow, monkeypatch))
    assert keep_candidates(teacher, images, 4, keeps=(0.25, 0.5, 0.75, 0.9), basis="latency", round_to=None).candidates[
        0
    ] == PrunedCandidate(0.25)
    # by MACs: the largest keep within teacher MACs / K
    by_macs = keep_candidates(teacher, images, 4, keeps=(0.25, 0.5, 0.75), basis="macs")
    target = count_macs(teacher, images.input_shape) / 4
    fits = [r["keep"] for r in by_macs.measured if r["macs"] <= target]
    assert by_macs.basis == "macs" and by_macs.candidates[0].keep == max(fits)


def test_members_sized_by_latency_keep_whole_blocks_of_channels(images: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    wide = build_model(ModelConfig(images.input_shape, images.num_classes, family="resnet", width=32, depth=2)).eval()
    p50 = {"teacher": 1.0, "k0.3": 0.2, "k0.5": 0.3, "k0.75": 0.45}
    monkeypatch.setattr(sizing_module, "measure_side_by_side", _fake_timing(p50, monkeypatch))
    sizing = keep_candidates(wide, images, 3, keeps=(0.1, 0.3, 0.35, 0.5, 0.75), basis="latency")
    # 0.3 and 0.35 of 32 channels both round to 8: one copy, timed once under the smaller keep; 0.1 rounds some
    # group to no channel, which Torch-Pruning then leaves whole: more MACs than 0.3, so not a rung
    assert [r["keep"] for r in sizing.measured] == [0.3, 0.5, 0.75] and sizing.settings["round_to"] == ROUND_TO
    assert sizing.candidates == tuple(PrunedCandidate(k, ROUND_TO) for k in (0.5, 0.75))
    for candidate in sizing.candidates:
        assert candidate_from_dict(candidate.to_dict()) == candidate and "(x8)" in candidate.describe()
        assert all(w % ROUND_TO == 0 for w in _convs(build_student(candidate, images, wide)))
    exact = keep_candidates(wide, images, 3, keeps=(0.3, 0.35), basis="macs")  # the MACs basis prunes exactly
    assert exact.settings["round_to"] is None and all(c.round_to is None for c in exact.candidates)
    assert candidate_from_dict({"init": "teacher", "keep": 0.5}) == PrunedCandidate(0.5)  # reports written before


def test_ensemble_reports_each_members_keep_and_latency(
    images: Dataset, teacher: Classifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    p50 = {"teacher": 1.0, "k0.25": 0.4, "k0.5": 0.6}
    monkeypatch.setattr(sizing_module, "measure_side_by_side", _fake_timing(p50, monkeypatch))
    sizing = keep_candidates(teacher, images, 2, keeps=(0.25, 0.5), basis="latency", round_to=None)
    assert sizing.candidates == (PrunedCandidate(0.25), PrunedCandidate(0.5))
    asked: list[Any] = []
    monkeypatch.setattr(bdistil, "keep_candidates", lambda *a, **k: asked.append(k) or sizing)
    built = progressive_ensemble(teacher, images, _cfg(members=1, candidates=(), sizing="latency"))
    assert asked == [{"basis": "latency"}]
    member = built.report.to_dict()["members"][0]
    assert member["candidate"] == {"init": "teacher", "keep": 0.25} and member["latency_ms"] == 0.4
    assert built.report.settings["member_sizing"]["basis"] == "latency"


def test_baselines_get_the_same_initialisation(images: Dataset, teacher: Classifier) -> None:
    cfg = BaselineConfig(epochs=1, progress=False)
    rs = resched_ensemble(teacher, images, [HALF, PrunedCandidate(0.75)], cfg)
    pruned = shrink_channels(teacher, 0.5, images.x_train[:2])
    assert all(isinstance(m, InheritedClassifier) for m in rs.members)
    assert _convs(rs.members[0]) == _convs(pruned) and rs.report.members[1].candidate == PrunedCandidate(0.75)
    unit = rs.report.members[0].macs
    students, report = no_resched_students(teacher, images, [unit, 3 * unit], HALF, cfg)
    keeps = [m.candidate.keep for m in report.members]
    assert report.members[0].macs == unit and keeps[1] > keeps[0]  # keep 0.5's cost is hit exactly (channels are whole)
    assert all(isinstance(s, InheritedClassifier) for s in students)
    assert abs(report.members[1].macs - 3 * unit) < abs(count_macs(teacher, images.input_shape) - 3 * unit)


def test_export_runs_in_onnx_runtime_like_torch(images: Dataset, teacher: Classifier, tmp_path: Path) -> None:
    from exporters import export_ensemble

    built = progressive_ensemble(teacher, images, _cfg())
    rs = resched_ensemble(teacher, images, [HALF, HALF], BaselineConfig(epochs=1, progress=False))
    x = images.x_test
    for name, ensemble, combine in (("bdistil", built, "sum"), ("resched", rs, "mean")):
        export_ensemble(
            ensemble.members,
            images.task_spec(),
            tmp_path / name,
            heldout=(x, images.y_test),
            connections=ensemble.connections,
            combine=combine,
        )
        own, _ = chain_outputs(ensemble.members, ensemble.connections, x)
        expected = combined_logits(own, combine)
        prefixes = edge_runtime.load(tmp_path / name, warmup=0).evaluate_prefixes(images.raw(x))
        for t in range(len(own)):
            probs = torch.softmax(torch.from_numpy(expected[t]), dim=1).numpy()
            np.testing.assert_allclose(prefixes.probs[t], probs, atol=1e-4)


def test_command_builds_teacher_initialised_members_and_baselines(
    data_file: Path, teacher: Classifier, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save_model(teacher, tmp_path / "teacher")
    base = ["ensemble", "--data", str(data_file), "--teacher-dir", str(tmp_path / "teacher"), "--members", "2"]
    base += ["--epochs", "1", "--gamma", "0", "--size-by", "macs", "--no-progress"]
    built = ["--init", "teacher", "--step", "kl", "--refine-epochs", "1", "--refine-loss", "kd"]
    built += ["--out", str(tmp_path / "bd"), "--json", str(tmp_path / "r.json")]
    assert cli_main([*base, *built]) == 0
    manifest = json.loads((tmp_path / "bd" / "manifest.json").read_text())
    assert all(m["info"]["candidate"]["init"] == "teacher" and not m["connections"] for m in manifest["members"])
    settings = json.loads((tmp_path / "r.json").read_text())["settings"]
    assert (settings["init"], settings["step"], settings["refine_epochs"], settings["refine_loss"]) == ("teacher", "kl", 1, "kd")
    like = ["--baseline", "resched", "--like", str(tmp_path / "bd"), "--out", str(tmp_path / "rs")]
    assert cli_main([*base, *like]) == 0
    rs = json.loads((tmp_path / "rs" / "manifest.json").read_text())
    assert [m["info"]["candidate"] for m in rs["members"]] == [m["info"]["candidate"] for m in manifest["members"]]
    capsys.readouterr()
    # a teacher-initialised baseline needs the bundle it copies; connections are refused
    assert cli_main([*base, "--init", "teacher", "--baseline", "resched", "--out", str(tmp_path / "x")]) == 1
    assert cli_main([*base, "--init", "teacher", "--connect", "previous", "--out", str(tmp_path / "x")]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and "--like" in errors[0] and "connect='none'" in errors[1]
    assert not (tmp_path / "x").exists()


class _HardCodedWidth(nn.Module):
    """A forward that hard-codes its channel count: Torch-Pruning's copy no longer runs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv2d(1, 8, 3, padding=1), nn.Linear(8 * 64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).view(len(x), 8 * 64))


def test_errors_name_the_fix(images: Dataset) -> None:
    with pytest.raises(TrainingError, match=r"--init scratch"):
        progressive_ensemble(_HardCodedWidth(), images, _cfg())
    with pytest.raises(TrainingError, match="connect='none'"):
        ProgressiveConfig(init="teacher", connect="previous")
    with pytest.raises(TrainingError, match="PrunedCandidate instances"):
        ProgressiveConfig(init="teacher", candidates=(Candidate("mlp", 4),))
    with pytest.raises(TrainingError, match="init 'pretrained'"):
        ProgressiveConfig(init="pretrained")
    with pytest.raises(TrainingError, match="head_start 'half'"):
        ProgressiveConfig(init="teacher", head_start="half")
    with pytest.raises(TrainingError, match=r"in \(0, 1\]"):
        PrunedCandidate(0.0)
    assert ProgressiveConfig().connect == "previous" and ProgressiveConfig(init="teacher").connect == "none"
    assert candidate_from_dict(HALF.to_dict()) == HALF
    assert candidate_from_dict(Candidate("mlp", 4).to_dict()) == Candidate("mlp", 4)


def _anytime_value(monkeypatch: pytest.MonkeyPatch, script: str = "anytime_value") -> Any:
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{script}.py"
    spec = importlib.util.spec_from_file_location(f"{script}_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look their module up there
    monkeypatch.setattr(sys, "path", list(sys.path))  # it puts its checkout first
    spec.loader.exec_module(module)
    return module


def test_benchmark_rebuilds_only_the_named_bundles(
    images: Dataset, teacher: Classifier, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse
    from types import SimpleNamespace

    bench = _anytime_value(monkeypatch)
    args = argparse.Namespace(
        sizing="macs", init="teacher", step="kl", refine_epochs=0, refine_loss="logits", seed=0, keep=0.5, lowrank_speedup=2.0
    )
    loaded, sched, timings = SimpleNamespace(module=teacher), bench.Schedule(limit_train=None, epochs=1), {}
    paths, _, reports = bench.build(images, loaded, sched, 2, args, tmp_path, timings, frozenset({"bdistil"}), {"old": 1})
    assert set(paths) == {"bdistil"} and set(reports) == {"old", "bdistil"}
    (tmp_path / "no_resched_t9").mkdir()  # left by an earlier, longer ensemble
    earlier = json.loads((tmp_path / "reports.json").read_text())
    paths, _, reports = bench.build(
        images, loaded, sched, 2, args, tmp_path, timings, frozenset({"resched", "no_resched"}), earlier
    )
    k = len(reports["bdistil"]["members"])
    assert set(paths) == {"resched", *(f"no_resched_t{t + 1}" for t in range(k))} and not (tmp_path / "no_resched_t9").exists()
    assert json.loads((tmp_path / "reports.json").read_text()).keys() == {"old", "bdistil", "resched", "no_resched"}
    assert [m["candidate"] for m in reports["resched"]["members"]] == [m["candidate"] for m in reports["bdistil"]["members"]]
    assert not (tmp_path / "teacher").exists()
    with pytest.raises(SystemExit, match="--init scratch"):  # baselines of a pruned ensemble, asked from scratch
        bench.build(
            images,
            loaded,
            sched,
            2,
            argparse.Namespace(**{**vars(args), "init": "scratch"}),
            tmp_path,
            {},
            frozenset({"resched"}),
            earlier,
        )
    with pytest.raises(SystemExit):
        bench.main(["--rebuild", "bdistil"])  # needs --reuse --workdir
    with pytest.raises(SystemExit):
        bench.main(["--reuse", "--workdir", str(tmp_path), "--rebuild", "bdistil,students"])


def test_benchmark_cascades_start_from_the_accuracy_latency_front(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = _anytime_value(monkeypatch)
    cost = {"a": 0.17, "b": 0.21, "c": 0.29, "d": 0.27, "e": 0.30, "f": 0.38}.__getitem__
    acc = {"a": 96.7, "b": 96.9, "c": 96.8, "d": 97.5, "e": 97.8, "f": 97.7}.__getitem__
    # c is slower and less accurate than d, f slower and less accurate than e
    assert bench._pareto_front(list("abcdef"), cost, acc) == ["a", "b", "d", "e"]
    assert bench._pareto_front([], cost, acc) == []


def test_bdistil_init_takes_a_given_keep_ladder_for_every_variant_and_times_none(
    images: Dataset, teacher: Classifier, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    import distill.progressive.bdistil as bdistil

    bench = _anytime_value(monkeypatch, "bdistil_init")
    seen: list[tuple[Any, ...]] = []

    def spy(teacher_: Any, data: Dataset, cfg: ProgressiveConfig) -> Any:
        seen.append(tuple(cfg.candidates))
        return progressive_ensemble(teacher_, data, cfg)

    monkeypatch.setattr(bench, "load_dataset", lambda *a, **k: images)
    monkeypatch.setattr(bench, "load_teacher", lambda *a, **k: SimpleNamespace(module=teacher))
    monkeypatch.setattr(bench, "progressive_ensemble", spy)
    monkeypatch.setattr(bdistil, "keep_candidates", lambda *a, **k: pytest.fail("a ladder was timed"))
    out = tmp_path / "r.json"
    argv = ["--members", "2", "--epochs", "1", "--no-scratch", "--no-baselines", "--heads", "zero,rescale"]
    assert bench.main([*argv, "--keeps", "0.5,0.75", "--json", str(out)]) == 0
    ladder = (PrunedCandidate(0.5), PrunedCandidate(0.75))
    assert seen == [ladder, ladder]
    assert set(json.loads(out.read_text())["variants"]) == {"teacher/zero", "teacher/rescale"}
