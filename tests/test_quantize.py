"""INT8 bundles (issue 18): every member of any bundle quantized, gated against the float bundle, written atomically.

Tiny onnx.helper members (tests/onnx_members.py), labels = the float bundle's own answers, so the float
accuracy is 100% at the last prefix and the INT8 accuracy there is its agreement with float.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import onnx
import pytest

import edge_runtime
from edge_runtime.bundle import MANIFEST_NAME, Manifest, Preprocess, Quantization, load_bundle
from edge_runtime.errors import ManifestError
from exporters.cascade import compose_cascade
from exporters.errors import ExportError, VerificationError
from exporters.quantize import QuantizeConfig, float_head_nodes, quantize_bundle
from onnx_members import make_bundle

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "edge_runtime" / "manifest.schema.json").read_text())
_HEAD_OPS = {"Softmax", "LogSoftmax", "ReduceSum", "Neg"}


def _data(bundle: Path, n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Raw inputs and the float bundle's own labels (its last prefix)."""
    runtime = edge_runtime.load(bundle, warmup=0)
    shape = runtime.manifest.task.input.shape[1:]
    x = np.random.default_rng(seed).normal(size=(n, *shape)).astype(np.float32)
    return x, runtime.evaluate_prefixes(x).labels[-1]


def _quantize(bundle: Path, out: Path, **config: object):
    """Quantize with the mechanics under test; random tiny members have many near-ties, so a few labels may
    flip (agreement is asserted by each test), hence a 5-point gate here and the default one where gated."""
    config.setdefault("max_loss", 5.0)
    x, y = _data(bundle)
    return quantize_bundle(bundle, out, calibration=x[:300], heldout=(x[300:], y[300:]), config=QuantizeConfig(**config))


def _dequantized(graph: onnx.GraphProto) -> set[str]:
    return {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}


def _check_int8_members(path: Path) -> None:
    """Every member holds QDQ pairs, and its head reads float tensors computed in float (not dequantized)."""
    for spec in load_bundle(path).manifest.members:
        graph = onnx.load(path / spec.file).graph
        ops = [n.op_type for n in graph.node]
        assert "QuantizeLinear" in ops and "DequantizeLinear" in ops, spec.name
        dq = _dequantized(graph)
        for node in graph.node:
            if node.op_type in _HEAD_OPS:
                assert not set(node.input) & dq, f"{spec.name}: {node.op_type} reads a dequantized tensor"
        producer = next(n for n in graph.node if "logits" in n.output)
        assert producer.op_type not in ("QuantizeLinear", "DequantizeLinear")


def test_single_member_bundle_quantizes_runs_in_the_runtime_and_agrees(tmp_path: Path) -> None:
    float_path = make_bundle(tmp_path / "f", num_members=1, hidden=32)
    x, y = _data(float_path, seed=1)
    result = _quantize(float_path, tmp_path / "q")
    _check_int8_members(result.path)
    gate = result.prefixes[0]
    assert gate.float_accuracy == 1.0 and gate.agreement >= 0.95 and gate.max_prob_diff < 0.2
    # The runtime, as a device runs it: labels agree with float on most samples, at batch 1 and in a batch.
    runtime = edge_runtime.load(result.path)
    batch = [p.label for p in runtime.predict(x[:200])]
    single = [runtime.predict(x[i])[0].label for i in range(50)]
    assert np.mean(np.array(batch) == y[:200]) >= 0.95
    assert single == batch[:50]
    q = runtime.manifest.quantization
    assert q is not None and (q.method, q.format, q.activation_type, q.calibration) == ("static", "QDQ", "uint8", "minmax")
    assert q.calibration_samples == 256 and q.source["name"] == "tiny" and q.gates["num_heldout"] == 300


