"""The server's HTTP envelope, probed as an attacker and as standard V2 clients would (issues 15 and 17).

Host and Origin on a loopback bind (DNS rebinding, web pages), content types, compressed bodies and
compression bombs, the per-request row cap and chunking, and the classification extension; against the
scripted fake runtime of test_server.py, in-process.
"""

from __future__ import annotations

import gzip
import json
import warnings
import zlib
from typing import Any

import numpy as np
import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from edge_runtime.server import BodyTooLargeError, ServerConfig, ServerConfigError, create_app
from edge_runtime.server._http import _Inflater
from edge_runtime.server._protocol import top_classes
from test_server import INFER, LABELS, FakeRuntime, assert_error, infer_body, output, tensor

LOCAL = "http://127.0.0.1"


def client_for(config: ServerConfig | None = None, runtime: FakeRuntime | None = None, base_url: str = LOCAL) -> TestClient:
    return TestClient(create_app(runtime or FakeRuntime(), config or ServerConfig(workers=1)), base_url=base_url)


def body_bytes(**extra: Any) -> bytes:
    return json.dumps(infer_body(**extra)).encode()


# -- Host and Origin (case untrusted/13) --------------------------------------------------------------------


def test_the_case_a_web_page_post_with_a_foreign_host_is_refused() -> None:
    """Case 13: Host attacker.example + text/plain + foreign Origin was answered 200."""
    with client_for() as c:
        headers = {"Host": "attacker.example", "Content-Type": "text/plain", "Origin": "http://attacker.example"}
        response = c.post(INFER, content=body_bytes(), headers=headers)
        assert_error(response, 421, "attacker.example", "--allowed-host")
        # every endpoint, not only inference: a rebound page must not read metadata either
        assert_error(c.get("/v2", headers={"Host": "attacker.example:8000"}), 421)
        assert_error(c.get("/v2/nowhere", headers={"Host": "attacker.example"}), 421)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.1:8000", "localhost", "LOCALHOST:1", "[::1]:8000", "localhost."])
def test_loopback_host_names_are_served(host: str) -> None:
    with client_for() as c:
        response = c.post(INFER, json=infer_body(), headers={"Host": host})
        assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "origin, status",
    [
        ("http://attacker.example", 403),
        ("https://127.0.0.1.attacker.example", 403),
        ("null", 403),  # sandboxed frames and file:// pages
        ("http://localhost:3000", 200),
        ("http://127.0.0.1:8000", 200),
    ],
)
def test_web_page_origins_on_a_loopback_bind(origin: str, status: int) -> None:
    with client_for() as c:
        response = c.post(INFER, json=infer_body(), headers={"Origin": origin})
        assert response.status_code == status, response.text
        if status != 200:
            assert_error(response, status, "origin")


def test_allowed_hosts_serve_other_names() -> None:
    config = ServerConfig(workers=1, allowed_hosts=("edge-7.factory.lan",))
    with client_for(config) as c:
        assert c.post(INFER, json=infer_body(), headers={"Host": "edge-7.factory.lan:8000"}).status_code == 200
        assert c.post(INFER, json=infer_body(), headers={"Host": "localhost"}).status_code == 200  # loopback bind
        assert_error(c.post(INFER, json=infer_body(), headers={"Host": "other.lan"}), 421)
    with client_for(ServerConfig(workers=1, allowed_hosts=("*",))) as c:
        assert c.post(INFER, json=infer_body(), headers={"Host": "anything.example"}).status_code == 200


def test_non_loopback_bind_accepts_any_host_unless_listed() -> None:
    assert ServerConfig(host="0.0.0.0").served_hosts is None
    assert ServerConfig(host="0.0.0.0", allowed_hosts=("edge.lan",)).served_hosts == frozenset({"edge.lan"})
    with client_for(ServerConfig(host="0.0.0.0", workers=1)) as c:
        assert c.post(INFER, json=infer_body(), headers={"Host": "192.168.1.7:8000"}).status_code == 200


@pytest.mark.parametrize("hosts", ["localhost", ("",), ("a b",), ("http://x",)])
def test_allowed_hosts_validation(hosts: Any) -> None:
    with pytest.raises(ServerConfigError, match="allowed_hosts"):
        ServerConfig(allowed_hosts=hosts)


# -- content types ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type, status",
    [
        ("text/plain", 415),
        ("text/plain;charset=UTF-8", 415),
        ("application/x-www-form-urlencoded", 415),
        ("multipart/form-data; boundary=x", 415),
        ("application/json", 200),
        ("application/json; charset=utf-8", 200),
        ("Application/JSON", 200),
        ("application/octet-stream", 200),
    ],
)
def test_only_json_and_binary_bodies_are_read(content_type: str, status: int) -> None:
    with client_for() as c:
        response = c.post(INFER, content=body_bytes(), headers={"Content-Type": content_type})
        assert response.status_code == status, response.text
        if status == 415:
            assert_error(response, 415, "application/json")


