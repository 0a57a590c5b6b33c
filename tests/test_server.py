"""The V2 server's endpoints, request checking and parameters, against a scripted fake runtime.

The fake stands in for :class:`edge_runtime.AnytimeRuntime` (as httpx's MockTransport stands in for a
network): it records what the server asked for and answers scripted predictions, optionally slowly. The
real runtime on a real tiny bundle is exercised in test_server_bundle.py, the real process in
test_server_process.py, shedding in test_server_shedding.py.
"""

from __future__ import annotations

import json
import threading
import time
import warnings
from typing import Any, Sequence

import numpy as np
import pytest

with warnings.catch_warnings():  # starlette 1.x flags httpx (its TestClient's transport) as deprecated
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from edge_runtime.bundle import Calibration, Manifest, MemberSpec, TaskSpec, TensorSpec
from edge_runtime.errors import InputError, MemberError
from edge_runtime.result import Prediction
from edge_runtime.server import OUTPUT_NAMES, ServerConfig, ServerConfigError, create_app

LABELS = ("cat", "dog", "eel")
SAMPLE_SHAPE = (2, 2)
INFER = "/v2/models/fake/infer"


def fake_manifest(members: int = 3, threshold: float | None = 0.25) -> Manifest:
    """A manifest for a 3-class model taking (N, 2, 2) inputs; no member files are ever read."""
    return Manifest(
        name="fake",
        task=TaskSpec(labels=LABELS, input=TensorSpec(name="x", shape=(-1, *SAMPLE_SHAPE))),
        members=tuple(MemberSpec(name=f"m{k + 1}", file=f"m{k + 1}.onnx", sha256="0" * 64) for k in range(members)),
        calibration=None if threshold is None else Calibration(threshold, "test", 0.9, 1.5),
    )


class FakeRuntime:
    """Answers each sample with class ``int(x.sum()) % 3``, using ``members_used`` from a script.

    Args:
        members: per sample (cycled): (members used, exit reason, entropy).
        delay_s: how long each predict call takes (sleeps; the budget, if any, cuts it short).
        error: raised by predict instead of answering.
    """

    def __init__(
        self,
        members: Sequence[tuple[int, str, float]] = ((2, "confident", 0.1),),
        delay_s: float = 0.0,
        error: BaseException | None = None,
        budget_ms: float | None = None,
    ) -> None:
        self.manifest = fake_manifest()
        self.entropy_threshold = 0.25  # what load() sets from the calibration
        self.budget_ms = budget_ms
        self.script = list(members)
        self.delay_s = delay_s
        self.error = error
        self.calls: list[dict[str, Any]] = []
        self.started = threading.Event()  # set when a predict call begins
        self._lock = threading.Lock()

    def predict(self, x: np.ndarray, budget_ms: Any = None, entropy_threshold: Any = None) -> list[Prediction]:
        with self._lock:
            self.calls.append({"x": np.array(x), "budget_ms": budget_ms, "entropy_threshold": entropy_threshold})
        self.started.set()
        t0 = time.perf_counter()
        if self.delay_s:
            limit = self.delay_s if not isinstance(budget_ms, float) else min(self.delay_s, budget_ms / 1e3)
            time.sleep(limit)
        if self.error is not None:
            raise self.error
        out = []
        for i, row in enumerate(np.asarray(x)):
            used, reason, entropy = self.script[i % len(self.script)]
            label = int(row.sum()) % 3
            probs = np.full(3, 0.1, dtype=np.float32)
            probs[label] = 0.8
            out.append(Prediction(label, LABELS[label], probs, used, reason, entropy, (time.perf_counter() - t0) * 1e3))
        return out


def tensor(data: Any, shape: Sequence[int] = (1, 2, 2), datatype: str = "FP32", name: str = "x") -> dict[str, Any]:
    return {"name": name, "shape": list(shape), "datatype": datatype, "data": data}


def infer_body(*inputs: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"inputs": list(inputs) or [tensor([1, 2, 3, 4])], **extra}


@pytest.fixture
def runtime() -> FakeRuntime:
    return FakeRuntime()


@pytest.fixture
def client(runtime: FakeRuntime):
    with TestClient(create_app(runtime, ServerConfig(workers=1)), base_url="http://127.0.0.1") as c:
        yield c


def output(response: Any, name: str) -> dict[str, Any]:
    return next(o for o in response.json()["outputs"] if o["name"] == name)


