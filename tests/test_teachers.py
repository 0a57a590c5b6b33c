"""Bring-your-own teachers: how logits are found, .onnx/.pt2/module teachers, the logits cache, diagnostics."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402 - after the importorskip that guards a runtime-only install

from byo_teachers import SmallResNet  # noqa: E402 - the user's ResNet of shared/cases/byo
from distill.data import load_dataset  # noqa: E402 - after the importorskip above
from distill.diagnostics import ensemble_warnings, student_warnings  # noqa: E402 - after the importorskip above
from distill.errors import CheckpointError, TrainingError  # noqa: E402 - after the importorskip above
from distill.logit_cache import LogitCache, attach, cache_for  # noqa: E402 - after the importorskip above
from distill.logits import logits_of  # noqa: E402 - after the importorskip above
from distill.progressive import ProgressiveConfig, limit_training, progressive_ensemble  # noqa: E402 - after the importorskip above
from distill.teacher import TeacherConfig, save_model  # noqa: E402 - after the importorskip above
from distill.teachers import RawInputTeacher, load_teacher  # noqa: E402 - after the importorskip above
from distill.train import FitConfig, predict_logits, scaled_epochs  # noqa: E402 - after the importorskip above


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def user_resnet(digits):
    """The user's ResNet trained briefly on raw digits pixels, as the user would have it."""
    torch.manual_seed(0)
    model = SmallResNet(width=8, classes=10)
    x, y = torch.from_numpy(digits.raw(digits.x_train)), torch.from_numpy(digits.y_train)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(4):
        for i in range(0, len(x), 64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[i : i + 64]), y[i : i + 64]).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def user_files(user_resnet, digits, tmp_path_factory):
    """The same model saved as a torch.export program and as ONNX (raw-pixel inputs, dynamic batch)."""
    root = tmp_path_factory.mktemp("byo")
    example = (torch.from_numpy(digits.raw(digits.x_val[:2])),)
    batch = {"x": {0: torch.export.Dim("batch")}}
    program = torch.export.export(user_resnet, example, dynamic_shapes=batch)
    torch.export.save(program, str(root / "resnet.pt2"))
    torch.onnx.export(
        user_resnet,
        example,
        str(root / "resnet.onnx"),
        dynamo=True,
        external_data=False,
        dynamic_shapes=batch,
        input_names=["x"],
        verbose=False,
    )
    return root


def test_logits_found_in_every_accepted_form() -> None:
    z = torch.randn(3, 4)
    assert logits_of(z) is z
    assert logits_of((z, torch.randn(3, 8))) is z
    assert logits_of([z]) is z
    assert logits_of({"logits": z, "aux": 1}) is z


@pytest.mark.parametrize("output", [None, "x", (), {"scores": torch.zeros(2, 3)}, (1, 2)])
def test_logits_refused_in_other_forms(output: object) -> None:
    with pytest.raises(TrainingError, match="forward must return logits"):
        logits_of(output, who="the teacher")


def test_logits_must_be_two_dimensional() -> None:
    with pytest.raises(TrainingError, match=r"shape \(3,\)"):
        logits_of(torch.zeros(3))


def test_plain_logits_module_gives_every_row(user_resnet, digits) -> None:
    """The bug this replaces took model(x)[0], the first row, as the logits."""
    teacher = RawInputTeacher(user_resnet, digits)
    logits = predict_logits(teacher, digits.x_test)
    assert logits.shape == (len(digits.x_test), 10)
    expected = user_resnet(torch.from_numpy(digits.raw(digits.x_test))).detach().numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_raw_input_teacher_undoes_the_preprocess(user_resnet, digits) -> None:
    teacher = RawInputTeacher(user_resnet, digits)
    x = digits.x_val[:5]
    with torch.no_grad():
        via_adapter = teacher(torch.from_numpy(x))
        direct = user_resnet(torch.from_numpy(digits.raw(x)))
    np.testing.assert_allclose(via_adapter.numpy(), direct.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["module", "onnx", "pt2"])
