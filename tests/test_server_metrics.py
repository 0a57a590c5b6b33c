"""GET /metrics (Prometheus text format) and the JSON-lines access log of the V2 server (issue 16 part 3).

Scrapes are parsed with prometheus_client's own text parser; counts are checked before and after requests
whose outcome the fake runtime scripts. Timings are never asserted, only that latencies were observed.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import edge_runtime
from edge_runtime.cli.serve import configure
from edge_runtime.server import ServerConfig, ServerConfigError, create_app
from test_server import INFER, FakeRuntime, infer_body, tensor
from test_server_deadline import _request, _server_process
from test_server_shedding import body, run_concurrently

with warnings.catch_warnings():  # starlette 1.x flags httpx (its TestClient's transport) as deprecated
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

LOG_KEYS = {
    "time",
    "model",
    "request_id",
    "status",
    "budget_ms",
    "members_used",
    "exit_reason",
    "batch",
    "queue_ms",
    "elapsed_ms",
    "shed",
}


def scrape(client: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` of one GET /metrics, parsed by prometheus_client."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted({"model": "fake", **labels}.items()))), 0.0)


def test_metrics_move_with_requests() -> None:
    fake = FakeRuntime(members=((2, "confident", 0.1), (3, "budget", 0.9)))
    with TestClient(create_app(fake, ServerConfig(workers=1)), base_url="http://127.0.0.1") as client:
        before = scrape(client)
        assert value(before, "anytime_requests_total", status="200") == 0
        assert value(before, "anytime_members_used_count") == 0
        # one sample (2 members, confident), then a batch of 3 (2, 3, 2 members), then two refusals
        assert client.post(INFER, json=infer_body()).status_code == 200
        batch = tensor(list(range(12)), shape=(3, 2, 2))
        assert client.post(INFER, json=infer_body(batch)).status_code == 200
        assert client.post(INFER, json={"inputs": []}).status_code == 400
        assert client.post("/v2/models/other/infer", json=infer_body()).status_code == 404
        after = scrape(client)
    assert value(after, "anytime_requests_total", status="200") == 2
    assert value(after, "anytime_requests_total", status="400") == 1
    assert value(after, "anytime_requests_total", status="404") == 1
    # per answered sample: members 2, 2, 3, 2 -> exits confident x3, budget x1
    assert value(after, "anytime_exits_total", exit_reason="confident") == 3
    assert value(after, "anytime_exits_total", exit_reason="budget") == 1
    assert value(after, "anytime_members_used_bucket", le="1.0") == 0
    assert value(after, "anytime_members_used_bucket", le="2.0") == 3
    assert value(after, "anytime_members_used_bucket", le="3.0") == 4
    assert value(after, "anytime_members_used_bucket", le="+Inf") == 4
    assert value(after, "anytime_members_used_sum") == 9
    # latency and queue time: one observation per 200, in seconds
    assert value(after, "anytime_request_duration_seconds_count") == 2
    assert 0 < value(after, "anytime_request_duration_seconds_sum") < 60
    assert value(after, "anytime_queue_wait_seconds_count") == 2
    assert value(after, "anytime_workers") == 1 and value(after, "anytime_queue_depth") == 0
    assert value(after, "anytime_shed_total", reason="queue_full") == 0


def test_shed_requests_are_counted_by_reason() -> None:
    fake = FakeRuntime(delay_s=0.2)
    app = create_app(fake, ServerConfig(workers=1, max_queue=0))
    statuses = sorted(r.status_code for r in run_concurrently(app, [(body(), 0.0), (body(), 0.05), (body(), 0.05)]))
    assert statuses == [200, 503, 503]
    samples = parse(app.state.server.metrics.render().decode())
    assert value(samples, "anytime_requests_total", status="503") == 2
    assert value(samples, "anytime_shed_total", reason="queue_full") == 2
    assert value(samples, "anytime_request_duration_seconds_count") == 1  # only the 200 is timed


def test_real_runtime_exports_member_estimates_and_errors(tiny_bundle: Path) -> None:
    runtime = edge_runtime.load(tiny_bundle, warmup=3)
    x = np.random.default_rng(0).normal(size=(1, 1, 4, 4)).astype(np.float32)
    request = {
        "inputs": [{"name": "x", "shape": [1, 1, 4, 4], "datatype": "FP32", "data": x.ravel().tolist()}],
        "parameters": {"anytime_entropy_threshold": "off"},
    }
    with TestClient(create_app(runtime, ServerConfig(workers=1)), base_url="http://127.0.0.1") as client:
        for _ in range(3):
            assert client.post("/v2/models/tiny/infer", json=request).status_code == 200
        response = client.get("/metrics")
    runtime.close()
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    estimates = {s.labels["member"]: s.value for s in families["anytime_latency_estimate_seconds"].samples}
    described = runtime.latency_estimator.describe()["members"]
    assert set(estimates) == {row["member"] for row in described} and len(estimates) == runtime.manifest.num_members
    assert all(0 < v < 1 for v in estimates.values())  # seconds, not milliseconds
    assert families["anytime_latency_load"].samples[0].value >= 1.0
    errors = {s.labels["member"]: s.value for s in families["anytime_member_errors"].samples}
    assert errors == {name: 0.0 for name in estimates}
    assert families["anytime_member_errors"].type == "counter"
    assert families["anytime_exits"].samples[0].labels["exit_reason"] == "complete"
    assert "process_resident_memory_bytes" in families


def test_access_log_lines_parse_and_hold_no_tensor_data(tmp_path: Path) -> None:
    log = tmp_path / "access.jsonl"
    fake = FakeRuntime(members=((2, "confident", 0.1),))
    marker = 1234.5678  # an input value that must never appear in the log
    with TestClient(create_app(fake, ServerConfig(workers=1, access_log=str(log))), base_url="http://127.0.0.1") as client:
        ok = client.post(INFER, json=infer_body(tensor([marker, 2, 3, 4]), id="req-7", parameters={"anytime_budget_ms": 50}))
        assert ok.status_code == 200
        assert client.post(INFER, json=infer_body(tensor([marker] * 8, shape=(2, 2, 2)))).status_code == 200
        assert client.post(INFER, json={"inputs": "no"}).status_code == 400
        assert client.get("/v2/health/live").status_code == 200  # not an inference request: no line
    text = log.read_text()
    assert "1234.5" not in text and "probabilities" not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert len(lines) == 3
    assert all(set(line) == LOG_KEYS for line in lines)
    assert all(not isinstance(v, (list, dict)) for line in lines for v in line.values())
    first, second, bad = lines
    assert first["request_id"] == "req-7" and first["status"] == 200 and first["budget_ms"] == 50
    assert first["members_used"] == 2 and first["exit_reason"] == "confident" and first["batch"] == 1
    assert first["elapsed_ms"] >= 0 and first["time"].endswith("Z") and first["model"] == "fake"
    assert ok.json()["id"] == "req-7"
    assert second["batch"] == 2 and isinstance(second["request_id"], str) and second["request_id"]
    assert bad["status"] == 400 and bad["request_id"] is None and bad["members_used"] is None


def test_access_log_to_standard_output(capsys: pytest.CaptureFixture[str]) -> None:
    with TestClient(create_app(FakeRuntime(), ServerConfig(workers=1, access_log="-")), base_url="http://127.0.0.1") as client:
        assert client.post(INFER, json=infer_body(id="a")).status_code == 200
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["request_id"] == "a"


def test_access_log_off_by_default_and_bad_path_refused(tmp_path: Path) -> None:
    assert ServerConfig().access_log is None
    with pytest.raises(ServerConfigError, match="--access-log"):
        create_app(FakeRuntime(), ServerConfig(access_log=str(tmp_path / "missing" / "access.jsonl")))
    with pytest.raises(ServerConfigError):
        ServerConfig(access_log=" ")


@pytest.mark.parametrize("argv, expected", [([], None), (["--access-log"], "-"), (["--access-log", "a.jsonl"], "a.jsonl")])
def test_access_log_flag(argv: list[str], expected: str | None) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    configure(parser)
    assert parser.parse_args(["bundle", *argv]).access_log == expected


def test_refusals_of_a_real_server_are_counted_and_logged(tmp_path: Path) -> None:
    # A real server process: an inference takes a second, no queue, so requests sent meanwhile are refused,
    # mostly by the connection layer (no ASGI task). Both show in /metrics and the access log.
    log = tmp_path / "access.jsonl"
    with contextlib.contextmanager(_server_process)(1.0, {"workers": 1, "max_queue": 0, "access_log": str(log)}) as (_, port):
        statuses: list[int] = []
        senders = [threading.Thread(target=lambda: statuses.append(_request(port)[0])) for _ in range(3)]
        for sender in senders:  # sent within far less than the second one inference holds the only worker
            sender.start()
        for sender in senders:
            sender.join(timeout=30)
        assert sorted(statuses) == [200, 503, 503]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        samples = parse(data.partition(b"\r\n\r\n")[2].decode())
        assert value(samples, "anytime_shed_total", reason="queue_full") >= 1
        assert value(samples, "anytime_requests_total", status="503") >= 1
        assert value(samples, "anytime_requests_total", status="200") >= 1
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    shed = [line for line in lines if line["status"] == 503]
    # refused before their bodies were read (no id) -- or, if one raced the first into the app, after
    assert len(shed) == 2 and all(line["shed"] == "queue_full" and line["members_used"] is None for line in shed)
