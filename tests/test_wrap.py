"""Wrapping a user's own classifier (.onnx, .pt2) as a bundle: the head, the gates, refusals, every command.

The case: ../shared/cases/byo/plain_logits_teacher.py, a small ResNet (BatchNorm, residual blocks) whose
forward takes raw digits pixels and returns plain logits. A narrow copy is trained for a few epochs here,
saved as ONNX and as a torch.export program, and both are wrapped; the right value is that the bundles
answer with the same labels as the torch model. Hand-built ONNX graphs (onnx.helper) cover the head's
numerics, name collisions and every refusal without torch.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import warnings
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import edge_runtime
from distill.cli import main as anytime_edge
from distill.data import load_dataset
from edge_runtime.bundle import Preprocess, TaskSpec, TensorSpec, load_bundle
from exporters import ExportError, VerificationError
from exporters.wrap import add_head, inspect_source, reference_outputs, wrap_onnx

ROOT = Path(__file__).parents[1]
CASE = ROOT.parent / "shared" / "cases" / "byo" / "plain_logits_teacher.py"
if not CASE.is_file():  # the worktree layout: /work/wt/<name>, cases at /work/shared
    CASE = ROOT.parents[1] / "shared" / "cases" / "byo" / "plain_logits_teacher.py"


# --- the case: a trained SmallResNet on raw digits, as .onnx and .pt2 -------------------------------------


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def resnet(digits, tmp_path_factory):
    """(torch model, .onnx path, .pt2 path): the case's SmallResNet (width 8), trained 4 epochs on raw pixels."""
    torch = pytest.importorskip("torch")
    if not CASE.is_file():
        pytest.skip(f"case file {CASE} is not present")
    spec = importlib.util.spec_from_file_location("plain_logits_teacher", CASE)
    case = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(case)
    torch.manual_seed(0)
    model = case.SmallResNet(width=8)
    x = torch.from_numpy(digits.raw(digits.x_train))
    y = torch.from_numpy(digits.y_train)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(4):
        for i in range(0, len(x), 64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[i : i + 64]), y[i : i + 64]).backward()
            opt.step()
    model.eval()
    out = tmp_path_factory.mktemp("byo")
    batch = {"x": {0: torch.export.Dim("batch")}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x[:2],),
            out / "small_resnet.onnx",
            dynamo=True,
            external_data=False,
            dynamic_shapes=batch,
            input_names=["x"],
            verbose=False,
        )
        torch.export.save(torch.export.export(model, (x[:2],), dynamic_shapes=batch), out / "small_resnet.pt2")
    return model, out / "small_resnet.onnx", out / "small_resnet.pt2"


