"""Cascades (combine="replace") composed from one-member bundles: semantics, calibration, budgets, refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import jsonschema
import numpy as np
import onnx
import onnxruntime as ort
import pytest

import edge_runtime
from edge_runtime.bundle import MANIFEST_NAME, Manifest, MemberSpec, Preprocess, TaskSpec, TensorSpec, load_bundle, save_manifest
from edge_runtime.calibrate import CalibrationTarget, calibrate, save_calibration
from edge_runtime.device import fingerprint
from edge_runtime.errors import ChecksumError, ManifestError, ModelLoadError
from exporters.bundle import write_bundle
from exporters.cascade import compose_cascade
from exporters.errors import ExportError
from onnx_members import make_bundle, member_graph

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (1, 4, 4)


def single(
    out: Path,
    name: str,
    seed: int,
    scale: float = 1.0,
    labels: tuple[str, ...] = ("a", "b", "c"),
    shape: tuple[int, ...] = SHAPE,
    preprocess: Preprocess | None = None,
    input_name: str = "x",
) -> Path:
    """A one-member bundle as any exporter writes it: member 1 takes only the task input."""
    pre = preprocess or Preprocess()
    blob = member_graph(0, shape, len(labels), seed=seed, scale=scale)
    if input_name != "x":
        model = onnx.load_from_string(blob)
        model.graph.input[0].name = input_name
        for node in model.graph.node:
            node.input[:] = [input_name if i == "x" else i for i in node.input]
        blob = model.SerializeToString()
    manifest = Manifest(
        name=name,
        task=TaskSpec(labels=labels, input=TensorSpec(name=input_name, shape=(-1, *pre.raw_shape(shape))), preprocess=pre),
        members=(MemberSpec(name=name, file="", sha256="", outputs=("logits", "probs", "entropy", "features")),),
        metadata={"method": name},
    )
    return write_bundle(out / name, manifest, [blob])


def by_hand(bundle: Path, x: np.ndarray) -> list[dict[str, np.ndarray]]:
    """Each member of ``bundle`` run alone with onnxruntime on the preprocessed ``x``: its own outputs."""
    loaded = load_bundle(bundle)
    xm = loaded.manifest.task.preprocess.apply(x)
    outs = []
    for blob in loaded.member_bytes:
        session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
        logits, probs, entropy = session.run(["logits", "probs", "entropy"], {loaded.manifest.task.input.name: xm})
        outs.append({"logits": logits, "probs": probs, "entropy": entropy})
    return outs


@pytest.fixture
def parts(tmp_path: Path) -> list[Path]:
    """A small, unsure model, then a larger, sharper one (different weights)."""
    return [single(tmp_path, "small", seed=1, scale=0.5), single(tmp_path, "big", seed=7, scale=3.0)]


@pytest.fixture
def x() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(64, *SHAPE)).astype(np.float32)


def test_replace_answers_are_each_members_own_exactly(parts: list[Path], tmp_path: Path, x: np.ndarray) -> None:
    result = compose_cascade(parts, tmp_path / "cascade")
    manifest = load_bundle(result.path).manifest
    assert manifest.combine == "replace" and [m.name for m in manifest.members] == ["small", "big"]
    assert manifest.calibration is None and manifest.profiles == {}
    # The member files are the inputs' files, byte for byte.
    assert list(load_bundle(result.path).member_bytes) == [load_bundle(p).member_bytes[0] for p in parts]
    hand = [by_hand(p, x)[0] for p in parts]
    runtime = edge_runtime.load(result.path, entropy_threshold="off", warmup=1)
    prefixes = runtime.evaluate_prefixes(x, batch_size=16)
    for k in range(2):
        np.testing.assert_array_equal(prefixes.probs[k], hand[k]["probs"])
        np.testing.assert_array_equal(prefixes.entropy[k], hand[k]["entropy"])
    # Batched and single-sample predict, all members run: the last member's own answer.
    for answers in (runtime.predict(x), [runtime.predict(row)[0] for row in x[:8]]):
        for i, a in enumerate(answers):
            np.testing.assert_array_equal(a.probabilities, hand[1]["probs"][i])
            assert a.members_used == 2 and a.exit_reason == "complete"


def test_sum_bundle_still_adds_prev_logits(tmp_path: Path, x: np.ndarray) -> None:
    bundle = make_bundle(tmp_path / "sum", num_members=2)
    loaded = load_bundle(bundle)
    xm = loaded.manifest.task.preprocess.apply(x)
    s1, s2 = (ort.InferenceSession(b, providers=["CPUExecutionProvider"]) for b in loaded.member_bytes)
    (l1,) = s1.run(["logits"], {"x": xm})
    (p2,) = s2.run(["probs"], {"x": xm, "prev_logits": l1})
    prefixes = edge_runtime.load(bundle, warmup=0).evaluate_prefixes(x)
    np.testing.assert_array_equal(prefixes.probs[1], p2)
    # And it differs from replacing: member 2 alone would answer something else.
    (own2,) = s2.run(["probs"], {"x": xm, "prev_logits": np.zeros_like(l1)})
    assert not np.allclose(prefixes.probs[1], own2)


def test_calibrated_exit_on_a_cascade_follows_the_entropy_rule(parts: list[Path], tmp_path: Path, x: np.ndarray) -> None:
    cascade = compose_cascade(parts, tmp_path / "cascade").path
    hand = [by_hand(p, x)[0] for p in parts]
    y = hand[1]["probs"].argmax(1).copy()
    y[::5] = (y[::5] + 1) % 3  # the big model is not always right
    runtime = edge_runtime.load(cascade, entropy_threshold="off", warmup=0)
    calibration = calibrate(runtime, x, y, CalibrationTarget.members(1.5))
    save_calibration(cascade, calibration)
    t = calibration.entropy_threshold
    first = hand[0]["entropy"] <= t
    expected = np.where(first, hand[0]["probs"].argmax(1), hand[1]["probs"].argmax(1))
    assert 1.0 <= calibration.mean_members <= 1.5 and 0 < first.sum() < len(x)
    assert calibration.mean_members == pytest.approx(1 + (~first).mean())
    assert calibration.accuracy == pytest.approx((expected == y).mean())
    served = edge_runtime.load(cascade, warmup=0)  # the stored threshold is the default
    answers = [served.predict(row)[0] for row in x]
    assert [a.label for a in answers] == expected.tolist()
    assert [a.members_used for a in answers] == np.where(first, 1, 2).tolist()
    assert {a.exit_reason for a in answers} == {"confident", "complete"}


def test_budget_policy_on_a_cascade(parts: list[Path], tmp_path: Path, x: np.ndarray) -> None:
    cascade = compose_cascade(parts, tmp_path / "cascade").path
    manifest = load_bundle(cascade).manifest
    rows = [{"name": m.name, "latency_ms": {"p50": ms, "p90": ms, "p99": ms}} for m, ms in zip(manifest.members, [1.0, 500.0])]
    save_manifest(cascade, replace(manifest, profiles={fingerprint(): {"members": rows}}))
    runtime = edge_runtime.load(cascade, entropy_threshold="off", warmup=1)
    hand = [by_hand(p, x[:1])[0] for p in parts]
    tight = runtime.predict(x[:1], budget_ms=200)[0]
    roomy = runtime.predict(x[:1], budget_ms=10_000)[0]
    assert (tight.members_used, tight.exit_reason) == (1, "budget")
    np.testing.assert_array_equal(tight.probabilities, hand[0]["probs"][0])
    assert (roomy.members_used, roomy.exit_reason) == (2, "complete")
    np.testing.assert_array_equal(roomy.probabilities, hand[1]["probs"][0])


def test_profile_select_and_server_work_on_a_cascade(parts: list[Path], tmp_path: Path, x: np.ndarray) -> None:
    import warnings

    from profiles import MeasureConfig, SelectionError, evaluate_candidates, find_profile, profile_bundle, store_profile
    from profiles.select import auto_budgets

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

    from edge_runtime.server import ServerConfig, create_app

    cascade = compose_cascade(parts, tmp_path / "cascade").path
    fast = MeasureConfig(min_queries=20, min_seconds=0.0, warmup_queries=2, batch=2, pool=4, memory_probe=False)
    store_profile(cascade, profile_bundle(cascade, fast, data=x))
    profile = find_profile(cascade)
    assert [m["name"] for m in profile["members"]] == ["small", "big"] and len(profile["prefixes"]) == 2
    assert [sorted(m["inputs"]) for m in profile["members"]] == [["x"], ["x"]]  # no prev_logits in a cascade
    assert [m["conditional_on"] for m in profile["members"]] == [[], []]
    y = by_hand(parts[1], x)[0]["probs"].argmax(1)
    save_calibration(cascade, calibrate(edge_runtime.load(cascade, warmup=0), x, y, CalibrationTarget.members(1.5)))
    # Budgets no member 2 fits / every member fits: the runtime's real runs exit at member 1 / run both.
    candidates = evaluate_candidates([cascade], x, y, measure=fast, budget_runs=[1e-6, 1e6])
    assert [(c.kind, c.members) for c in candidates] == [
        ("prefix", 1),
        ("prefix", 2),
        ("threshold", 2),
        ("budget", 2),
        ("budget", 2),
    ]
    prefix1, prefix2, _, tight, roomy = candidates
    assert prefix2.accuracy == 1.0  # the labels are the big model's answers
    assert (tight.budget_ms, tight.mean_members, tight.accuracy) == (1e-6, 1.0, prefix1.accuracy)
    assert (roomy.mean_members, roomy.accuracy) == (2.0, 1.0)
    # One latency basis for every point: the profiled latency of the prefix each sample exits at.
    assert tight.latency_ms == pytest.approx(prefix1.latency_ms) and roomy.latency_ms == pytest.approx(prefix2.latency_ms)
    assert auto_budgets(profile) == [
        round((profile["prefixes"][0]["latency_ms"]["p99"] + profile["prefixes"][1]["latency_ms"]["p99"]) / 2, 4)
    ]
    with pytest.raises(SelectionError, match="positive budget"):
        evaluate_candidates([cascade], x, y, measure=fast, budget_runs=[0.0])
    runtime = edge_runtime.load(cascade, warmup=1)
    request = {
        "inputs": [{"name": "x", "shape": [1, *SHAPE], "datatype": "FP32", "data": x[0].ravel().tolist()}],
        "parameters": {"anytime_entropy_threshold": "off"},
    }
    with TestClient(create_app(runtime, ServerConfig(workers=1)), base_url="http://127.0.0.1") as client:
        response = client.post("/v2/models/cascade/infer", json=request)
    assert response.status_code == 200, response.text
    params = response.json()["parameters"]
    assert params["anytime_members_used"] == 2 and params["anytime_exit_member"] == "big"


def test_manifest_matches_schema_and_zip_loads(parts: list[Path], tmp_path: Path) -> None:
    result = compose_cascade(parts, tmp_path / "cascade", name="small-then-big", archive=tmp_path / "c.zip")
    schema = json.loads((ROOT / "edge_runtime" / "manifest.schema.json").read_text())
    data = json.loads((result.path / MANIFEST_NAME).read_text())
    jsonschema.validate(data, schema)
    assert data["combine"] == "replace" and data["name"] == "small-then-big"
    assert [c["bundle"] for c in data["metadata"]["cascade_of"]] == ["small", "big"]
    assert load_bundle(result.archive).manifest.combine == "replace"
    assert edge_runtime.load(result.archive, warmup=0).predict(np.zeros(SHAPE, np.float32))[0].members_used == 2


def test_same_bundle_twice_gets_unique_member_names(parts: list[Path], tmp_path: Path) -> None:
    result = compose_cascade([parts[0], parts[0], parts[1]], tmp_path / "cascade")
    assert [m.name for m in result.manifest.members] == ["small", "small_2", "big"]
    assert len({m.file for m in result.manifest.members}) == 3


def test_order_warning_from_stored_profiles(parts: list[Path], tmp_path: Path) -> None:
    for path, ms in zip(parts, [2.0, 1.0]):  # the "small" model was measured slower than the "big" one
        manifest = load_bundle(path).manifest
        rows = [{"name": manifest.members[0].name, "latency_ms": {"p50": ms, "p90": ms, "p99": ms}}]
        save_manifest(path, replace(manifest, profiles={"some-device": {"members": rows}}))
    result = compose_cascade(parts, tmp_path / "cascade")
    assert result.member_p50_ms == (2.0, 1.0)
    assert len(result.warnings) == 1 and "cheapest first" in result.warnings[0]
    assert compose_cascade(parts[::-1], tmp_path / "reordered").warnings == ()


@pytest.mark.parametrize(
    ("other", "message"),
    [
        (dict(labels=("a", "b", "d")), "share the labels"),
        (dict(labels=("a", "b")), "share the labels"),
        (dict(shape=(1, 4, 5)), "same client input"),
    ],
)
def test_refuses_inputs_of_another_task(parts: list[Path], tmp_path: Path, other: dict, message: str) -> None:
    odd = single(tmp_path / "odd", "odd", seed=3, **other)
    for order in ([parts[0], odd], [odd, parts[0]]):
        with pytest.raises(ExportError, match=message) as info:
            compose_cascade(order, tmp_path / "cascade")
        assert "\n" not in str(info.value)
    assert not (tmp_path / "cascade").exists()


def test_refuses_another_layout(tmp_path: Path) -> None:
    nhwc = single(tmp_path, "nhwc", seed=1, shape=(3, 4, 4), preprocess=Preprocess(layout="nhwc"))
    plain = single(tmp_path, "plain", seed=2, shape=(4, 4, 3))  # the same client shape (4, 4, 3), no transpose
    with pytest.raises(ExportError, match="same layout"):
        compose_cascade([nhwc, plain], tmp_path / "cascade")


def test_other_preprocess_and_input_name_are_adapted(tmp_path: Path, x: np.ndarray) -> None:
    # A student on standardised inputs first, then a model taking raw values under its own input name.
    student = single(tmp_path, "student", seed=1, preprocess=Preprocess(scale=0.5, offset=0.25))
    raw_model = single(tmp_path, "raw", seed=2, scale=3.0, input_name="image")
    result = compose_cascade([student, raw_model], tmp_path / "cascade")
    assert len(result.warnings) == 1 and "input 'image' fed as 'x'" in result.warnings[0]
    assert "preprocess" in result.manifest.members[1].info["cascade_adapted"]
    assert "cascade_adapted" not in result.manifest.members[0].info
    assert result.manifest.task == load_bundle(student).manifest.task
    prefixes = edge_runtime.load(result.path, entropy_threshold="off", warmup=0).evaluate_prefixes(x)
    np.testing.assert_array_equal(prefixes.probs[0], by_hand(student, x)[0]["probs"])
    np.testing.assert_allclose(prefixes.probs[1], by_hand(raw_model, x)[0]["probs"], atol=1e-6)


def test_refuses_multi_member_inputs_missing_files_and_one_bundle(parts: list[Path], tmp_path: Path) -> None:
    ensemble = make_bundle(tmp_path / "ens", num_members=2, input_shape=SHAPE)
    with pytest.raises(ExportError, match="has 2 members; a cascade composes one-member bundles"):
        compose_cascade([parts[0], ensemble], tmp_path / "cascade")
    with pytest.raises(ExportError, match="at least two bundles"):
        compose_cascade(parts[:1], tmp_path / "cascade")
    (parts[1] / "big.onnx").unlink()
    with pytest.raises(ChecksumError, match="missing"):
        compose_cascade(parts, tmp_path / "cascade")
    with pytest.raises(ManifestError, match="does not exist"):
        compose_cascade([parts[0], tmp_path / "nowhere"], tmp_path / "cascade")
    assert not (tmp_path / "cascade").exists()


def test_replace_bundle_refuses_members_that_take_prev_logits(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "sum", num_members=2)
    manifest = load_bundle(bundle).manifest
    save_manifest(bundle, replace(manifest, combine="replace"))
    with pytest.raises(ModelLoadError, match="takes 'prev_logits', but a combine='replace' cascade feeds none"):
        edge_runtime.load(bundle, warmup=0)
    with pytest.raises(ManifestError, match="combine 'max' is unknown"):
        replace(manifest, combine="max")


_BLOCK = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "onnx", "sklearn", "matplotlib"):
            raise ImportError(f"{name} is not installed (runtime-only install)", name=name)
        return None
sys.meta_path.insert(0, Block())
"""