def test_byo_teacher_builds_a_three_member_bdistil_ensemble(kind, user_resnet, user_files, digits, tmp_path) -> None:
    spec = user_resnet if kind == "module" else user_files / f"resnet.{kind}"
    loaded = load_teacher(spec, digits, runs_dir=tmp_path)
    assert loaded.kind == kind
    assert loaded.metrics["test_accuracy"] > 0.8  # the user's model, reached through the inverse preprocess
    small = limit_training(digits, None)
    ensemble = progressive_ensemble(loaded.module, small, ProgressiveConfig(members=3, epochs=10, progress=False))
    assert len(ensemble.members) == 3
    assert ensemble.report.members[-1].val_accuracy > 0.6


def test_onnx_and_pt2_teachers_match_the_torch_model(user_resnet, user_files, digits, tmp_path) -> None:
    reference = predict_logits(RawInputTeacher(user_resnet, digits), digits.x_test)
    for name in ("resnet.onnx", "resnet.pt2"):
        loaded = load_teacher(user_files / name, digits, runs_dir=tmp_path, cache=False)
        np.testing.assert_allclose(predict_logits(loaded.module, digits.x_test), reference, rtol=1e-3, atol=1e-3)


def test_onnx_teacher_has_no_layers_to_rewrite(user_files, digits, tmp_path) -> None:
    loaded = load_teacher(user_files / "resnet.onnx", digits, runs_dir=tmp_path)
    assert not loaded.has_layers
    with pytest.raises(TrainingError, match=r"is ONNX \(logits only\).*\.pt2"):
        loaded.require_layers("lowrank")


def test_teacher_that_does_not_fit_the_data_is_refused(user_files, tmp_path) -> None:
    wine_like = load_dataset(_tabular_npz(tmp_path))
    with pytest.raises(CheckpointError, match="fails on --data inputs"):
        load_teacher(user_files / "resnet.onnx", wine_like, runs_dir=tmp_path)


def test_unknown_teacher_spec_is_one_line(digits, tmp_path) -> None:
    with pytest.raises(CheckpointError, match="not 'auto', a checkpoint directory, an existing .onnx"):
        load_teacher(tmp_path / "missing.onnx", digits, runs_dir=tmp_path)