def test_bdistil_like_bundle_with_connections_keeps_its_wiring(tmp_path: Path) -> None:
    float_path = make_bundle(
        tmp_path / "f",
        num_members=2,
        connections=True,
        distinct_connection_names=True,
        preprocess=Preprocess(scale=2.0, offset=-1.0),
    )
    result = _quantize(float_path, tmp_path / "q", per_channel=True, calibration="percentile")
    float_m, int8_m = load_bundle(float_path).manifest, load_bundle(result.path).manifest
    assert [m.connections for m in int8_m.members] == [m.connections for m in float_m.members]
    assert [m.outputs for m in int8_m.members] == [m.outputs for m in float_m.members]
    assert int8_m.combine == "sum" and int8_m.task == float_m.task
    _check_int8_members(result.path)
    # The prev_logits sum stays float: its Add reads prev_logits itself.
    graph = onnx.load(result.path / int8_m.members[1].file).graph
    assert any(n.op_type == "Add" and "prev_logits" in n.input and "logits" in n.output for n in graph.node)
    assert len(result.prefixes) == 2 and all(g.agreement >= 0.95 for g in result.prefixes)
    assert int8_m.quantization.per_channel and int8_m.quantization.calibration == "percentile"
    assert int8_m.members[1].info["int8"]["member"] == "member_2"
    x, y = _data(float_path, seed=2)
    labels = edge_runtime.load(result.path, warmup=0).evaluate_prefixes(x).labels[-1]
    assert np.mean(labels == y) >= 0.95


def test_cascade_quantizes_every_member(tmp_path: Path) -> None:
    small = make_bundle(tmp_path / "small", num_members=1, hidden=8)
    big = make_bundle(tmp_path / "big", num_members=1, hidden=64)
    cascade = compose_cascade([small, big], tmp_path / "cascade").path
    result = _quantize(cascade, tmp_path / "q", calibration="entropy")
    manifest = load_bundle(result.path).manifest
    assert manifest.combine == "replace" and len(manifest.members) == 2
    _check_int8_members(result.path)
    assert all(g.agreement >= 0.9 for g in result.prefixes)


def test_dynamic_method_records_no_calibration(tmp_path: Path) -> None:
    float_path = make_bundle(tmp_path / "f", num_members=1, hidden=32)
    result = _quantize(float_path, tmp_path / "q", method="dynamic")
    q = load_bundle(result.path).manifest.quantization
    assert (q.method, q.format, q.activation_type, q.calibration, q.calibration_samples) == (
        "dynamic",
        "QOperator",
        None,
        None,
        0,
    )
    ops = {n.op_type for n in onnx.load(result.path / "member_1.onnx").graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeLinear" in ops
    assert result.prefixes[0].agreement >= 0.9


def test_a_failed_accuracy_gate_writes_nothing_and_keeps_the_old_bundle(tmp_path: Path) -> None:
    float_path = make_bundle(tmp_path / "f", num_members=1, hidden=32)
    x, y = _data(float_path)
    out = tmp_path / "q"
    # Activation ranges calibrated on inputs 1000x smaller than the held-out ones clip nearly everything.
    with pytest.raises(VerificationError) as failed:
        quantize_bundle(float_path, out, calibration=x[:300] * 1e-3, heldout=(x[300:], y[300:]))
    message = str(failed.value)
    assert "\n" not in message and "nothing written" in message and "--max-loss 0.5" in message
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]  # no staging directory left behind
    # An existing bundle at --out survives a refused run.
    _quantize(float_path, out)
    before = (out / MANIFEST_NAME).read_bytes()
    with pytest.raises(VerificationError):
        quantize_bundle(float_path, out, calibration=x[:300] * 1e-3, heldout=(x[300:], y[300:]))
    assert (out / MANIFEST_NAME).read_bytes() == before


def test_bad_inputs_are_refused_in_one_line(tmp_path: Path) -> None:
    float_path = make_bundle(tmp_path / "f", num_members=1)
    x, y = _data(float_path)
    cases = [
        (dict(calibration=x[:, 0], heldout=(x, y)), "raw inputs"),
        (dict(calibration=x, heldout=(x, y[:-1])), "one per input"),
        (dict(calibration=x, heldout=(x, y + 10)), "must lie in"),
        (dict(calibration=np.full_like(x, np.nan), heldout=(x, y)), "NaN"),
    ]
    for kwargs, fragment in cases:
        with pytest.raises(ExportError, match=fragment) as failed:
            quantize_bundle(float_path, tmp_path / "q", **kwargs)
        assert "\n" not in str(failed.value)
    with pytest.raises(ExportError, match="calibration 'kl'"):
        QuantizeConfig(calibration="kl")
    q = _quantize(float_path, tmp_path / "q").path
    with pytest.raises(ExportError, match="already quantized"):
        quantize_bundle(q, tmp_path / "qq", calibration=x, heldout=(x, y))
    assert not (tmp_path / "qq").exists()


