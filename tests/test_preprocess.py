"""The bundle's preprocess: per-channel vectors and the channels-last layout, from manifest to runtime,
CLI and server (manifest version 2), and version-1 bundles with scalar preprocess still loading."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import jsonschema
import numpy as np
import pytest

import edge_runtime
from edge_runtime.bundle import MANIFEST_NAME, MANIFEST_VERSION, Manifest, Preprocess, TaskSpec, TensorSpec, load_bundle
from edge_runtime.cli import main
from edge_runtime.errors import ManifestError
from edge_runtime.session import create_session
from onnx_members import make_bundle

SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "edge_runtime" / "manifest.schema.json").read_text())


def _member_probs(bundle: Path, model_x: np.ndarray) -> np.ndarray:
    """Probabilities of the first member evaluated directly on members' inputs (no runtime, no preprocess)."""
    session = create_session(load_bundle(bundle).member_bytes[0])
    return session.run(["probs"], {"x": model_x})[0]


def _runtime_probs(bundle: Path, raw: np.ndarray) -> np.ndarray:
    runtime = edge_runtime.load(bundle, warmup=1, entropy_threshold=50.0)  # member 1 answers every sample
    return np.stack([p.probabilities for p in runtime.predict(raw)])


def test_vectors_apply_per_index_of_axis_1_and_invert_exactly() -> None:
    pre = Preprocess(scale=[2.0, 0.5, 10.0], offset=(1.0, -1.0, 0.0))
    assert pre.scale == (2.0, 0.5, 10.0) and pre.channels == 3 and not pre.is_scalar and not pre.is_identity
    raw = np.random.default_rng(0).normal(size=(4, 3, 5)).astype(np.float32)
    model = pre.apply(raw)
    np.testing.assert_allclose(model, raw * np.array([2.0, 0.5, 10.0])[:, None] + np.array([1.0, -1.0, 0.0])[:, None], rtol=1e-6)
    np.testing.assert_allclose(pre.invert(model), raw, rtol=1e-6, atol=1e-6)
    tabular = Preprocess(scale=[1.0, 3.0], offset=0.5)
    np.testing.assert_allclose(tabular.apply(np.ones((2, 2))), [[1.5, 3.5], [1.5, 3.5]])


def test_nhwc_layout_transposes_then_scales_per_channel() -> None:
    pre = Preprocess(scale=[1.0, 2.0, 3.0], offset=[0.0, 0.0, 1.0], layout="nhwc")
    assert pre.model_shape((8, 6, 3)) == (3, 8, 6) and pre.raw_shape((3, 8, 6)) == (8, 6, 3)
    raw = np.random.default_rng(1).normal(size=(2, 8, 6, 3)).astype(np.float32)
    model = pre.apply(raw)
    assert model.shape == (2, 3, 8, 6) and model.flags.c_contiguous
    np.testing.assert_allclose(model[:, 2], raw[..., 2] * 3.0 + 1.0, rtol=1e-6)
    np.testing.assert_allclose(pre.invert(model), raw, rtol=1e-6, atol=1e-6)
    assert not Preprocess(layout="nhwc").is_identity and Preprocess(layout="nhwc").is_affine_identity


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"scale": [1.0, 0.0]}, "non-zero"),
        ({"offset": [float("nan")]}, "finite"),
        ({"scale": [1.0, 2.0], "offset": [1.0, 2.0, 3.0]}, "one per channel"),
        ({"scale": []}, "empty"),
        ({"layout": "nchw_last"}, "layout"),
        ({"scale": "1"}, "number"),
    ],
)
def test_bad_preprocess_is_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        Preprocess(**kwargs)


def test_task_checks_the_vector_length_against_the_input() -> None:
    with pytest.raises(ManifestError, match="one value per channel"):
        TaskSpec(labels=("a", "b"), input=TensorSpec("x", (-1, 4, 8, 8)), preprocess=Preprocess(scale=[1.0, 2.0, 3.0]))
    with pytest.raises(ManifestError, match="nhwc"):
        TaskSpec(labels=("a", "b"), input=TensorSpec("x", (-1, 16)), preprocess=Preprocess(layout="nhwc"))
    task = TaskSpec(
        labels=("a", "b"), input=TensorSpec("x", (-1, 8, 8, 3)), preprocess=Preprocess(scale=[1.0] * 3, layout="nhwc")
    )
    assert task.model_input_shape == (-1, 3, 8, 8)