def assert_error(response: Any, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert "\n" not in body["error"]
    for fragment in fragments:
        assert fragment in body["error"]


# -- health and metadata ------------------------------------------------------------------------------


def test_health_endpoints(client: TestClient) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}


def test_server_metadata(client: TestClient) -> None:
    meta = client.get("/v2").json()
    assert meta["name"] == "anytime-edge"
    assert isinstance(meta["version"], str) and meta["version"]
    assert meta["extensions"] == ["classification"]


@pytest.mark.parametrize("path", ["/v2/models/fake", "/v2/models/fake/versions/1"])
def test_model_metadata(client: TestClient, path: str) -> None:
    meta = client.get(path).json()
    assert meta["name"] == "fake"
    assert meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 2, 2]}]
    outputs = {o["name"]: (o["datatype"], o["shape"]) for o in meta["outputs"]}
    assert outputs == {
        "probabilities": ("FP32", [-1, 3]),
        "label": ("INT64", [-1]),
        "label_name": ("BYTES", [-1]),
        "members_used": ("INT32", [-1]),
        "entropy": ("FP32", [-1]),
        "exit_reason": ("BYTES", [-1]),
    }


@pytest.mark.parametrize("path", ["/v2/models/fake/ready", "/v2/models/fake/versions/1/ready"])
def test_model_ready(client: TestClient, path: str) -> None:
    assert client.get(path).json() == {"name": "fake", "ready": True}


@pytest.mark.parametrize(
    "method, path, status",
    [
        ("GET", "/v2/models/other", 404),
        ("GET", "/v2/models/other/ready", 404),
        ("POST", "/v2/models/other/infer", 404),
        ("GET", "/v2/models/fake/versions/2", 404),
        ("POST", "/v2/models/fake/versions/7/infer", 404),
        ("GET", "/v3/anything", 404),
        ("GET", INFER, 405),
        ("POST", "/v2/health/live", 405),
    ],
)
def test_unknown_model_path_or_method(client: TestClient, method: str, path: str, status: int) -> None:
    response = client.request(method, path, json=infer_body())
    assert_error(response, status)


def test_model_name_and_defaults_come_from_config() -> None:
    fake = FakeRuntime()
    app = create_app(fake, ServerConfig(model_name="digits", budget_ms=40.0, entropy_threshold=0.7, workers=1))
    with TestClient(app, base_url="http://127.0.0.1") as c:
        assert c.get("/v2/models/digits").json()["name"] == "digits"
        assert_error(c.get("/v2/models/fake"), 404, "digits")
        params = c.post("/v2/models/digits/infer", json=infer_body()).json()["parameters"]
    assert params["anytime_budget_ms"] == 40.0 and params["anytime_entropy_threshold"] == 0.7
    assert fake.calls[0]["entropy_threshold"] == 0.7
    assert 0 < fake.calls[0]["budget_ms"] <= 40.0


# -- inference: data layouts and datatypes ---------------------------------------------------------------