def _torch_labels(model, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels of the torch model and the gap between its two largest logits (near-ties may flip in ORT)."""
    import torch

    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
    top2 = np.sort(logits, axis=1)[:, -2:]
    return logits.argmax(1), top2[:, 1] - top2[:, 0]


def _raw_task(digits) -> TaskSpec:
    return replace(digits.task_spec(), preprocess=Preprocess())


@pytest.mark.parametrize("kind", ["onnx", "pt2"])
def test_wrapped_case_answers_like_the_torch_model(kind: str, resnet, digits, tmp_path: Path) -> None:
    from exporters import wrap_pt2

    model, onnx_path, pt2_path = resnet
    raw = digits.raw(digits.x_test)
    if kind == "onnx":
        result = wrap_onnx(onnx_path, _raw_task(digits), tmp_path / "b", heldout=(raw, digits.y_test), name="resnet")
    else:
        result = wrap_pt2(pt2_path, _raw_task(digits), tmp_path / "b", heldout=(raw, digits.y_test), name="resnet")
    runtime = edge_runtime.load(result.path, entropy_threshold="off", warmup=1)
    labels = np.array([p.label for p in runtime.predict(raw)])
    want, gap = _torch_labels(model, raw)
    assert np.all((labels == want) | (gap < 1e-4)), "the bundle must answer with the torch model's labels"
    torch_accuracy = float(np.mean(want == digits.y_test))
    assert torch_accuracy > 0.8  # a trained model: the check below compares real answers, not noise
    assert result.accuracy == pytest.approx(torch_accuracy, abs=1e-3)
    assert result.manifest.task.preprocess.is_identity and result.manifest.task.input.name == "x"
    assert result.manifest.members[0].info["gates"]["reference"].startswith("torch" if kind == "pt2" else "source ONNX")
    # one row and a whole batch give the same probabilities (dynamic batch)
    single = runtime.predict(raw[:1])[0].probabilities
    np.testing.assert_allclose(single, runtime.predict(raw[:5])[0].probabilities, rtol=1e-5, atol=1e-6)


def test_user_graph_is_kept_and_the_batch_stays_dynamic(resnet, digits, tmp_path: Path) -> None:
    _, onnx_path, _ = resnet
    result = wrap_onnx(
        onnx_path, _raw_task(digits), tmp_path / "b", heldout=(digits.raw(digits.x_test), digits.y_test), name="resnet"
    )
    user = onnx.load(onnx_path)
    wrapped = onnx.load(result.path / result.manifest.members[0].file)
    n = len(user.graph.node)
    assert list(wrapped.graph.node[:n]) == list(user.graph.node)
    assert list(wrapped.graph.initializer[: len(user.graph.initializer)]) == list(user.graph.initializer)
    assert [o.name for o in wrapped.graph.output] == ["logits", "probs", "entropy"]
    assert [node.op_type for node in wrapped.graph.node[n:]] == ["Identity", "LogSoftmax", "Exp", "Mul", "ReduceSum", "Neg"]
    batch = wrapped.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.HasField("dim_value")
    assert wrapped.ir_version <= 9  # readable by the oldest onnxruntime the runtime install accepts


# --- hand-built graphs (no torch): head numerics, collisions, refusals ---------------------------------------


def _linear_onnx(
    weights: np.ndarray,
    bias: np.ndarray,
    *,
    input_name: str = "x",
    output_name: str = "y",
    extra_output: bool = False,
    inner_name: str = "h",
    opset: int = 18,
    batch: int | str = "N",
    in_shape: tuple[int, ...] = (4,),
    input_type: int = TensorProto.FLOAT,
) -> onnx.ModelProto:
    """``output = Flatten(x) @ W + b`` (plus optionally a second output ``features``)."""
    features = int(np.prod(in_shape))
    nodes = [
        helper.make_node("Flatten", [input_name], [inner_name], axis=1, name="flatten"),
        helper.make_node("MatMul", [inner_name, "W"], ["mm"], name="matmul"),
        helper.make_node("Add", ["mm", "b"], [output_name], name="add"),
    ]
    outputs = [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch, weights.shape[1]])]
    if extra_output:
        nodes.append(helper.make_node("Relu", [inner_name], ["features"], name="relu"))
        outputs.insert(0, helper.make_tensor_value_info("features", TensorProto.FLOAT, [batch, features]))
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info(input_name, input_type, [batch, *in_shape])],
        outputs,
        initializer=[
            onnx.numpy_helper.from_array(weights.astype(np.float32), "W"),
            onnx.numpy_helper.from_array(bias.astype(np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _task(classes: int = 3, shape: tuple[int, ...] = (4,)) -> TaskSpec:
    return TaskSpec(labels=tuple(f"c{k}" for k in range(classes)), input=TensorSpec(name="x", shape=(-1, *shape)))


def _heldout(weights: np.ndarray, bias: np.ndarray, n: int = 40, scale: float = 1.0, seed: int = 0):
    x = np.random.default_rng(seed).normal(size=(n, weights.shape[0])).astype(np.float32) * scale
    return x, (x @ weights + bias).argmax(1)


def test_head_is_softmax_and_safe_entropy_even_for_confident_logits(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    w, b = rng.normal(size=(4, 3)) * 300.0, np.zeros(3)  # logits ~1e3 apart: exp underflows to 0
    x, y = _heldout(w, b)
    for opset in (11, 18):  # ReduceSum takes axes as an attribute before opset 13, as an input after
        result = wrap_onnx(_linear_onnx(w, b, opset=opset), _task(), tmp_path / f"b{opset}", heldout=(x, y))
        runtime = edge_runtime.load(result.path, entropy_threshold="off", warmup=0)
        evaluated = runtime.evaluate_prefixes(x)
        want = reference_outputs(x.astype(np.float64) @ w + b)
        np.testing.assert_allclose(evaluated.probs[0], want["probs"], atol=1e-6)
        assert np.all(np.isfinite(evaluated.entropy)) and np.all(evaluated.entropy >= -1e-6)
        np.testing.assert_allclose(evaluated.entropy[0], want["entropy"], atol=1e-4)
        assert result.accuracy == 1.0 and result.gates.max_abs_diff["entropy"] < 1e-4


def test_name_collisions_are_prefixed_and_the_logits_output_is_chosen(tmp_path: Path) -> None:
    w, b = np.random.default_rng(2).normal(size=(4, 3)), np.zeros(3)
    x, y = _heldout(w, b)
    # The user's logits output is already called "logits", an inner value "probs", and a second output exists.
    user = _linear_onnx(w, b, output_name="logits", inner_name="probs", extra_output=True)
    source = inspect_source(user, input_shape=(4,), num_classes=3)
    assert source.output_name == "logits" and source.input_name == "x"
    wrapped = add_head(user, source, 3)
    assert [i.name for i in wrapped.graph.input] == ["x"]  # the input did not collide: it keeps its name
    assert {"model/probs", "model/logits"} <= {o for node in wrapped.graph.node for o in node.output}
    result = wrap_onnx(user, _task(), tmp_path / "b", heldout=(x, y))
    assert result.accuracy == 1.0 and result.manifest.members[0].info["source_output"] == "logits"
    # An input named like a head output is renamed too, and the manifest feeds the new name.
    clash = _linear_onnx(w, b, input_name="entropy")
    result = wrap_onnx(clash, _task(), tmp_path / "c", heldout=(x, y))
    assert result.manifest.task.input.name == "model/entropy"
    assert edge_runtime.load(result.path, warmup=0).predict(x[:2])[0].label == y[0]
    # --output picks one of several outputs by name
    two = _linear_onnx(w, b, extra_output=True)
    with pytest.raises(ExportError, match="outputs 4 classes"):  # the first output, (N, 4) features: refused
        wrap_onnx(two, _task(), tmp_path / "d", heldout=(x, y))
    assert wrap_onnx(two, _task(), tmp_path / "d", heldout=(x, y), output="y").accuracy == 1.0


def _external(tmp_path: Path, w: np.ndarray, b: np.ndarray) -> Path:
    model = _linear_onnx(w, b)
    path = tmp_path / "ext" / "model.onnx"
    path.parent.mkdir()
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location="w.bin", size_threshold=0)
    return path


def _two_inputs(w: np.ndarray, b: np.ndarray) -> onnx.ModelProto:
    model = _linear_onnx(w, b)
    model.graph.input.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", 4]))
    return model


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda tmp, w, b: _two_inputs(w, b), "has 2 inputs"),
        (lambda tmp, w, b: _linear_onnx(w, b, input_type=TensorProto.DOUBLE), "is DOUBLE; bundles take float32"),
        (lambda tmp, w, b: _linear_onnx(w, b, batch=2), "fixed batch of 2"),
        (lambda tmp, w, b: _linear_onnx(w, b, in_shape=(2, 2)), "has rank 3"),
        (lambda tmp, w, b: _linear_onnx(np.ones((4, 5)), np.zeros(5)), "outputs 5 classes, the data has 3"),
        (lambda tmp, w, b: _external(tmp, w, b), "external data"),
        (lambda tmp, w, b: b"not a model", "is not an ONNX model"),
        (lambda tmp, w, b: _linear_onnx(w, b, opset=6), "opset >= 7"),
    ],
)
def test_bad_models_are_refused_in_one_line_and_nothing_is_written(make, message: str, tmp_path: Path) -> None:
    w, b = np.random.default_rng(3).normal(size=(4, 3)), np.zeros(3)
    x, y = _heldout(w, b)
    model = make(tmp_path, w, b)
    with pytest.raises(ExportError, match=message) as info:
        wrap_onnx(model, _task(), tmp_path / "out", heldout=(x, y))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_a_fixed_batch_of_one_is_made_dynamic_only_when_the_graph_allows(tmp_path: Path) -> None:
    w, b = np.random.default_rng(7).normal(size=(4, 3)), np.zeros(3)
    x, y = _heldout(w, b)
    result = wrap_onnx(_linear_onnx(w, b, batch=1), _task(), tmp_path / "ok", heldout=(x, y))
    assert result.accuracy == 1.0 and result.manifest.members[0].info["batch_made_dynamic"] is True
    labels = [p.label for p in edge_runtime.load(result.path, warmup=0).predict(x)]  # one call, 40 rows
    assert labels == list(y)
    # A graph that bakes the batch into a Reshape to [1, 4] cannot take 40 rows: refused, nothing written.
    baked = _linear_onnx(w, b, batch=1)
    baked.graph.initializer.append(onnx.numpy_helper.from_array(np.array([1, 4], np.int64), "shape"))
    baked.graph.node[0].CopyFrom(helper.make_node("Reshape", ["x", "shape"], ["h"], name="flatten"))
    with pytest.raises(VerificationError, match="dynamic batch dimension") as info:
        wrap_onnx(baked, _task(), tmp_path / "baked", heldout=(x, y))
    assert "\n" not in str(info.value) and not (tmp_path / "baked").exists()


def test_class_count_is_checked_on_the_outputs_when_the_graph_does_not_say(tmp_path: Path) -> None:
    w, b = np.random.default_rng(4).normal(size=(4, 5)), np.zeros(5)
    model = _linear_onnx(w, b)
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_param = "C"  # shape no longer says 5
    x = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    with pytest.raises(ExportError, match=r"has shape \[10, 5\] on held-out inputs"):
        wrap_onnx(model, _task(), tmp_path / "out", heldout=(x, np.zeros(10, np.int64)))


def test_failed_parity_writes_nothing_and_keeps_the_old_bundle(tmp_path: Path) -> None:
    w, b = np.random.default_rng(5).normal(size=(4, 3)), np.zeros(3)
    x, y = _heldout(w, b)
    model = _linear_onnx(w, b)
    first = wrap_onnx(model, _task(), tmp_path / "b", heldout=(x, y))
    before = (first.path / "manifest.json").read_bytes()
    with pytest.raises(VerificationError, match="differs from"):
        wrap_onnx(model, _task(), tmp_path / "b", heldout=(x, y), reference_logits=x @ w + b + 0.1)
    assert (first.path / "manifest.json").read_bytes() == before


# --- the CLI: export, then every command that takes a bundle -----------------------------------------------------


def _raw_npz(digits, path: Path) -> Path:
    np.savez(
        path,
        x_train=digits.raw(np.concatenate([digits.x_train, digits.x_val])),
        y_train=np.concatenate([digits.y_train, digits.y_val]),
        x_test=digits.raw(digits.x_test),
        y_test=digits.y_test,
    )
    return path


def test_cli_export_and_every_bundle_command(resnet, digits, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, onnx_path, pt2_path = resnet
    bundle, archive = tmp_path / "bundle", tmp_path / "bundle.zip"
    assert anytime_edge(["export", str(onnx_path), "--data", "digits", "--out", str(bundle), "--zip", str(archive)]) == 0
    out = capsys.readouterr()
    assert "held-out accuracy" in out.out and f"archive: {archive}" in out.out and "near chance" not in out.err
    assert load_bundle(archive).manifest.members[0].sha256 == load_bundle(bundle).manifest.members[0].sha256
    raw = digits.raw(digits.x_test)
    want, gap = _torch_labels(model, raw)
    val = tmp_path / "val.npz"
    np.savez(val, x=raw, y=digits.y_test)
    np.save(tmp_path / "x.npy", raw[:8])

    assert anytime_edge(["run", str(archive), "--input", str(tmp_path / "x.npy"), "--json"]) == 0
    answers = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    got = np.array([a["label"] for a in (answers[0] if isinstance(answers[0], list) else answers)])
    assert np.all((got == want[:8]) | (gap[:8] < 1e-4))
    assert anytime_edge(["inspect", str(bundle), "--check"]) == 0
    assert "loads in ONNX Runtime" in capsys.readouterr().out
    assert anytime_edge(["calibrate", str(bundle), "--data", str(val)]) == 0
    assert load_bundle(bundle).manifest.calibration is not None
    fast = ["--min-queries", "20", "--min-seconds", "0", "--warmup", "2", "--batch", "2", "--no-memory-probe"]
    assert anytime_edge(["profile", str(bundle), *fast]) == 0
    assert anytime_edge(["select", str(bundle), "--data", str(val), "--min-queries", "20", "--min-seconds", "0"]) == 0
    capsys.readouterr()

    from edge_runtime.server import ServerConfig, create_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient
    with TestClient(create_app(bundle, ServerConfig(workers=1)), base_url="http://127.0.0.1") as client:
        body = {"inputs": [{"name": "x", "shape": [3, 1, 8, 8], "datatype": "FP32", "data": raw[:3].ravel().tolist()}]}
        response = client.post(f"/v2/models/{load_bundle(bundle).manifest.name}/infer", json=body)
    assert response.status_code == 200, response.text
    labels = next(o["data"] for o in response.json()["outputs"] if o["name"] == "label")
    assert np.all((np.array(labels) == want[:3]) | (gap[:3] < 1e-4))

    # .pt2 through the CLI, from an .npz of raw values
    data = _raw_npz(digits, tmp_path / "digits_raw.npz")
    assert anytime_edge(["export", str(pt2_path), "--data", str(data), "--out", str(tmp_path / "p")]) == 0
    assert "reference: torch program" in capsys.readouterr().out


def test_cli_preprocess_data_for_a_model_trained_on_standardised_inputs(
    digits, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A least-squares linear classifier fitted on the data's standardised inputs.
    x = digits.x_train.reshape(len(digits.x_train), -1)
    w = np.linalg.lstsq(np.c_[x, np.ones(len(x))], np.eye(10)[digits.y_train], rcond=None)[0]
    path = tmp_path / "std.onnx"
    onnx.save_model(_linear_onnx(w[:-1], w[-1], in_shape=(1, 8, 8)), path)
    assert anytime_edge(["export", str(path), "--data", "digits", "--out", str(tmp_path / "b"), "--preprocess", "data"]) == 0
    manifest = load_bundle(tmp_path / "b").manifest
    assert manifest.task.preprocess == digits.preprocess and manifest.metadata["preprocess"] == "data"
    raw = digits.raw(digits.x_test)
    labels = [p.label for p in edge_runtime.load(tmp_path / "b", warmup=0).predict(raw)]  # clients send raw values
    expected = (digits.x_test.reshape(len(raw), -1) @ w[:-1] + w[-1]).argmax(1)
    assert np.mean(np.array(labels) == expected) > 0.99 and np.mean(expected == digits.y_test) > 0.85
    with_data = _printed_accuracy(capsys.readouterr().out)
    assert with_data == pytest.approx(100 * np.mean(expected == digits.y_test), abs=0.01)
    # Without --preprocess data the same model is fed raw pixels: the bundle computes exactly that, and the
    # gates print what it really scores (lower), never the standardised accuracy.
    assert anytime_edge(["export", str(path), "--data", "digits", "--out", str(tmp_path / "n")]) == 0
    assert edge_runtime.load_bundle(tmp_path / "n").manifest.task.preprocess.is_identity
    on_raw = (raw.reshape(len(raw), -1) @ w[:-1] + w[-1]).argmax(1)
    without = _printed_accuracy(capsys.readouterr().out)
    assert without == pytest.approx(100 * np.mean(on_raw == digits.y_test), abs=0.01) and without < with_data
    labels = np.array([p.label for p in edge_runtime.load(tmp_path / "n", warmup=0).predict(raw)])
    logits = np.sort(raw.reshape(len(raw), -1) @ w[:-1] + w[-1], axis=1)
    assert np.all((labels == on_raw) | (logits[:, -1] - logits[:, -2] < 1e-4))


NHWC_CASE = CASE.parent / "nhwc_images.npz"


@pytest.mark.skipif(not NHWC_CASE.is_file(), reason="the byo NHWC case is not present")
@pytest.mark.parametrize("preprocess", ["none", "data"])
def test_channels_last_data_with_either_preprocess(preprocess: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The case: which colour channel holds a bright square. The model answers with each channel's maximum:
    # over (H, W) of raw NHWC arrays (--preprocess none), or of the standardised NCHW members' input (data).
    axes = [1, 2] if preprocess == "none" else [2, 3]
    data = load_dataset(NHWC_CASE)
    shape = data.raw_input_shape if preprocess == "none" else data.input_shape
    graph = helper.make_graph(
        [helper.make_node("ReduceMax", ["x"], ["logits"], axes=axes, keepdims=0)],
        "channel_max",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save_model(model, tmp_path / "m.onnx")
    argv = ["export", str(tmp_path / "m.onnx"), "--data", str(NHWC_CASE), "--out", str(tmp_path / "b")]
    assert anytime_edge([*argv, "--preprocess", preprocess]) == 0
    assert _printed_accuracy(capsys.readouterr().out) > 90
    task = load_bundle(tmp_path / "b").manifest.task
    assert task.input.shape == (-1, 24, 24, 3)  # clients send channels-last either way
    with np.load(NHWC_CASE) as z:
        x_raw, y = z["x_test"], z["y_test"]
    labels = np.array([p.label for p in edge_runtime.load(tmp_path / "b", warmup=0).predict(x_raw)])
    assert np.mean(labels == y) > 0.9


def _printed_accuracy(out: str) -> float:
    return float(re.search(r"held-out accuracy ([0-9.]+)%", out).group(1))


def test_cli_warns_when_accuracy_is_near_chance(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "zeros.onnx"  # constant logits: every answer is class 0, ~10% on digits
    onnx.save_model(_linear_onnx(np.zeros((64, 10)), np.zeros(10), in_shape=(1, 8, 8)), path)
    assert anytime_edge(["export", str(path), "--data", "digits", "--out", str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err
    assert "near chance" in err and "--preprocess data" in err


def test_near_chance_measures_from_guessing_not_from_zero() -> None:
    from exporters.wrap import chance_accuracy, near_chance

    balanced = np.repeat(np.arange(10), 10)
    assert chance_accuracy(balanced, 10) == pytest.approx(0.1)
    assert near_chance(0.15, balanced, 10) and not near_chance(0.3, balanced, 10)
    skewed = np.array([0] * 90 + [1] * 10)  # always answering 0 scores 90%
    assert near_chance(0.9, skewed, 2) and not near_chance(0.97, skewed, 2)
    assert not near_chance(0.7, np.array([0, 1] * 50), 2)  # a weak but real binary classifier: no warning


def test_cli_export_still_takes_a_checkpoint(digits, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    from distill.models import ModelConfig, build_model
    from distill.teacher import save_model

    checkpoint = save_model(build_model(ModelConfig.for_data(digits, width=4, depth=1)), tmp_path / "ckpt")
    assert anytime_edge(["export", str(checkpoint), "--data", "digits", "--out", str(tmp_path / "b")]) == 0
    assert "accuracy torch" in capsys.readouterr().out
    assert load_bundle(tmp_path / "b").manifest.task.preprocess == digits.preprocess  # the data's, as trained
    assert (
        anytime_edge(["export", str(checkpoint), "--data", "digits", "--out", str(tmp_path / "c"), "--preprocess", "none"]) == 1
    )
    assert "applies to .onnx/.pt2 models only" in capsys.readouterr().err and not (tmp_path / "c").exists()


def test_cli_refuses_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    w, b = np.random.default_rng(6).normal(size=(64, 3)), np.zeros(3)
    path = tmp_path / "three.onnx"
    onnx.save_model(_linear_onnx(w, b, in_shape=(1, 8, 8)), path)
    assert anytime_edge(["export", str(path), "--data", "digits", "--out", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err.strip()
    assert "outputs 3 classes, the data has 10" in err and "\n" not in err
    assert anytime_edge(["export", str(tmp_path / "missing.onnx"), "--data", "digits", "--out", str(tmp_path / "b")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_cli_logits_output_picks_one_of_several_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    w, b = np.random.default_rng(8).normal(size=(64, 10)), np.zeros(10)
    path = tmp_path / "two.onnx"  # outputs: features (N, 64) first, then y (N, 10)
    onnx.save_model(_linear_onnx(w, b, in_shape=(1, 8, 8), extra_output=True), path)
    assert anytime_edge(["export", str(path), "--data", "digits", "--out", str(tmp_path / "b")]) == 1
    assert "outputs 64 classes, the data has 10" in capsys.readouterr().err
    assert anytime_edge(["export", str(path), "--data", "digits", "--out", str(tmp_path / "b"), "--logits-output", "y"]) == 0
    assert load_bundle(tmp_path / "b").manifest.members[0].info["source_output"] == "y"
    assert anytime_edge(["export", str(path), "--data", "digits", "--out", str(tmp_path / "c"), "--logits-output", "z"]) == 1
    assert "has no output 'z'; its outputs are ['features', 'y']" in capsys.readouterr().err


def test_pt2_returning_a_mapping_uses_its_logits_entry(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from exporters import wrap_pt2

    class Mapped(torch.nn.Module):  # Hugging Face style: the logits are not the first leaf
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Linear(4, 6)
            self.head = torch.nn.Linear(6, 3)

        def forward(self, x):
            h = torch.relu(self.body(x))
            return {"hidden": h, "logits": self.head(h)}

    torch.manual_seed(0)
    model = Mapped().eval()
    x = np.random.default_rng(9).normal(size=(50, 4)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x))["logits"].numpy()
    program = torch.export.export(model, (torch.from_numpy(x[:2]),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, tmp_path / "mapped.pt2")
    result = wrap_pt2(tmp_path / "mapped.pt2", _task(), tmp_path / "b", heldout=(x, want.argmax(1)))
    assert result.accuracy == 1.0 and result.gates.max_abs_diff["logits"] < 1e-4
    probs = edge_runtime.load(result.path, warmup=0).evaluate_prefixes(x).probs[0]
    np.testing.assert_allclose(probs, reference_outputs(want)["probs"], atol=1e-5)


def test_pt2_with_pickled_members_is_refused(resnet, digits, tmp_path: Path) -> None:
    from exporters import wrap_pt2

    _, _, pt2_path = resnet
    bad = tmp_path / "pickled.pt2"
    with zipfile.ZipFile(pt2_path) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("model_weights_config.json"):
                config = json.loads(data)
                next(iter(config["config"].values()))["use_pickle"] = True
                data = json.dumps(config).encode()
            dst.writestr(item, data)
    with pytest.raises(ExportError, match="pickled object"):
        wrap_pt2(bad, _raw_task(digits), tmp_path / "b", heldout=(digits.raw(digits.x_test), digits.y_test))
    assert not (tmp_path / "b").exists()


# --- the runtime-only install: .onnx without torch ----------------------------------------------------------------

_BLOCK = """
import importlib.abc, sys
BLOCKED = {blocked!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is not installed (runtime-only install)", name=name)
        return None
sys.meta_path.insert(0, Block())
"""


def _runtime_only(tmp_path: Path, blocked: tuple[str, ...], argv: list[str]) -> subprocess.CompletedProcess[str]:
    site = tmp_path / f"site_{len(blocked)}"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_BLOCK.format(blocked=blocked))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    check = (
        "import sys; from distill.cli import main; code = main(sys.argv[1:]); "
        "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(code)"
    )
    return subprocess.run(
        [sys.executable, "-c", check, *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180
    )


def test_onnx_wrap_runs_on_a_runtime_only_install(digits, tmp_path: Path) -> None:
    x = digits.x_train.reshape(len(digits.x_train), -1)
    w = np.linalg.lstsq(np.c_[x, np.ones(len(x))], np.eye(10)[digits.y_train], rcond=None)[0]
    model = tmp_path / "linear.onnx"
    onnx.save_model(_linear_onnx(w[:-1], w[-1], in_shape=(1, 8, 8)), model)
    data = _raw_npz(digits, tmp_path / "digits_raw.npz")
    argv = ["export", str(model), "--data", str(data), "--out", str(tmp_path / "b"), "--preprocess", "data"]
    done = _runtime_only(tmp_path, ("torch", "onnxscript", "sklearn", "matplotlib", "scipy"), argv)
    assert done.returncode == 0, done.stderr
    assert "held-out accuracy" in done.stdout
    assert edge_runtime.load(tmp_path / "b", warmup=0).predict(digits.raw(digits.x_test[:1]))[0].label is not None
    # Without onnx: one line naming the install, nothing written.
    done = _runtime_only(
        tmp_path, ("torch", "onnx", "onnxscript", "sklearn", "matplotlib", "scipy"), [*argv[:4], "--out", str(tmp_path / "c")]
    )
    assert done.returncode == 1
    assert "pip install -c constraints.txt '.[wrap]'" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "c").exists()