def test_per_feature_preprocess_round_trips_raw_client_values_through_a_bundle(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    scales, offsets = rng.uniform(0.001, 10, 6), rng.normal(0, 50, 6)
    pre = Preprocess(scale=tuple(scales.tolist()), offset=tuple(offsets.tolist()))
    bundle = make_bundle(tmp_path / "feat", num_members=2, input_shape=(6,), preprocess=pre)
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    assert manifest["version"] == MANIFEST_VERSION == 2
    assert manifest["task"]["preprocess"] == {"scale": scales.tolist(), "offset": offsets.tolist(), "layout": None}
    jsonschema.validate(manifest, SCHEMA)
    assert load_bundle(bundle).manifest.task.preprocess == pre  # JSON round trip, exactly
    model_x = rng.normal(size=(7, 6)).astype(np.float32)  # what the members were "trained" on
    raw = pre.invert(model_x)  # what a client holds: very different scales per feature
    np.testing.assert_allclose(_runtime_probs(bundle, raw), _member_probs(bundle, model_x), rtol=1e-5, atol=1e-6)


def test_raw_nhwc_client_arrays_give_the_answer_of_the_nchw_model_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pre = Preprocess(scale=(1 / 50.0, 1 / 60.0, 1 / 70.0), offset=(-1.0, -0.5, 0.0), layout="nhwc")
    bundle = make_bundle(tmp_path / "nhwc", num_members=2, input_shape=(3, 6, 5), preprocess=pre)
    spec = load_bundle(bundle).manifest.task
    assert spec.input.shape == (-1, 6, 5, 3) and spec.model_input_shape == (-1, 3, 6, 5)
    raw = np.random.default_rng(3).integers(0, 256, size=(5, 6, 5, 3)).astype(np.uint8)  # HWC, as a camera gives
    expected = _member_probs(bundle, pre.apply(raw))
    np.testing.assert_allclose(_runtime_probs(bundle, raw), expected, rtol=1e-5, atol=1e-6)
    runtime = edge_runtime.load(bundle, warmup=1, entropy_threshold=50.0)
    one = runtime.predict(raw[0])  # one unbatched HWC sample
    np.testing.assert_allclose(one[0].probabilities, expected[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(edge_runtime.errors.InputError, match="6, 5, 3"):
        runtime.predict(pre.apply(raw))  # the members' NCHW layout is not what clients send
    # The CLI: an .npz with x_test and string labels y_test, accuracy against the member's own answers.
    labels = np.array(spec.labels)[expected.argmax(1)]
    labels[0] = spec.labels[(expected[0].argmax() + 1) % 3]  # one wrong label: accuracy 4/5
    data = tmp_path / "hwc.npz"
    np.savez(data, x_test=raw, y_test=labels)
    assert main(["run", str(bundle), "--input", str(data), "--entropy", "50"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 6 and out[-1] == "accuracy 0.8000 (4/5 correct)"


def test_the_server_takes_raw_nhwc_requests(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient
    from edge_runtime.server import ServerConfig, create_app

    pre = Preprocess(scale=(0.1, 0.2, 0.3), offset=(0.0, 1.0, 2.0), layout="nhwc")
    bundle = make_bundle(tmp_path / "srv", num_members=1, input_shape=(3, 4, 4), preprocess=pre)
    raw = np.random.default_rng(4).normal(size=(2, 4, 4, 3)).astype(np.float32)
    request = {"inputs": [{"name": "x", "shape": [2, 4, 4, 3], "datatype": "FP32", "data": raw.ravel().tolist()}]}
    with TestClient(create_app(bundle, ServerConfig(workers=1)), base_url="http://127.0.0.1") as client:
        assert client.get("/v2/models/tiny").json()["inputs"][0]["shape"] == [-1, 4, 4, 3]
        response = client.post("/v2/models/tiny/infer", json=request)
    assert response.status_code == 200, response.text
    probs = {o["name"]: o["data"] for o in response.json()["outputs"]}["probabilities"]
    np.testing.assert_allclose(np.array(probs).reshape(2, 3), _member_probs(bundle, pre.apply(raw)), rtol=1e-5)


def test_version_1_manifest_with_scalar_preprocess_still_loads(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "v1", num_members=2, input_shape=(1, 4, 4), preprocess=Preprocess(scale=1 / 255, offset=-0.5))
    path = bundle / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    manifest["version"] = 1
    manifest["task"]["preprocess"] = {"scale": 1 / 255, "offset": -0.5}  # exactly as version 1 wrote it
    path.write_text(json.dumps(manifest))
    jsonschema.validate(manifest, SCHEMA)
    loaded = load_bundle(bundle).manifest
    assert loaded.version == 1 and loaded.task.preprocess == Preprocess(scale=1 / 255, offset=-0.5)
    assert loaded.task.input.shape == loaded.task.model_input_shape == (-1, 1, 4, 4)
    raw = np.random.default_rng(5).integers(0, 256, size=(3, 1, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(_runtime_probs(bundle, raw), _member_probs(bundle, raw / 255 - 0.5), rtol=1e-5, atol=1e-6)
    # Version 1 never had vectors or layouts: such a manifest is inconsistent and refused.
    manifest["task"]["preprocess"] = {"scale": [1.0], "offset": 0.0}
    with pytest.raises(ManifestError, match="version 2"):
        Manifest.from_dict(manifest)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(manifest, SCHEMA)


def test_run_prints_accuracy_for_id_labels_and_refuses_unknown_names(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x = np.random.default_rng(6).normal(size=(4, 1, 4, 4)).astype(np.float32)
    runtime = edge_runtime.load(tiny_bundle, warmup=1)
    predicted = [p.label for p in runtime.predict(x)]
    np.savez(tmp_path / "ids.npz", x=x, y=np.array(predicted))
    assert main(["run", str(tiny_bundle), "--input", str(tmp_path / "ids.npz"), "--json"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last == {"accuracy": 1.0, "correct": 4, "samples": 4}
    np.savez(tmp_path / "names.npz", x=x, y=np.array(["class_0", "nope", "class_1", "class_2"]))
    assert main(["run", str(tiny_bundle), "--input", str(tmp_path / "names.npz")]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "nope" in err and len(err.strip().splitlines()) == 1
    np.savez(tmp_path / "nox.npz", inputs=x)
    assert main(["run", str(tiny_bundle), "--input", str(tmp_path / "nox.npz")]) == 1
    assert "'x' or 'x_test'" in capsys.readouterr().err


def test_calibrate_takes_class_names(tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    x = np.random.default_rng(7).normal(size=(12, 1, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "val.npz", x=x, y=np.array(["class_0", "class_1", "class_2"] * 4))
    assert main(["calibrate", str(tiny_bundle), "--data", str(tmp_path / "val.npz"), "--dry-run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["saved"] is False


def test_profiler_batches_feed_members_their_layout(tmp_path: Path) -> None:
    from profiles.inputs import task_batches

    pre = Preprocess(scale=(2.0, 1.0, 0.5), offset=(0.0, 1.0, 0.0), layout="nhwc")
    manifest = load_bundle(make_bundle(tmp_path / "prof", num_members=1, input_shape=(3, 5, 4), preprocess=pre)).manifest
    raw = np.random.default_rng(8).normal(size=(6, 5, 4, 3)).astype(np.float32)
    rng = np.random.default_rng(0)
    (members,) = task_batches(manifest, 6, 1, raw, rng)  # what member-level timing feeds: preprocessed, NCHW
    assert members.shape == (6, 3, 5, 4)
    np.testing.assert_allclose(np.sort(members.ravel()), np.sort(pre.apply(raw).ravel()), rtol=1e-6)
    assert task_batches(manifest, 2, 1, raw, rng, preprocess=False)[0].shape == (2, 5, 4, 3)  # for the runtime: raw
    assert task_batches(manifest, 2, 1, None, rng)[0].shape == (2, 3, 5, 4)