def test_manifest_round_trip_schema_and_old_bundles(tmp_path: Path) -> None:
    float_path = make_bundle(tmp_path / "f", num_members=2, connections=True)
    q_path = _quantize(float_path, tmp_path / "q").path
    data = json.loads((q_path / MANIFEST_NAME).read_text())
    jsonschema.validate(data, SCHEMA)
    manifest = Manifest.from_dict(data)
    assert Manifest.from_dict(manifest.to_dict()) == manifest
    assert data["quantization"]["format"] == "QDQ" and manifest.quantization == Quantization.from_dict(data["quantization"])
    # A float bundle's manifest has no quantization key at all (it reads as before).
    float_data = json.loads((float_path / MANIFEST_NAME).read_text())
    assert "quantization" not in float_data and Manifest.from_dict(float_data).quantization is None
    jsonschema.validate(float_data, SCHEMA)
    # A wrong record is one ManifestError line, at load.
    for bad, fragment in (
        ({"method": "fp4"}, "method 'fp4'"),
        ("int8", "quantization must be an object"),
        ({"method": "static", "activation_type": "uint8", "calibration": None}, "needs calibration"),
    ):
        data["quantization"] = bad
        (q_path / MANIFEST_NAME).write_text(json.dumps(data))
        with pytest.raises(ManifestError, match=fragment) as failed:
            load_bundle(q_path)
        assert "\n" not in str(failed.value)


def test_float_head_nodes_cover_the_head_and_the_prev_logits_sum() -> None:
    from onnx_members import member_graph

    graph = onnx.load_from_string(member_graph(1, (1, 4, 4), 3)).graph
    for i, node in enumerate(graph.node):
        node.name = f"n{i}"
    kept = {n.op_type for n in graph.node if n.name in set(float_head_nodes(graph))}
    assert kept == {"Add", "Softmax", "LogSoftmax", "Mul", "ReduceSum", "Neg"}


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
_TRAIN_ONLY = ("torch", "onnxscript", "onnx_ir", "sklearn", "scipy", "sympy", "mnist1d", "tqdm", "torch_pruning", "matplotlib")


def _cli(tmp_path: Path, blocked: tuple[str, ...], argv: list[str]) -> subprocess.CompletedProcess[str]:
    site = tmp_path / f"site_{len(blocked)}"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_BLOCK.format(blocked=blocked))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    check = (
        "import sys; from distill.cli import main; code = main(sys.argv[1:]); "
        "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(code)"
    )
    return subprocess.run(
        [sys.executable, "-c", check, *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180
    )


def test_cli_runs_on_the_runtime_plus_wrap_install_and_the_runtime_never_imports_it(tmp_path: Path) -> None:
    float_path = make_bundle(tmp_path / "f", num_members=2, connections=True)
    x, y = _data(float_path)
    np.savez(tmp_path / "val.npz", x=x, y=y)
    argv = ["quantize", str(float_path), "--data", str(tmp_path / "val.npz"), "--calibration-samples", "200", "--max-loss", "5"]
    done = _cli(tmp_path, _TRAIN_ONLY, [*argv, "--out", str(tmp_path / "q")])
    assert done.returncode == 0, done.stderr
    assert "top-1 agreement" in done.stdout and f"bundle: {tmp_path / 'q'}" in done.stdout
    q = load_bundle(tmp_path / "q").manifest.quantization
    assert q.calibration_samples == 200 and q.gates["num_heldout"] == 400
    # Without onnx: one line naming the extra, nothing written.
    missing = _cli(tmp_path, (*_TRAIN_ONLY, "onnx"), [*argv, "--out", str(tmp_path / "q2")])
    assert missing.returncode == 1 and "'.[wrap]'" in missing.stderr and missing.stderr.count("\n") == 1
    assert not (tmp_path / "q2").exists()
    # The runtime runs the INT8 bundle without importing the quantizer (or onnx).
    code = (
        "import sys, numpy as np, edge_runtime; r = edge_runtime.load(sys.argv[1]); r.predict(np.zeros((2, 1, 4, 4), np.float32)); "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('exporters', 'onnx', 'torch') or m == 'onnxruntime.quantization']; "
        "assert not bad, bad"
    )
    ran = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "q")],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr


def test_inspect_shows_the_quantization(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edge_runtime.cli import main

    q_path = _quantize(make_bundle(tmp_path / "f", num_members=1), tmp_path / "q", per_channel=True).path
    assert main(["inspect", str(q_path)]) == 0
    assert (
        "int8     static QDQ, weights int8 per-channel, activations uint8 (minmax on 256 samples); from 'tiny'"
        in capsys.readouterr().out
    )
    assert main(["inspect", str(tmp_path / "f"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["quantization"] is None