def test_body_without_content_type_is_read() -> None:
    with client_for() as c:
        assert c.post(INFER, content=body_bytes()).status_code == 200


# -- compressed bodies (case deploy/02) ------------------------------------------------------------------------


def _raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize(
    "encoding, compress",
    [
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", _raw_deflate),
        ("identity", bytes),
    ],
)
def test_compressed_bodies_are_answered_like_plain_ones(encoding: str, compress: Any) -> None:
    """Case 02: a gzip/deflate body was answered 400 "the body is not valid JSON"."""
    runtime = FakeRuntime()
    plain = body_bytes(id="gz-1", outputs=[{"name": "label"}])
    with client_for(runtime=runtime) as c:
        expected = c.post(INFER, content=plain, headers={"Content-Type": "application/json"}).json()
        response = c.post(
            INFER, content=compress(plain), headers={"Content-Type": "application/json", "Content-Encoding": encoding}
        )
        assert response.status_code == 200, response.text
        assert response.json()["outputs"] == expected["outputs"]
        assert response.json()["id"] == "gz-1"
        np.testing.assert_array_equal(runtime.calls[-1]["x"], runtime.calls[0]["x"])


def test_binary_extension_header_length_counts_the_inflated_body() -> None:
    """What tritonclient sends with request_compression_algorithm="gzip" and binary inputs."""
    runtime = FakeRuntime()
    values = np.array([0.5, -1.0, 2.0, 3.5], dtype="<f4")
    header = json.dumps(
        {"inputs": [{"name": "x", "shape": [1, 2, 2], "datatype": "FP32", "parameters": {"binary_data_size": 16}}]}
    ).encode()
    with client_for(runtime=runtime) as c:
        response = c.post(
            INFER,
            content=gzip.compress(header + values.tobytes()),
            headers={"Inference-Header-Content-Length": str(len(header)), "Content-Encoding": "gzip"},
        )
        assert response.status_code == 200, response.text
        np.testing.assert_array_equal(runtime.calls[-1]["x"].ravel(), values)


@pytest.mark.parametrize(
    "encoding, make, status, fragment",
    [
        ("br", lambda b: b, 415, "send the body uncompressed"),
        ("gzip, deflate", lambda b: b, 415, "Content-Encoding"),
        ("gzip", lambda b: b, 400, "not valid gzip"),
        ("gzip", lambda b: gzip.compress(b)[:-12], 400, "ends before"),
        ("gzip", lambda b: gzip.compress(b) + b"junk", 400, "after its end"),
        ("deflate", lambda b: b"\x00\x01" + b, 400, "not valid deflate"),
    ],
)
def test_bad_compressed_bodies(encoding: str, make: Any, status: int, fragment: str) -> None:
    with client_for() as c:
        response = c.post(INFER, content=make(body_bytes()), headers={"Content-Encoding": encoding})
        assert_error(response, status, fragment)
        assert c.post(INFER, json=infer_body()).status_code == 200


