"""The server over the real runtime and real tiny ONNX bundles: answers equal in-process predict."""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import edge_runtime
from edge_runtime.bundle import load_bundle, save_manifest
from edge_runtime.device import fingerprint
from edge_runtime.server import ServerConfig, create_app
from onnx_members import make_bundle

with warnings.catch_warnings():  # starlette 1.x flags httpx (its TestClient's transport) as deprecated
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


def _request(x: np.ndarray, **params: object) -> dict[str, object]:
    return {
        "inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}],
        "parameters": params,
    }


def _outputs(response) -> dict[str, list]:
    return {o["name"]: o["data"] for o in response.json()["outputs"]}


@pytest.fixture
def sample() -> np.ndarray:
    return np.random.default_rng(3).normal(size=(4, 1, 4, 4)).astype(np.float32)


@pytest.mark.parametrize("fixture", ["tiny_bundle", "connected_bundle"])
def test_answers_equal_in_process_predict(fixture: str, sample: np.ndarray, request: pytest.FixtureRequest) -> None:
    bundle: Path = request.getfixturevalue(fixture)
    runtime = edge_runtime.load(bundle, warmup=1)
    expected = runtime.predict(sample, budget_ms="off", entropy_threshold="off")
    with TestClient(create_app(runtime, ServerConfig(workers=1)), base_url="http://127.0.0.1") as client:
        response = client.post("/v2/models/tiny/infer", json=_request(sample, anytime_entropy_threshold="off"))
    assert response.status_code == 200, response.text
    out = _outputs(response)
    np.testing.assert_allclose(
        np.array(out["probabilities"]).reshape(4, 3), np.stack([p.probabilities for p in expected]), rtol=1e-6
    )
    assert out["label"] == [p.label for p in expected]
    assert out["label_name"] == [p.label_name for p in expected]
    assert out["members_used"] == [3, 3, 3, 3] and out["exit_reason"] == ["complete"] * 4
    params = response.json()["parameters"]
    assert params["anytime_member_count"] == 3 and params["anytime_exit_member"] == "member_3"


def test_bundle_path_and_calibrated_threshold(tmp_path: Path, sample: np.ndarray) -> None:
    # A huge calibrated threshold: every sample is confident after the first member.
    bundle = make_bundle(tmp_path / "calibrated", calibration=50.0)
    with TestClient(create_app(bundle, ServerConfig(workers=1)), base_url="http://127.0.0.1") as client:
        assert client.get("/v2/models/tiny").json()["inputs"][0]["shape"] == [-1, 1, 4, 4]
        response = client.post("/v2/models/tiny/infer", json=_request(sample[:1]))
    params = response.json()["parameters"]
    assert params["anytime_exit_reason"] == "confident" and params["anytime_members_used"] == 1
    assert params["anytime_entropy_threshold"] == 50.0


def _with_profile(bundle: Path, member_ms: list[float]) -> Path:
    """Record a latency profile for this device in the manifest: the runtime predicts these latencies."""
    manifest = load_bundle(bundle).manifest
    rows = [{"name": m.name, "latency_ms": {"p50": ms, "p90": ms, "p99": ms}} for m, ms in zip(manifest.members, member_ms)]
    save_manifest(bundle, replace(manifest, profiles={fingerprint(): {"members": rows}}))
    return bundle


def test_budget_stops_the_real_runtime_early(tiny_bundle: Path, sample: np.ndarray) -> None:
    # Members 2 and 3 are predicted (by the profile) to take 500 ms each, member 1 takes 1 ms.
    runtime = edge_runtime.load(_with_profile(tiny_bundle, [1.0, 500.0, 500.0]), warmup=2)
    with TestClient(create_app(runtime, ServerConfig(workers=1)), base_url="http://127.0.0.1") as client:
        budget = client.post("/v2/models/tiny/infer", json=_request(sample[:1], anytime_budget_ms=200))
        roomy = client.post("/v2/models/tiny/infer", json=_request(sample[:1], anytime_budget_ms=10_000))
        # a budget too small for the first member even on an idle server: the first member answers
        tight = client.post("/v2/models/tiny/infer", json=_request(sample[:1], anytime_budget_ms=0.9))
    assert budget.json()["parameters"]["anytime_exit_reason"] == "budget"
    assert budget.json()["parameters"]["anytime_members_used"] == 1
    assert roomy.json()["parameters"]["anytime_exit_reason"] == "complete"
    assert roomy.json()["parameters"]["anytime_members_used"] == 3
    assert tight.json()["parameters"]["anytime_members_used"] == 1
    assert tight.json()["parameters"]["anytime_exit_reason"] == "budget"


def test_uint8_input_reaches_the_members(tiny_bundle: Path) -> None:
    x = np.arange(16, dtype=np.uint8).reshape(1, 1, 4, 4)
    runtime = edge_runtime.load(tiny_bundle, warmup=1)
    expected = runtime.predict(x.astype(np.float32), entropy_threshold="off")[0]
    body = _request(x, anytime_entropy_threshold="off")
    body["inputs"][0]["datatype"] = "UINT8"
    with TestClient(create_app(runtime, ServerConfig(workers=1)), base_url="http://127.0.0.1") as client:
        out = _outputs(client.post("/v2/models/tiny/infer", json=body))
    np.testing.assert_allclose(out["probabilities"], expected.probabilities, rtol=1e-6)


def test_first_member_failure_answers_a_generic_500_and_logs_the_details(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Case untrusted/12: the 500 body carried ORT's source path and a C++ signature."""
    from test_runtime_session import INTERNALS, failing_first_member_bundle

    runtime = edge_runtime.load(failing_first_member_bundle(tmp_path), warmup=1)
    x = np.zeros((1, 1, 4, 4), np.float32)
    x[0, 0, 0, 0] = 1000
    with TestClient(create_app(runtime, ServerConfig(workers=1)), base_url="http://127.0.0.1") as client:
        with caplog.at_level("ERROR", logger="edge_runtime.server"):
            response = client.post("/v2/models/tiny/infer", json=_request(x))
        assert response.status_code == 500
        assert response.json() == {"error": "inference failed: the model could not evaluate this input; see the server log"}
        assert not any(fragment in response.text for fragment in INTERNALS if fragment != "\n")
        assert "member_1" in caplog.text and "reshape" in caplog.text.lower()  # the details stay in the log
        assert client.post("/v2/models/tiny/infer", json=_request(np.zeros((1, 1, 4, 4), np.float32))).status_code == 200


def test_classification_on_the_real_runtime_agrees_with_the_labels(tiny_bundle: Path, sample: np.ndarray) -> None:
    runtime = edge_runtime.load(tiny_bundle, warmup=1)
    body = _request(sample, anytime_entropy_threshold="off")
    body["outputs"] = [{"name": "probabilities", "parameters": {"classification": 2}}, {"name": "label"}, {"name": "label_name"}]
    with TestClient(create_app(runtime, ServerConfig(workers=1)), base_url="http://127.0.0.1") as client:
        response = client.post("/v2/models/tiny/infer", json=body)
    assert response.status_code == 200, response.text
    out = _outputs(response)
    top = np.array(out["probabilities"]).reshape(4, 2)
    for row, label, name in zip(top, out["label"], out["label_name"]):
        value, index, text = row[0].split(":")
        assert (int(index), text) == (label, name)
        assert float(value) >= float(row[1].split(":")[0])