def test_cli_composes_on_a_runtime_only_install(parts: list[Path], tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_BLOCK)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    check = (
        "import sys; from distill.cli import main; code = main(sys.argv[1:]); "
        "assert 'torch' not in sys.modules and 'onnx' not in sys.modules; sys.exit(code)"
    )

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", check, *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )

    done = cli("cascade", *map(str, parts), "--out", str(tmp_path / "c"), "--zip", str(tmp_path / "c.zip"), "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["members"] == ["small", "big"] and out["combine"] == "replace" and out["warnings"] == []
    np.save(tmp_path / "in.npy", np.zeros((2, *SHAPE), np.float32))
    ran = cli("run", str(tmp_path / "c.zip"), "--input", str(tmp_path / "in.npy"), "--json")
    assert ran.returncode == 0, ran.stderr
    x = np.random.default_rng(2).normal(size=(40, *SHAPE)).astype(np.float32)
    np.savez(tmp_path / "val.npz", x=x, y=by_hand(parts[1], x)[0]["probs"].argmax(1))
    chosen = cli(
        "select",
        str(tmp_path / "c"),
        "--data",
        str(tmp_path / "val.npz"),
        "--min-queries",
        "20",
        "--min-seconds",
        "0",
        "--budget-runs",
        "0.000001,1000",
        "--json",
    )
    assert chosen.returncode == 0, chosen.stderr
    rows = json.loads(chosen.stdout)["candidates"]
    assert [(r["kind"], r["budget_ms"], r["mean_members"]) for r in rows] == [
        ("prefix", None, 1.0),
        ("prefix", None, 2.0),
        ("budget", 1e-6, 1.0),
        ("budget", 1000.0, 2.0),
    ]
    ensemble = make_bundle(tmp_path / "ens", num_members=2, input_shape=SHAPE)
    refused = cli("cascade", str(parts[0]), str(ensemble), "--out", str(tmp_path / "d"))
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1
    assert "one-member bundles" in refused.stderr and not (tmp_path / "d").exists()
    raw_model = single(tmp_path, "raw", seed=2, input_name="image", preprocess=Preprocess(scale=2.0))
    needs_onnx = cli("cascade", str(parts[0]), str(raw_model), "--out", str(tmp_path / "e"))
    assert needs_onnx.returncode == 1 and len(needs_onnx.stderr.strip().splitlines()) == 1
    assert "needs the onnx package" in needs_onnx.stderr and not (tmp_path / "e").exists()


def test_bundles_from_the_real_exporters_compose(tmp_path: Path) -> None:
    """A torch student through export_model (standardised inputs, input 'x') then a user's ONNX wrapped by
    wrap_onnx (raw pixels, input 'pixels'): each cascade prefix answers as its own bundle does."""
    torch = pytest.importorskip("torch")
    from onnx import TensorProto, helper, numpy_helper

    from distill.data import load_dataset
    from exporters import export_model, wrap_onnx

    digits = load_dataset("digits")

    def lstsq(x: np.ndarray) -> np.ndarray:
        x = x.reshape(len(x), -1)
        return np.linalg.lstsq(np.c_[x, np.ones(len(x))], np.eye(10)[digits.y_train], rcond=None)[0].astype(np.float32)

    w = lstsq(digits.x_train)
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(w.shape[0] - 1, 10))
    with torch.no_grad():
        student[1].weight.copy_(torch.from_numpy(w[:-1].T.copy()))
        student[1].bias.copy_(torch.from_numpy(w[-1]))
    first = export_model(
        student, digits.task_spec(), tmp_path / "student", heldout=(digits.x_test, digits.y_test), name="student"
    ).path
    raw_test = digits.raw(digits.x_test)
    w = lstsq(digits.raw(digits.x_train))
    shape = list(digits.raw_input_shape)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["pixels"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "W"], ["mm"]),
            helper.make_node("Add", ["mm", "b"], ["scores"]),
        ],
        "user",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", *shape])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(w[:-1], "W"), numpy_helper.from_array(w[-1], "b")],
    )
    user = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    user.ir_version = 8
    raw_task = replace(digits.task_spec(), preprocess=Preprocess())
    second = wrap_onnx(user, raw_task, tmp_path / "user", heldout=(raw_test, digits.y_test), name="user").path
    result = compose_cascade([first, second], tmp_path / "cascade")
    assert [m.name for m in result.manifest.members] == ["student", "user"]
    cascade = edge_runtime.load(result.path, entropy_threshold="off", warmup=0).evaluate_prefixes(raw_test)
    alone = [edge_runtime.load(p, warmup=0).evaluate_prefixes(raw_test).probs[0] for p in (first, second)]
    np.testing.assert_array_equal(cascade.probs[0], alone[0])
    np.testing.assert_allclose(cascade.probs[1], alone[1], atol=1e-5)
    assert (cascade.labels[1] == alone[1].argmax(1)).mean() > 0.99