def test_a_compression_bomb_is_refused_not_inflated() -> None:
    """The body limit holds for the inflated size: 64 MiB of zeros in a ~64 KiB gzip body is 413."""
    bomb = gzip.compress(b"0" * (64 * 2**20), compresslevel=9)
    assert len(bomb) < 128 * 1024
    with client_for(ServerConfig(workers=1, max_body_bytes=1 * 2**20)) as c:
        response = c.post(INFER, content=bomb, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
        assert_error(response, 413, "inflates to more than", "--max-body-mb")
    # the inflater never holds more than the limit plus one byte, whatever one chunk would inflate to
    inflater = _Inflater("gzip", limit=4096)
    with pytest.raises(BodyTooLargeError):
        inflater.feed(bomb)
    assert inflater.size == 4097


def test_compressed_body_under_the_limit_that_inflates_just_to_it() -> None:
    plain = body_bytes(padding=" " * 3000)
    limit = len(plain)
    with client_for(ServerConfig(workers=1, max_body_bytes=max(1024, limit))) as c:
        assert c.post(INFER, content=gzip.compress(plain), headers={"Content-Encoding": "gzip"}).status_code == 200
        bigger = body_bytes(padding=" " * 3001)
        assert_error(c.post(INFER, content=gzip.compress(bigger), headers={"Content-Encoding": "gzip"}), 413)


# -- bounded work per request (case untrusted/15) --------------------------------------------------------------


def test_more_rows_than_the_cap_are_413_before_decoding() -> None:
    runtime = FakeRuntime()
    with client_for(ServerConfig(workers=1, max_batch_rows=8), runtime) as c:
        nine = tensor([0] * 36, shape=(9, 2, 2))
        assert_error(c.post(INFER, json=infer_body(nine)), 413, "at most 8", "--max-batch")
        binary_header = json.dumps(
            {"inputs": [{"name": "x", "shape": [9, 2, 2], "datatype": "UINT8", "parameters": {"binary_data_size": 36}}]}
        ).encode()
        response = c.post(
            INFER, content=binary_header + bytes(36), headers={"Inference-Header-Content-Length": str(len(binary_header))}
        )
        assert_error(response, 413, "at most 8")
        assert runtime.calls == []
        eight = tensor([0] * 32, shape=(8, 2, 2))
        assert c.post(INFER, json=infer_body(eight)).status_code == 200


def test_big_batches_run_in_chunks_in_order_within_one_budget() -> None:
    runtime = FakeRuntime()
    with client_for(ServerConfig(workers=1, chunk_rows=3), runtime) as c:
        data = np.arange(7 * 4).reshape(7, 2, 2)
        response = c.post(
            INFER, json=infer_body(tensor(data.ravel().tolist(), shape=(7, 2, 2)), parameters={"anytime_budget_ms": 500})
        )
        assert response.status_code == 200, response.text
    assert [len(call["x"]) for call in runtime.calls] == [3, 3, 1]
    np.testing.assert_array_equal(np.concatenate([call["x"] for call in runtime.calls]), data)
    assert output(response, "label")["data"] == [int(row.sum()) % 3 for row in data]
    budgets = [call["budget_ms"] for call in runtime.calls]
    assert all(isinstance(b, float) and 0 < b <= 500 for b in budgets) and budgets == sorted(budgets, reverse=True)


def test_row_limits_validation() -> None:
    with pytest.raises(ServerConfigError, match="max_batch_rows"):
        ServerConfig(max_batch_rows=0)
    with pytest.raises(ServerConfigError, match="chunk_rows"):
        ServerConfig(chunk_rows=0)


# -- classification extension (case deploy/05) ----------------------------------------------------------------


def test_classification_answers_top_k_strings_as_triton() -> None:
    """Case 05: "classification": 3 on 'probabilities' returned the full FP32 tensor."""
    with client_for() as c:
        assert "classification" in c.get("/v2").json()["extensions"]
        # the fake answers class int(sum) % 3 with probability 0.8, the others 0.1
        rows = tensor([1, 0, 0, 0, 2, 0, 0, 0], shape=(2, 2, 2))
        outputs = [{"name": "probabilities", "parameters": {"classification": 2, "binary_data": False}}, {"name": "label"}]
        response = c.post(INFER, json=infer_body(rows, outputs=outputs))
        assert response.status_code == 200, response.text
        top = output(response, "probabilities")
        assert top == {
            "name": "probabilities",
            "datatype": "BYTES",
            "shape": [2, 2],
            "data": ["0.800000:1:dog", "0.100000:0:cat", "0.800000:2:eel", "0.100000:0:cat"],
        }
        assert output(response, "label")["data"] == [1, 2]
        more = c.post(INFER, json=infer_body(outputs=[{"name": "probabilities", "parameters": {"classification": 10}}]))
        assert output(more, "probabilities")["shape"] == [1, len(LABELS)]


@pytest.mark.parametrize(
    "out, fragment",
    [
        ({"name": "label", "parameters": {"classification": 2}}, "applies to 'probabilities' only"),
        ({"name": "probabilities", "parameters": {"classification": 0}}, ">= 1"),
        ({"name": "probabilities", "parameters": {"classification": "3"}}, ">= 1"),
        ({"name": "probabilities", "parameters": {"classification": True}}, ">= 1"),
        ({"name": "probabilities", "parameters": [1]}, "JSON object"),
    ],
)
def test_bad_classification_requests(out: dict[str, Any], fragment: str) -> None:
    with client_for() as c:
        assert_error(c.post(INFER, json=infer_body(outputs=[out])), 400, fragment)


def test_top_classes_order_ties_and_no_labels() -> None:
    probs = np.array([[0.25, 0.5, 0.25], [0.1, 0.2, 0.7]], dtype=np.float32)
    assert top_classes(probs, 3).tolist() == [
        ["0.500000:1", "0.250000:0", "0.250000:2"],
        ["0.700000:2", "0.200000:1", "0.100000:0"],
    ]
    assert top_classes(probs, 1, ("a", "b", "c")).tolist() == [["0.500000:1:b"], ["0.700000:2:c"]]


def test_memory_is_released_after_large_bodies_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import edge_runtime.server._app as app_module

    released: list[int] = []
    monkeypatch.setattr(app_module, "release_freed_memory", lambda: released.append(1))
    big = json.dumps(infer_body(tensor([0] * 4 * 2000, shape=(2000, 2, 2)), padding=" " * 2**20)).encode()
    with client_for(ServerConfig(workers=1, max_batch_rows=1000)) as c:
        assert c.post(INFER, json=infer_body()).status_code == 200
        assert released == []
        assert_error(c.post(INFER, content=big), 413, "at most 1000")  # refused after parsing: released too
        assert released == [1]
