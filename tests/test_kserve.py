"""The KServe adapter (``python -m edge_runtime.kserve``) as a real KServe ModelServer process on a loopback port.

Answers from KServe's own V2 REST client (JSON and Triton's binary tensor extension) must carry the labels
the in-process runtime gives and the ``anytime_*`` parameters ``anytime-edge serve`` gives. Skipped, with
the reason, where the ``kserve`` extra is not installed (``make test`` installs it through ``all``).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import httpx
import numpy as np
import pytest

import edge_runtime
from onnx_members import make_bundle

kserve = pytest.importorskip(
    "kserve", reason="the kserve extra is not installed (pip install -c constraints.txt '.[kserve]', or make install)"
)
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig  # noqa: E402 - after the importorskip

from edge_runtime.server import ServerConfig, create_app  # noqa: E402 - the serve extra comes with kserve's

with warnings.catch_warnings():  # starlette 1.x flags httpx (its TestClient's transport) as deprecated
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 90.0  # importing kserve (pandas, grpc, kubernetes) takes seconds on a busy 2-core box


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # calibrated at 0.5 nats, so the default threshold stops some samples early
    return make_bundle(tmp_path_factory.mktemp("kserve") / "bundle", num_members=3, calibration=0.5)


@pytest.fixture(scope="module")
def server(bundle: Path) -> Iterator[str]:
    """The adapter's base URL on 127.0.0.1 (KServe's REST server; gRPC off)."""
    port = _free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge_runtime.kserve",
            str(bundle),
            "--http_port",
            str(port),
            "--enable_grpc",
            "false",
            "--inference-workers",
            "1",
            "--configure_logging",
            "false",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the adapter exited {proc.returncode}: {proc.stdout.read() if proc.stdout else ''}")
            try:
                if httpx.get(f"{url}/v2/models/tiny/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the adapter was not ready within {START_TIMEOUT_S:.0f} s")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def sample() -> np.ndarray:
    return np.random.default_rng(11).normal(size=(5, 1, 4, 4)).astype(np.float32)


def _infer(url: str, x: np.ndarray, binary: bool, **params: Any) -> Any:
    """One request through KServe's own V2 REST client; returns its ``InferResponse``."""
    tensor = InferInput(name="x", shape=list(x.shape), datatype="FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    request = InferRequest(model_name="tiny", infer_inputs=[tensor], parameters=params or None)

    async def call() -> Any:
        client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
        try:
            return await client.infer(url, request, model_name="tiny")
        finally:
            await client.close()

    return asyncio.run(call())


def _served_parameters(bundle: Path, x: np.ndarray, **params: Any) -> dict[str, Any]:
    """The ``anytime_*`` response parameters of ``anytime-edge serve``'s app for the same request."""
    body = {
        "inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}],
        "parameters": params,
    }
    with TestClient(create_app(bundle, ServerConfig(workers=1)), base_url="http://127.0.0.1") as client:
        answer = client.post("/v2/models/tiny/infer", json=body)
    assert answer.status_code == 200, answer.text
    return dict(answer.json()["parameters"])


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_v2_client_gets_the_in_process_labels(server: str, bundle: Path, sample: np.ndarray, binary: bool) -> None:
    expected = edge_runtime.load(bundle).predict(sample)  # the bundle's calibrated threshold, no budget
    params = {"binary_data_output": True} if binary else {}
    response = _infer(server, sample, binary, **params)
    outputs = {o.name: o for o in response.outputs}
    assert outputs["label"].as_numpy().tolist() == [p.label for p in expected]
    assert outputs["members_used"].as_numpy().tolist() == [p.members_used for p in expected]
    assert [str(s) if not isinstance(s, bytes) else s.decode() for s in outputs["label_name"].as_numpy().tolist()] == [
        p.label_name for p in expected
    ]
    np.testing.assert_allclose(
        outputs["probabilities"].as_numpy(), np.stack([p.probabilities for p in expected]), rtol=1e-5, atol=1e-6
    )


def test_binary_outputs_on_the_wire(server: str, sample: np.ndarray) -> None:
    # What the client above parsed, seen as bytes: a JSON header of Inference-Header-Content-Length bytes,
    # each output's binary_data_size, then the raw little-endian tensors.
    tensor = InferInput(name="x", shape=list(sample.shape), datatype="FP32")
    tensor.set_data_from_numpy(sample, binary_data=True)
    body, json_length = InferRequest(model_name="tiny", infer_inputs=[tensor], parameters={"binary_data_output": True}).to_rest()
    answer = httpx.post(
        f"{server}/v2/models/tiny/infer",
        content=body,
        timeout=30,
        headers={"content-type": "application/octet-stream", "inference-header-content-length": str(json_length)},
    )
    assert answer.status_code == 200, answer.text
    header_length = int(answer.headers["inference-header-content-length"])
    head = json.loads(answer.content[:header_length])
    sizes = {o["name"]: o["parameters"]["binary_data_size"] for o in head["outputs"]}
    assert "data" not in head["outputs"][0] and sizes["probabilities"] == sample.shape[0] * 3 * 4
    assert len(answer.content) == header_length + sum(sizes.values())
    assert head["parameters"]["anytime_batch_size"] == sample.shape[0]


def test_response_parameters_are_those_of_anytime_edge_serve(server: str, bundle: Path, sample: np.ndarray) -> None:
    response = _infer(server, sample, False, anytime_budget_ms=250.0, anytime_entropy_threshold="off")
    served = _served_parameters(bundle, sample, anytime_budget_ms=250.0, anytime_entropy_threshold="off")
    params = dict(response.parameters)
    assert set(params) == set(served)
    assert params["anytime_budget_ms"] == 250.0 and params["anytime_entropy_threshold"] == "off"
    assert params["anytime_batch_size"] == len(sample) and params["anytime_member_count"] == 3
    # with the threshold off every sample runs every member (250 ms is ample for three tiny members)
    assert params["anytime_members_used"] == 3 and params["anytime_exit_member"] == "member_3"
    assert {k: served[k] for k in ("anytime_members_used", "anytime_exit_reason", "anytime_exit_member")} == {
        k: params[k] for k in ("anytime_members_used", "anytime_exit_reason", "anytime_exit_member")
    }


def test_request_threshold_changes_the_exit(server: str, sample: np.ndarray) -> None:
    # any entropy of 3 classes is below ln 3 < 2 nats: every sample stops after the first member
    eager = _infer(server, sample, False, anytime_entropy_threshold=2.0)
    used = {o.name: o for o in eager.outputs}["members_used"].as_numpy().tolist()
    assert used == [1] * len(sample) and eager.parameters["anytime_exit_reason"] == "confident"
    assert eager.parameters["anytime_entropy_threshold"] == 2.0


def test_bad_requests_are_400_with_the_servers_message(server: str) -> None:
    def post(body: dict[str, Any]) -> httpx.Response:
        return httpx.post(f"{server}/v2/models/tiny/infer", json=body, timeout=30)

    tensor = {"name": "x", "shape": [1, 1, 4, 4], "datatype": "FP32", "data": [0.5] * 16}
    typo = post({"inputs": [tensor], "parameters": {"anytime_budget": 5}})
    assert typo.status_code == 400
    assert "unknown parameter(s) ['anytime_budget']" in typo.json()["error"]
    shape = post({"inputs": [{**tensor, "shape": [1, 4, 4]}]})
    assert shape.status_code == 400 and "prepend the batch dimension" in shape.json()["error"]
    budget = post({"inputs": [tensor], "parameters": {"anytime_budget_ms": -1}})
    assert budget.status_code == 400 and "anytime_budget_ms" in budget.json()["error"]


def test_metadata_names_the_bundles_tensors(server: str) -> None:
    meta = httpx.get(f"{server}/v2/models/tiny", timeout=10).json()
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 1, 4, 4]}]
    assert [o["name"] for o in meta["outputs"]] == [
        "probabilities",
        "label",
        "label_name",
        "members_used",
        "entropy",
        "exit_reason",
    ]