def test_save_model_of_a_user_module_names_the_fix(user_resnet, tmp_path) -> None:
    with pytest.raises(CheckpointError, match="torch.export.save"):
        save_model(user_resnet, tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()


def _tabular_npz(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    path = tmp_path / "tab.npz"
    np.savez(path, x_train=x[:150], y_train=y[:150], x_test=x[150:], y_test=y[150:])
    return path


# --- the logits cache ---------------------------------------------------------------------------------


class CountingTeacher(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.linear(x)


def test_cache_hit_miss_and_rebuild_after_corruption(tmp_path) -> None:
    teacher = CountingTeacher()
    cache = LogitCache(tmp_path, "t1")
    attach(teacher, cache)
    x = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    first = predict_logits(teacher, x)
    assert (cache.misses, cache.hits, teacher.calls) == (1, 0, 1)
    again = predict_logits(teacher, x)
    assert (cache.misses, cache.hits, teacher.calls) == (1, 1, 1)
    np.testing.assert_array_equal(first, again)
    other = x + 1  # different inputs never read another entry
    predict_logits(teacher, other)
    assert cache.misses == 2
    stored = next(tmp_path.glob("t1/*.npy"))
    stored.write_bytes(stored.read_bytes()[:-8])  # truncated: checksum and shape no longer hold
    for npy in tmp_path.glob("t1/*.npy"):
        raw = bytearray(npy.read_bytes())
        raw[-1] ^= 0xFF  # one flipped bit in the data
        npy.write_bytes(bytes(raw))
    rebuilt = predict_logits(teacher, x)
    assert cache.misses == 3 and teacher.calls == 3
    np.testing.assert_allclose(rebuilt, first)
    assert not list(tmp_path.glob("t1/.*.tmp"))  # atomic writes leave nothing behind


def test_cache_entry_with_a_mismatched_record_is_rebuilt(tmp_path) -> None:
    teacher = CountingTeacher()
    cache = LogitCache(tmp_path, "t2")
    attach(teacher, cache)
    x = np.ones((6, 4), np.float32)
    predict_logits(teacher, x)
    meta = next(tmp_path.glob("t2/*.json"))
    record = json.loads(meta.read_text())
    meta.write_text(json.dumps({**record, "shape": [7, 3]}))
    predict_logits(teacher, x)
    assert cache.misses == 2


def test_cache_files_follow_the_umask_and_an_unwritable_cache_costs_only_time(tmp_path, monkeypatch) -> None:
    import os
    import stat

    import distill.logit_cache
    from edge_runtime.errors import BundleError

    teacher = CountingTeacher()
    attach(teacher, LogitCache(tmp_path, "t3"))
    x = np.ones((3, 4), np.float32)
    old = os.umask(0o027)
    try:
        predict_logits(teacher, x)
    finally:
        os.umask(old)
    assert {stat.S_IMODE(p.stat().st_mode) for p in tmp_path.glob("t3/*")} == {0o640}

    def refuse(target, data) -> None:  # what atomic_write raises when the directory is not writable
        raise BundleError(f"cannot write beside {target} (Permission denied)")

    monkeypatch.setattr(distill.logit_cache, "atomic_write", refuse)
    unwritable = LogitCache(tmp_path, "t4")
    got = unwritable.logits(x, lambda rows: np.zeros((len(rows), 3), np.float32))
    assert got.shape == (3, 3) and unwritable.misses == 1


def test_copies_of_a_teacher_do_not_inherit_its_cache(tmp_path) -> None:
    teacher = CountingTeacher()
    attach(teacher, LogitCache(tmp_path, "t3"))
    student = copy.deepcopy(teacher)
    assert cache_for(teacher) is not None and cache_for(student) is None


def test_cli_teachers_share_the_cache_across_runs(user_files, digits, tmp_path) -> None:
    first = load_teacher(user_files / "resnet.onnx", digits, runs_dir=tmp_path)
    predict_logits(first.module, digits.x_train)
    second = load_teacher(user_files / "resnet.onnx", digits, runs_dir=tmp_path)
    assert second.identity == first.identity
    predict_logits(second.module, digits.x_train)
    assert cache_for(second.module).hits >= 1


# --- students that fail say so ------------------------------------------------------------------------


def test_near_chance_student_is_warned() -> None:
    assert student_warnings("lowrank", 0.12, 10, 360)
    assert not student_warnings("lowrank", 0.9, 10, 360)


def test_falling_prefixes_are_warned_beyond_noise() -> None:
    """The ensemble command once gave F_1 8.6%, F_2 47.4%, F_3 30.4% and exited quietly."""
    found = ensemble_warnings("B-DISTIL", [0.086, 0.474, 0.304], 10, 360)
    assert any("F_1" in w and "near chance" in w for w in found)
    assert any("F_3" in w and "below F_2" in w for w in found)
    assert not ensemble_warnings("B-DISTIL", [0.90, 0.95, 0.948, 0.96], 10, 360)  # a 0.2-point dip is noise


def test_scaled_epochs_grow_with_small_data_but_stay_bounded() -> None:
    assert scaled_epochs(54_000) == 3
    assert scaled_epochs(1_300) == 23
    assert scaled_epochs(40) == 50  # the 40-sample sensor set took 750 epochs per attempt before
    assert FitConfig(epochs=scaled_epochs(40)).epochs == 50


def test_onnx_teacher_reaches_layer_methods_through_a_cached_dense_proxy(user_files, digits, tmp_path) -> None:
    small = limit_training(digits, 300)
    loaded = load_teacher(user_files / "resnet.onnx", small, runs_dir=tmp_path)
    said: list[str] = []
    quick = TeacherConfig(width=16, depth=2, hidden=64, epochs=30, lr=3e-3, batch_size=32)
    proxy = loaded.layered(
        "low-rank factorisation", small, runs_dir=tmp_path, progress=False, say=said.append, proxy_config=quick
    )
    assert said and "dense proxy" in said[0] and "resnet.onnx" in said[0]
    agreement = (predict_logits(proxy, small.x_test).argmax(1) == predict_logits(loaded.module, small.x_test).argmax(1)).mean()
    assert agreement > 0.8  # it learned the teacher's answers, not just the labels
    assert any(isinstance(m, nn.Linear) for m in proxy.modules())
    again = loaded.layered("FCPTS", small, runs_dir=tmp_path, progress=False, proxy_config=quick)  # kept on disk: same weights
    for a, b in zip(proxy.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_dsd2_prunes_a_copy_of_a_pt2_teacher(user_files, tmp_path, capsys) -> None:
    from distill.cli import main

    code = main(
        [
            "sparsify",
            "dsd2",
            "--data",
            "digits",
            "--teacher",
            str(user_files / "resnet.pt2"),
            "--limit-train",
            "300",
            "--rounds",
            "1",
            "--epochs",
            "1",
            "--dense-epochs",
            "1",
            "--runs-dir",
            str(tmp_path / "runs"),
            "--out",
            str(tmp_path / "dsd2"),
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "pruning a copy of the teacher" in out and "resnet.pt2" in out
    manifest = json.loads((tmp_path / "dsd2" / "manifest.json").read_text())
    assert manifest["members"][0]["info"]["method"] == "dsd2"


def _sklearn_style_onnx(path: Path, weights: np.ndarray) -> Path:
    """A converted-classifier layout: float64 input, an integer `label` output first, then `probabilities`."""
    from onnx import TensorProto, helper, numpy_helper

    features, classes = weights.shape
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["scores"]),
            helper.make_node("Softmax", ["scores"], ["probabilities"], axis=1),
            helper.make_node("ArgMax", ["scores"], ["label"], axis=1, keepdims=0),
        ],
        "user_classifier",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["N", features])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes]),
        ],
        [numpy_helper.from_array(weights.astype(np.float64), "w")],
    )
    # Softmax of doubles gives doubles: cast for the declared float output
    graph.node[1].input[0] = "scores_f"
    graph.node.insert(1, helper.make_node("Cast", ["scores"], ["scores_f"], to=TensorProto.FLOAT))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    path.write_bytes(model.SerializeToString())
    return path