def test_infer_response_shape(client: TestClient, runtime: FakeRuntime) -> None:
    response = client.post(INFER, json=infer_body(id="req-7"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == "fake" and body["model_version"] == "1" and body["id"] == "req-7"
    assert [o["name"] for o in body["outputs"]] == list(OUTPUT_NAMES)
    assert output(response, "label") == {"name": "label", "datatype": "INT64", "shape": [1], "data": [1]}
    assert output(response, "label_name")["data"] == ["dog"]
    probs = output(response, "probabilities")
    assert probs["shape"] == [1, 3] and probs["datatype"] == "FP32"
    assert probs["data"] == pytest.approx([0.1, 0.8, 0.1])
    assert output(response, "members_used")["data"] == [2]
    assert output(response, "exit_reason")["data"] == ["confident"]
    np.testing.assert_array_equal(runtime.calls[0]["x"], np.array([[[1, 2], [3, 4]]], dtype=np.float32))


def test_generated_id_when_request_has_none(client: TestClient) -> None:
    ids = {client.post(INFER, json=infer_body()).json()["id"] for _ in range(2)}
    assert len(ids) == 2 and all(isinstance(i, str) and i for i in ids)


@pytest.mark.parametrize(
    "data",
    [
        [1, 2, 3, 4, 5, 6, 7, 8],
        [[[1, 2], [3, 4]], [[5, 6], [7, 8]]],
    ],
    ids=["flat", "nested"],
)
def test_flat_and_nested_data_are_the_same_batch(client: TestClient, runtime: FakeRuntime, data: list) -> None:
    response = client.post(INFER, json=infer_body(tensor(data, shape=(2, 2, 2))))
    assert response.status_code == 200, response.text
    assert output(response, "label")["data"] == [10 % 3, 26 % 3]
    expected = np.arange(1, 9, dtype=np.float32).reshape(2, 2, 2)
    np.testing.assert_array_equal(runtime.calls[-1]["x"], expected)
    assert runtime.calls[-1]["x"].dtype == np.float32


@pytest.mark.parametrize("datatype", ["UINT8", "UINT16", "INT8", "INT32", "INT64", "FP16", "FP32", "FP64"])
def test_numeric_datatypes_are_accepted(client: TestClient, runtime: FakeRuntime, datatype: str) -> None:
    response = client.post(INFER, json=infer_body(tensor([0, 1, 2, 100], datatype=datatype)))
    assert response.status_code == 200, response.text
    np.testing.assert_array_equal(runtime.calls[-1]["x"].ravel(), [0, 1, 2, 100])


def test_binary_tensor_extension_input(client: TestClient, runtime: FakeRuntime) -> None:
    values = np.array([0.5, -1.0, 2.0, 3.5], dtype="<f4")
    header = json.dumps(
        {"inputs": [{"name": "x", "shape": [1, 2, 2], "datatype": "FP32", "parameters": {"binary_data_size": 16}}]}
    ).encode()
    response = client.post(
        INFER, content=header + values.tobytes(), headers={"Inference-Header-Content-Length": str(len(header))}
    )
    assert response.status_code == 200, response.text
    np.testing.assert_array_equal(runtime.calls[-1]["x"].ravel(), values)


@pytest.mark.parametrize(
    "make, status, fragment",
    [
        (lambda: b"{not json", 400, "not valid JSON"),
        (lambda: b"[1, 2]", 400, "JSON object"),
        (lambda: b"{}", 400, "'inputs'"),
        (lambda: b"[" * 100_000 + b"]" * 100_000, 400, ""),
        (lambda: json.dumps({"inputs": [tensor([1, 2, 3, 4], name="y")]}), 400, "takes 'x'"),
        (lambda: json.dumps({"inputs": [tensor([1, 2, 3, 4]), tensor([1, 2, 3, 4])]}), 400, "exactly one"),
        (lambda: json.dumps({"inputs": [tensor([1, 2, 3, 4], shape=(1, 4))]}), 400, "[N, 2, 2]"),
        (lambda: json.dumps({"inputs": [tensor([1, 2, 3, 4], shape=(2, 2))]}), 400, "prepend the batch"),
        (lambda: json.dumps({"inputs": [tensor([], shape=(0, 2, 2))]}), 400, "at least one sample"),
        (lambda: json.dumps({"inputs": [tensor([1, 2, 3], shape=(1, 2, 2))]}), 400, "4 values"),
        (lambda: json.dumps({"inputs": [tensor([[1, 2], [3]], shape=(1, 2, 2))]}), 400, "ragged"),
        (lambda: json.dumps({"inputs": [tensor(["a", "b", "c", "d"])]}), 400, "non-numbers"),
        (lambda: json.dumps({"inputs": [tensor([1, 2, 3, None])]}), 400, "non-numbers"),
        (lambda: json.dumps({"inputs": [tensor([1, 2, 3, 4], datatype="BOOL")]}), 400, "cannot be BOOL"),
        (lambda: json.dumps({"inputs": [tensor(["a"] * 4, datatype="BYTES")]}), 400, "cannot be BYTES"),
        (lambda: json.dumps({"inputs": [tensor([1, 2, 3, 4], datatype="FLOAT")]}), 400, "unknown datatype"),
        (lambda: json.dumps({"inputs": [tensor([1, 2, 3, 4], datatype=["FP32"])]}), 400, "unknown datatype"),
        (lambda: json.dumps({"inputs": [tensor([1, 2, 3, 4.5], datatype="INT32")]}), 400, "non-integer"),
        (lambda: json.dumps({"inputs": [tensor([1, 2, 3, 300], datatype="UINT8")]}), 400, "range"),
        (lambda: json.dumps({"inputs": [tensor([1, 2, 3, -1], datatype="UINT8")]}), 400, "range"),
        (lambda: json.dumps({"inputs": [tensor([1, 2, 3, 1e5], datatype="FP16")]}), 400, "FP16"),
        (lambda: json.dumps({"inputs": [tensor([1, 2, 3, 1e300], datatype="FP64")]}), 400, "float32"),
        (lambda: json.dumps({"inputs": [tensor([1, 2, 3, float("nan")])]}), 400, "NaN"),
        (lambda: json.dumps({"inputs": [tensor([1, 2, 3, float("inf")])]}), 400, "NaN or infinity"),
        (lambda: json.dumps({"inputs": [tensor([1, 2, 3, 4])], "id": 5}), 400, "'id'"),
        (lambda: json.dumps({"inputs": [tensor([1, 2, 3, 4])], "outputs": [{"name": "logits"}]}), 400, "choose from"),
        (lambda: json.dumps({"inputs": [tensor([1, 2, 3, 4])], "outputs": [{"name": "label"}] * 2}), 400, "twice"),
    ],
)
def test_bad_requests_are_400_with_one_line(client: TestClient, make: Any, status: int, fragment: str) -> None:
    response = client.post(INFER, content=make())
    assert_error(response, status, fragment)
    # the server is still up and answering
    assert client.post(INFER, json=infer_body()).status_code == 200


def test_bad_binary_requests(client: TestClient) -> None:
    header = json.dumps(
        {"inputs": [{"name": "x", "shape": [1, 2, 2], "datatype": "FP32", "parameters": {"binary_data_size": 16}}]}
    ).encode()
    short = client.post(INFER, content=header + b"\0" * 12, headers={"Inference-Header-Content-Length": str(len(header))})
    assert_error(short, 400, "binary")
    nan = np.array([1, np.nan, 0, 0], dtype="<f4").tobytes()
    bad = client.post(INFER, content=header + nan, headers={"Inference-Header-Content-Length": str(len(header))})
    assert_error(bad, 400, "NaN")
    no_header = client.post(INFER, content=header)
    assert_error(no_header, 400, "Inference-Header-Content-Length")
    too_long = client.post(INFER, content=header, headers={"Inference-Header-Content-Length": "99999"})
    assert_error(too_long, 400, "does not fit")


def test_body_limit_413() -> None:
    app = create_app(FakeRuntime(), ServerConfig(workers=1, max_body_bytes=2048))
    with TestClient(app, base_url="http://127.0.0.1") as c:
        big = json.dumps(infer_body(tensor([1, 2, 3, 4]), padding="x" * 4096))
        assert_error(c.post(INFER, content=big), 413, "--max-body-mb")

        def chunks():  # no Content-Length: the limit holds while streaming too
            for _ in range(8):
                yield b" " * 1024

        assert_error(c.post(INFER, content=chunks()), 413, "limit")
        assert c.post(INFER, json=infer_body()).status_code == 200


# -- parameters -------------------------------------------------------------------------------------------


def test_request_parameters_reach_the_runtime(client: TestClient, runtime: FakeRuntime) -> None:
    params = {"anytime_budget_ms": 50, "anytime_entropy_threshold": 0.05, "triton_other": 1}
    response = client.post(INFER, json=infer_body(parameters=params))
    assert response.status_code == 200, response.text
    call = runtime.calls[-1]
    assert call["entropy_threshold"] == 0.05
    # the budget counts from arrival: the runtime gets what is left, less the reserve for the answer
    assert 0.0 < call["budget_ms"] < 50.0  # less than asked (time since arrival, reserve); no lower bound: real clock
    out = response.json()["parameters"]
    assert out["anytime_budget_ms"] == 50.0 and out["anytime_entropy_threshold"] == 0.05


def test_defaults_and_off_spellings(client: TestClient, runtime: FakeRuntime) -> None:
    client.post(INFER, json=infer_body())
    assert runtime.calls[-1]["budget_ms"] == "off"
    assert runtime.calls[-1]["entropy_threshold"] == 0.25  # the runtime's calibrated default
    params = {"anytime_budget_ms": "off", "anytime_entropy_threshold": "off"}
    out = client.post(INFER, json=infer_body(parameters=params)).json()["parameters"]
    assert runtime.calls[-1]["entropy_threshold"] == "off" and runtime.calls[-1]["budget_ms"] == "off"
    assert out["anytime_budget_ms"] == "off" and out["anytime_entropy_threshold"] == "off"
    out = client.post(INFER, json=infer_body(parameters={"anytime_entropy_threshold": "calibrated"})).json()
    assert out["parameters"]["anytime_entropy_threshold"] == 0.25


@pytest.mark.parametrize(
    "params, fragment",
    [
        ({"anytime_budget_ms": 0}, "anytime_budget_ms"),
        ({"anytime_budget_ms": -5}, "anytime_budget_ms"),
        ({"anytime_budget_ms": "fast"}, "anytime_budget_ms"),
        ({"anytime_budget_ms": True}, "anytime_budget_ms"),
        ({"anytime_entropy_threshold": -0.1}, "anytime_entropy_threshold"),
        ({"anytime_entropy_threshold": "calibrate"}, "anytime_entropy_threshold"),
        ({"anytime_budget": 5}, "unknown parameter"),
        ([1, 2], "JSON object"),
    ],
)
def test_bad_parameters(client: TestClient, params: Any, fragment: str) -> None:
    assert_error(client.post(INFER, json=infer_body(parameters=params)), 400, fragment)


def test_response_parameters_for_one_sample(client: TestClient) -> None:
    params = client.post(INFER, json=infer_body()).json()["parameters"]
    assert params["anytime_member_count"] == 3
    assert params["anytime_members_used"] == 2
    assert params["anytime_exit_member"] == "m2"
    assert params["anytime_exit_reason"] == "confident"
    assert params["anytime_entropy"] == pytest.approx(0.1)
    assert params["anytime_batch_size"] == 1
    assert params["anytime_elapsed_ms"] >= params["anytime_infer_ms"] >= 0
    assert params["anytime_queue_ms"] >= 0
    assert all(isinstance(v, (str, int, float)) for v in params.values())  # V2: scalar values only


def test_response_parameters_summarise_a_batch() -> None:
    fake = FakeRuntime(members=[(1, "confident", 0.05), (3, "complete", 0.9), (2, "budget", 0.4)])
    with TestClient(create_app(fake, ServerConfig(workers=1)), base_url="http://127.0.0.1") as c:
        response = c.post(INFER, json=infer_body(tensor(list(range(12)), shape=(3, 2, 2))))
    params = response.json()["parameters"]
    assert params["anytime_batch_size"] == 3
    assert params["anytime_members_used"] == 3 and params["anytime_exit_member"] == "m3"
    assert params["anytime_exit_reason"] == "mixed"
    assert params["anytime_entropy"] == pytest.approx(0.9)
    assert output(response, "members_used")["data"] == [1, 3, 2]
    assert output(response, "exit_reason")["data"] == ["confident", "complete", "budget"]
    assert output(response, "entropy")["data"] == pytest.approx([0.05, 0.9, 0.4])


def test_outputs_select_and_order(client: TestClient) -> None:
    body = infer_body(outputs=[{"name": "label"}, {"name": "probabilities", "parameters": {"binary_data": False}}])
    outputs = client.post(INFER, json=body).json()["outputs"]
    assert [o["name"] for o in outputs] == ["label", "probabilities"]


# -- runtime failures -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error, status",
    [
        (InputError("input holds NaN; send finite values"), 400),
        (MemberError("the first member 'm1' failed"), 500),
        (RuntimeError("boom"), 500),
    ],
)
def test_runtime_errors_are_answered_and_the_server_survives(error: BaseException, status: int) -> None:
    fake = FakeRuntime(error=error)
    with TestClient(create_app(fake, ServerConfig(workers=1)), base_url="http://127.0.0.1") as c:
        assert_error(c.post(INFER, json=infer_body()), status)
        fake.error = None
        assert c.post(INFER, json=infer_body()).status_code == 200


def test_shutdown_marks_not_ready() -> None:
    app = create_app(FakeRuntime(), ServerConfig(workers=1))
    with TestClient(app, base_url="http://127.0.0.1") as c:
        assert c.get("/v2/health/ready").status_code == 200
    # leaving the block runs the lifespan shutdown, as SIGTERM does under uvicorn
    assert app.state.server.ready is False


# -- configuration ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"port": 70000}, "port"),
        ({"budget_ms": 0.0}, "budget_ms"),
        ({"entropy_threshold": float("nan")}, "entropy_threshold"),
        ({"workers": 0}, "workers"),
        ({"max_queue": -1}, "max_queue"),
        ({"max_body_bytes": 10}, "max_body_bytes"),
        ({"model_name": "a/b"}, "model name"),
        ({"workers": 4, "max_queue": 400, "max_connections": 100}, "max_connections"),
    ],
)
def test_config_validation(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ServerConfigError, match=fragment):
        ServerConfig(**kwargs)


def test_default_config_binds_loopback() -> None:
    config = ServerConfig()
    assert config.host == "127.0.0.1" and config.is_loopback
    assert config.workers >= 1
    assert not ServerConfig(host="0.0.0.0").is_loopback