def test_edge_runtime_imports_no_kserve() -> None:
    code = (
        "import sys, edge_runtime, edge_runtime.server, edge_runtime.cli.serve, edge_runtime.kserve; "
        "edge_runtime.load; print(sorted(m for m in ('kserve', 'torch') if m in sys.modules))"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_missing_kserve_is_one_line_naming_the_extra(bundle: Path) -> None:
    code = (
        "import runpy, sys; sys.modules['kserve'] = None; sys.argv = ['x', sys.argv[1]]; "
        "runpy.run_module('edge_runtime.kserve', run_name='__main__')"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, "-c", code, str(bundle)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install -c constraints.txt '.[kserve]'" in lines[0]


# -- in process: the model object KServe calls ----------------------------------------------------------------


def test_raw_tensor_contents_are_read_as_the_binary_extension(bundle: Path, sample: np.ndarray) -> None:
    # gRPC's raw_input_contents reach the model as bytes only (no data list): decoded as the binary extension
    from edge_runtime.kserve import AnytimeModel

    runtime = edge_runtime.load(bundle)
    model = AnytimeModel(runtime, ServerConfig(workers=1))
    model.load()
    tensor = InferInput(name="x", shape=list(sample.shape), datatype="FP32")
    tensor.set_data_from_numpy(sample, binary_data=True)
    assert tensor.data is None
    try:
        response = asyncio.run(model.predict(InferRequest(model_name="tiny", infer_inputs=[tensor], request_id="r1")))
    finally:
        model.stop()
    assert response.id == "r1" and response.model_name == "tiny"
    labels = {o.name: o for o in response.outputs}["label"].as_numpy().tolist()
    assert labels == [p.label for p in runtime.predict(sample)]


def test_nan_from_the_model_is_an_error_not_null() -> None:
    from edge_runtime.errors import EdgeRuntimeError
    from edge_runtime.kserve import AnytimeModel
    from test_server import FakeRuntime

    model = AnytimeModel(FakeRuntime(members=((1, "confident", float("nan")),)), ServerConfig(workers=1))
    spec = model.get_input_types()[0]
    x = np.ones([1, *spec["shape"][1:]], np.float32)
    tensor = InferInput(name=spec["name"], shape=list(x.shape), datatype="FP32", data=x.ravel().tolist())
    try:
        with pytest.raises(EdgeRuntimeError, match="NaN or infinity"):
            asyncio.run(model.predict(InferRequest(model_name=model.name, infer_inputs=[tensor])))
    finally:
        model.stop()