def test_onnx_teacher_with_a_label_output_first_and_probabilities(tmp_path) -> None:
    data = load_dataset(_tabular_npz(tmp_path))
    weights = np.array([[3.0, -3.0], [0.1, 0.0], [0.0, 0.2], [0.0, 0.0], [0.3, 0.1]])
    loaded = load_teacher(_sklearn_style_onnx(tmp_path / "clf.onnx", weights), data, runs_dir=tmp_path, cache=False)
    assert loaded.module.output_name == "probabilities" and loaded.module.input_dtype == np.float64
    logits = predict_logits(loaded.module, data.x_test)
    raw = data.raw(data.x_test).astype(np.float64)
    expected = raw @ weights
    np.testing.assert_array_equal(logits.argmax(1), expected.argmax(1))
    # log-probabilities: differences between classes are the score differences (logits up to a constant)
    np.testing.assert_allclose(logits[:, 0] - logits[:, 1], expected[:, 0] - expected[:, 1], rtol=1e-3, atol=1e-3)


def test_a_teacher_ending_in_softmax_is_distilled_from_log_probabilities(user_resnet, digits, tmp_path) -> None:
    softmaxed = nn.Sequential(user_resnet, nn.Softmax(dim=1)).eval()
    loaded = load_teacher(softmaxed, digits, runs_dir=tmp_path)
    logits = predict_logits(loaded.module, digits.x_test[:50])
    reference = predict_logits(RawInputTeacher(user_resnet, digits), digits.x_test[:50])
    # log(softmax(z)) = z - logsumexp(z): the same logits up to a per-row constant

    def centred(z: np.ndarray) -> np.ndarray:
        return z - z.mean(axis=1, keepdims=True)

    np.testing.assert_allclose(centred(logits), centred(reference), rtol=1e-3, atol=1e-3)
