"""Deadlines under hostile traffic (issue 14, server half): the cases of ../shared/cases/deadline/{08,09,10,11}.

In-process tests drive the ASGI app directly (raw scope/receive/send, so what is read and sent is seen);
the connection rules run against a real server process on a loopback port over the slow fake runtime of
test_server.py. Assertions are about outcomes (who was answered, with what, in which order), never timings.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import numpy as np
import pytest

from edge_runtime.server import ServerConfig, ServerConfigError, create_app
from edge_runtime.server import _app as app_module
from edge_runtime.server._connections import ARRIVAL
from edge_runtime.server._protocol import OUTPUT_NAMES, InferRequest, declared_budget_ms, encode_infer_response
from edge_runtime.server._scheduler import Scheduler
from test_server import INFER, FakeRuntime, infer_body, tensor
from test_server_process import TESTS, _env, _read_line, _stop
from test_server_shedding import UnstoppableRuntime, run_concurrently


def _scope(body: bytes, headers: dict[str, str] | None = None, arrival: float | None = None) -> dict[str, Any]:
    raw = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": INFER,
        "raw_path": INFER.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": raw,
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 5555),
        "state": {},
    }
    if arrival is not None:
        scope["extensions"] = {ARRIVAL: arrival}
    return scope


async def _call(app: Any, body: bytes, messages: list[dict[str, Any]] | None = None, **scope_args: Any) -> tuple[list[Any], int]:
    """Run one request through the ASGI app; returns what it sent and how many times it called receive."""
    sent: list[Any] = []
    incoming = list(messages if messages is not None else [{"type": "http.request", "body": body, "more_body": False}])
    reads = 0

    async def receive() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(_scope(body, **scope_args), receive, send)
    return sent, reads


def _status(sent: list[Any]) -> int:
    return sent[0]["status"]


def _json(sent: list[Any]) -> Any:
    return json.loads(b"".join(m.get("body", b"") for m in sent[1:]))


def _busy(app: Any, first_member_ms: float) -> None:
    """Every worker busy, and the first member lately took ``first_member_ms`` here."""
    scheduler = app.state.server.scheduler
    scheduler._free = 0
    for _ in range(8):
        scheduler.tracker.record(first_member_ms, members_used=1)


# -- case 11: a client that hangs up mid-body -----------------------------------------------------------


def test_client_gone_mid_body_is_one_debug_line_and_no_answer(caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(FakeRuntime(), ServerConfig(workers=1))
    partial = [{"type": "http.request", "body": b'{"inputs":', "more_body": True}, {"type": "http.disconnect"}]
    with caplog.at_level(logging.DEBUG, logger="edge_runtime.server"):
        sent, _ = asyncio.run(_call(app, b"x" * 1000, partial))
    assert sent == []  # nothing attempted to the gone client, a 500 least of all
    records = [r for r in caplog.records if r.name.startswith("edge_runtime")]
    assert [(r.levelno, r.exc_info) for r in records] == [(logging.DEBUG, None)]
    assert "disconnected" in records[0].getMessage() and "\n" not in records[0].getMessage()


# -- case 09: shedding costs microseconds and happens before the body is decoded --------------------------


def test_full_queue_is_refused_before_the_body_is_read() -> None:
    app = create_app(FakeRuntime(), ServerConfig(workers=1, max_queue=0))
    _busy(app, 0.1)
    sent, reads = asyncio.run(_call(app, json.dumps(infer_body()).encode()))
    assert _status(sent) == 503 and reads == 0
    assert set(_json(sent)) == {"error"} and dict(sent[0]["headers"])[b"retry-after"] == b"1"


def test_hopeless_budget_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[int] = []
    real = app_module.decode_infer_request
    monkeypatch.setattr(app_module, "decode_infer_request", lambda *a, **k: decoded.append(1) or real(*a, **k))
    fake = FakeRuntime()
    app = create_app(fake, ServerConfig(workers=1, max_queue=8))
    _busy(app, first_member_ms=2.0)
    sent, _ = asyncio.run(_call(app, json.dumps(infer_body(parameters={"anytime_budget_ms": 1})).encode()))
    assert _status(sent) == 503 and "budget cannot be met" in _json(sent)["error"]
    assert dict(sent[0]["headers"])[b"retry-after"] == b"1"
    assert decoded == [] and fake.calls == [] and app.state.server.scheduler.queued == 0  # never queued


def test_a_budget_that_can_wait_is_not_refused_by_the_front() -> None:
    # A worker is busy for 0.2 s; a 5 s budget waits its turn and is answered.
    fake = UnstoppableRuntime(0.2)
    app = create_app(fake, ServerConfig(workers=1, max_queue=8))
    first, second = run_concurrently(app, [(infer_body(), 0.0), (infer_body(parameters={"anytime_budget_ms": 5000}), 0.05)])
    assert (first.status_code, second.status_code) == (200, 200)


@pytest.mark.parametrize(
    "body, expected",
    [
        (b'{"parameters":{"anytime_budget_ms": 2.5},"inputs":[]}', 2.5),
        (b'{"parameters":{"anytime_budget_ms":"off"}}', "off"),
        (b'{"inputs":[]}', None),
        (b'{"id":"\\"anytime_budget_ms\\": 1","inputs":[]}', None),  # inside a string: escaped, not a key
        (b'{"parameters":{"anytime_budget_ms":1,"anytime_budget_ms":2}}', None),  # ambiguous: decode decides
        (b'{"parameters":{"anytime_budget_ms":-1}}', None),
    ],
)
def test_declared_budget_is_read_without_parsing(body: bytes, expected: Any) -> None:
    assert declared_budget_ms(body) == expected


# -- case 10: one client's big batches and another's budgets ---------------------------------------------


def test_small_request_runs_between_the_chunks_of_a_big_batch() -> None:
    fake = UnstoppableRuntime(0.05)  # each chunk takes 50 ms whatever its budget
    app = create_app(fake, ServerConfig(workers=1, max_queue=8, chunk_rows=2))
    big = infer_body(tensor([1.0] * 4 * 16, shape=(16, 2, 2)), parameters={"anytime_budget_ms": "off"})
    small = infer_body(parameters={"anytime_budget_ms": 5000})
    big_answer, small_answer = run_concurrently(app, [(big, 0.0), (small, 0.08)])
    assert (big_answer.status_code, small_answer.status_code) == (200, 200)
    assert len(big_answer.json()["outputs"][0]["data"]) == 16 * 3
    rows = [len(call["x"]) for call in fake.calls]
    assert sorted(rows) == [1] + [2] * 8
    # earliest deadline first at chunk granularity: the small request waited for one or two chunks, not eight
    assert rows.index(1) <= 3


def test_later_chunks_are_never_shed_and_get_what_is_left() -> None:
    fake = UnstoppableRuntime(0.05)
    app = create_app(fake, ServerConfig(workers=1, max_queue=0, chunk_rows=2))
    answer = run_concurrently(
        app, [(infer_body(tensor([1.0] * 4 * 6, shape=(6, 2, 2)), parameters={"anytime_budget_ms": 60}), 0.0)]
    )[0]
    assert answer.status_code == 200 and answer.json()["parameters"]["anytime_batch_size"] == 6
    assert fake.calls[-1]["budget_ms"] == pytest.approx(0.01)  # the budget was spent: first member only


def test_budget_counts_from_arrival_stamped_by_the_connection() -> None:
    fake = FakeRuntime()
    app = create_app(fake, ServerConfig(workers=1, reserve_ms=0.5))
    arrived = time.perf_counter() - 0.2  # the first byte came 200 ms before the handler ran
    sent, _ = asyncio.run(_call(app, json.dumps(infer_body(parameters={"anytime_budget_ms": 1000})).encode(), arrival=arrived))
    assert _status(sent) == 200
    assert fake.calls[0]["budget_ms"] <= 1000 - 200 - 0.5
    assert _json(sent)["parameters"]["anytime_elapsed_ms"] >= 200


def test_batch_over_the_cap_is_refused_before_its_data_is_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[int] = []
    monkeypatch.setattr(app_module, "decode_infer_request", lambda *a, **k: decoded.append(1))
    app = create_app(FakeRuntime(), ServerConfig(workers=1, max_batch_rows=100))
    body = json.dumps(infer_body(tensor([7] * 4 * 20000, shape=(20000, 2, 2), datatype="UINT8"))).encode()
    sent, _ = asyncio.run(_call(app, body))
    assert _status(sent) == 413 and "at most 100 per request" in _json(sent)["error"]
    assert decoded == []


def test_large_answer_is_the_same_json_written_in_slices() -> None:
    rng = np.random.default_rng(0)
    preds = FakeRuntime().predict(rng.normal(size=(6000, 2, 2)).astype(np.float32))
    request = InferRequest(x=np.zeros((6000, 2, 2), np.float32), outputs=OUTPUT_NAMES)
    sliced = encode_infer_response("m", request, "id", preds, {"anytime_batch_size": 6000}, ("a", "b", "c"))
    whole = json.dumps(json.loads(sliced), separators=(",", ":")).encode()
    assert sliced == whole and len(json.loads(sliced)["outputs"][0]["data"]) == 6000 * 3


# -- case 08: idle and slow connections cannot starve real clients (a real server process) ----------------

_SERVER = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from test_server import FakeRuntime
from edge_runtime.server import ServerConfig, serve
serve(FakeRuntime(delay_s=float(sys.argv[2])), ServerConfig(port=0, **json.loads(sys.argv[3])), announce=lambda url: print(url, flush=True))
"""

_LIMITS = {
    "workers": 1,
    "max_queue": 2,
    "max_connections": 8,
    "header_timeout_s": 0.6,
    "body_timeout_s": 0.6,
    "keep_alive_s": 0.6,
}


@pytest.fixture
def limited_server() -> Any:
    yield from _server_process(0.0, _LIMITS)


@pytest.fixture
def busy_server() -> Any:
    yield from _server_process(1.0, {"workers": 1, "max_queue": 0})  # each inference takes a second


def _server_process(delay_s: float, config: dict[str, Any]) -> Any:
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER, str(TESTS), str(delay_s), json.dumps(config)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(_read_line(proc).rsplit(":", 1)[1])
        deadline = time.monotonic() + 60
        while True:  # the URL is announced just before uvicorn starts listening
            try:
                _connect(port).close()
                break
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield proc, port
    finally:
        _stop(proc)


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock


def _request(port: int, body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    body = body if body is not None else json.dumps(infer_body()).encode()
    with _connect(port) as sock:
        sock.sendall(
            b"POST /v2/models/fake/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
        )
        return _response(sock)


def _response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def _closed_by_server(sock: socket.socket, within_s: float) -> bool:
    sock.settimeout(within_s)
    try:
        return sock.recv(1) == b""
    except socket.timeout:
        return False
    except ConnectionResetError:
        return True


def test_idle_and_half_sent_connections_do_not_deny_service(limited_server: Any) -> None:
    proc, port = limited_server
    idle = [_connect(port) for _ in range(20)]  # more than max_connections, sending nothing
    half = [_connect(port) for _ in range(5)]
    for sock in half:
        sock.sendall(b"POST /v2/models/fake/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # a head never finished
    try:
        status, _, body = _request(port)
        assert status == 200, body  # the longest-idle connection made room
        # idle and half-sent connections are closed once the head timeout passes
        assert _closed_by_server(idle[-1], within_s=5.0) and _closed_by_server(half[-1], within_s=5.0)
    finally:
        for sock in idle + half:
            sock.close()


def test_head_sent_a_byte_at_a_time_is_cut_off(limited_server: Any) -> None:
    proc, port = limited_server
    with _connect(port) as sock:
        head = b"POST /v2/models/fake/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100
        closed = False
        for byte in head:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            if _closed_by_server(sock, within_s=0.1):
                closed = True
                break
        assert closed  # 100 bytes at ~0.1 s each would take 10 s; the head timeout is 0.6 s


def test_body_that_stalls_gets_408_json(limited_server: Any) -> None:
    proc, port = limited_server
    with _connect(port) as sock:
        sock.sendall(
            b"POST /v2/models/fake/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"inputs":'
        )
        status, headers, body = _response(sock)
    assert status == 408 and "did not arrive" in json.loads(body)["error"]
    assert headers["connection"] == "close"


def test_every_connection_busy_gets_json_503_with_retry_after(limited_server: Any) -> None:
    proc, port = limited_server
    busy = []
    for _ in range(_LIMITS["max_connections"]):  # requests in progress: their bodies are still coming
        sock = _connect(port)
        sock.sendall(b"POST /v2/models/fake/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{")
        busy.append(sock)
    try:
        time.sleep(0.1)  # let the server see them all (no timing asserted)
        status, headers, body = _request(port)
        assert status == 503 and set(json.loads(body)) == {"error"}
        assert headers["retry-after"] == "1" and headers["content-type"] == "application/json"
    finally:
        for sock in busy:
            sock.close()
    assert _request(port)[0] == 200  # and serves again once they are gone


def test_disconnects_leave_no_traceback_in_the_server_log(limited_server: Any) -> None:
    proc, port = limited_server
    for _ in range(5):  # case 11 through uvicorn: announce 1000 bytes, send 10, hang up
        with _connect(port) as sock:
            sock.sendall(b'POST /v2/models/fake/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n{"inputs":')
            time.sleep(0.05)
    assert _request(port)[0] == 200
    _stop(proc)
    err = proc.stderr.read() if proc.stderr else ""
    assert "Traceback" not in err and "ERROR" not in err, err


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"header_timeout_s": 0}, "header_timeout_s"),
        ({"body_timeout_s": float("inf")}, "body_timeout_s"),
        ({"keep_alive_s": -1}, "keep_alive_s"),
        ({"backlog": 0}, "backlog"),
        ({"switch_interval_ms": 0}, "switch_interval_ms"),
    ],
)
def test_connection_settings_are_validated(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ServerConfigError, match=fragment):
        ServerConfig(**kwargs)


def test_worker_takes_the_next_job_without_waiting_for_the_event_loop() -> None:
    # Under a retry storm the event loop runs milliseconds behind; a worker that finished must not sit idle
    # until the loop gets round to handing it the next queued request (goodput fell to 2% that way).
    scheduler = Scheduler(workers=1, max_queue=4, reserve_ms=0.0)
    loop_blocked = threading.Event()
    seen: list[bool] = []

    def first(budget: Any) -> str:
        time.sleep(0.05)
        return "first"

    def second(budget: Any) -> str:
        seen.append(loop_blocked.is_set())
        return "second"

    async def main() -> list[Any]:
        tasks = [asyncio.ensure_future(scheduler.run(call, time.perf_counter(), None, lambda r: 1)) for call in (first, second)]
        await asyncio.sleep(0.01)  # both queued, the first running
        loop_blocked.set()
        time.sleep(0.3)  # the event loop is stuck (a storm of refusals, a long parse)
        loop_blocked.clear()
        return [done.result for done in await asyncio.gather(*tasks)]

    try:
        assert asyncio.run(main()) == ["first", "second"]
    finally:
        scheduler.close()
    assert seen == [True]  # the second call started while the loop was still blocked
    assert not any(t.is_alive() for t in scheduler._threads)  # close() joined the workers


def test_bytes_that_are_not_http_get_a_json_400(limited_server: Any) -> None:
    proc, port = limited_server
    with _connect(port) as sock:
        sock.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")
        status, headers, body = _response(sock)
    assert status == 400 and "not valid HTTP" in json.loads(body)["error"]


def test_endless_headers_get_a_json_431(limited_server: Any) -> None:
    proc, port = limited_server
    with _connect(port) as sock:
        try:
            sock.sendall(
                b"POST /v2/models/fake/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Pad: " + b"a" * 200_000 + b"\r\n\r\n"
            )
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may close before the last bytes are sent; the answer is already on the socket
        status, _, body = _response(sock)
    assert status == 431 and "exceed 65536 bytes" in json.loads(body)["error"]


def test_a_header_line_that_never_ends_gets_a_json_431(limited_server: Any) -> None:
    proc, port = limited_server
    with _connect(port) as sock:
        try:
            for _ in range(20):  # 20 x 16 KiB of one header value, never ended by a line break
                sock.sendall(b"X" * 16384 if _ else b"POST /v2/models/fake/infer HTTP/1.1\r\nX-Pad: ")
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, _, body = _response(sock)
    assert status == 431 and "exceed 65536 bytes" in json.loads(body)["error"]


def test_cli_flags_reach_the_server_config(monkeypatch: pytest.MonkeyPatch) -> None:
    import edge_runtime
    from edge_runtime.cli import main
    from edge_runtime.cli import serve as serve_cli

    seen: dict[str, Any] = {}
    monkeypatch.setattr(edge_runtime, "load", lambda *a, **k: FakeRuntime())
    monkeypatch.setattr(serve_cli, "serve", lambda runtime, config, announce=None: seen.update(config=config))
    args = [
        "serve",
        "bundle",
        "--port",
        "0",
        "--max-connections",
        "64",
        "--header-timeout",
        "2",
        "--keep-alive",
        "3",
        "--switch-interval-ms",
        "0",
        "--max-hold",
        "0.5",
        "--hold-order",
        "fifo",
    ]
    assert main(args) == 0
    config = seen["config"]
    assert (config.max_connections, config.header_timeout_s, config.keep_alive_s) == (64, 2.0, 3.0)
    assert (config.max_hold_s, config.hold_order) == (0.5, "fifo")
    assert config.switch_interval_ms is None  # 0 keeps Python's own


def test_serve_sets_the_switch_interval_while_serving_and_restores_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    from edge_runtime.server import serve

    during: list[float] = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: during.append(sys.getswitchinterval()))
    before = sys.getswitchinterval()
    serve(FakeRuntime(), ServerConfig(port=0, workers=1, switch_interval_ms=0.5))
    assert during == [pytest.approx(0.0005)] and sys.getswitchinterval() == before


@pytest.fixture
def busy_server_ungated() -> Any:
    yield from _server_process(1.0, {"workers": 1, "max_queue": 0, "backpressure": False})  # every retry read at once


def test_overload_is_refused_by_the_connection_layer_and_keeps_the_connection(busy_server_ungated: Any) -> None:
    proc, port = busy_server_ungated
    body = json.dumps(infer_body()).encode()
    request = (
        b"POST /v2/models/fake/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    ) + body
    with _connect(port) as running, _connect(port) as other:
        running.sendall(request)  # takes the only worker for a second
        time.sleep(0.3)
        answers = []
        for _ in range(3):  # keep-alive: each refusal leaves the connection usable
            other.sendall(request)
            data = b""
            while b"\r\n\r\n" not in data:
                data += other.recv(65536)
            head, _, rest = data.partition(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
            while len(rest) < length:
                rest += other.recv(65536)
            answers.append((head, json.loads(rest)))
        assert all(head.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in head.lower() for head, _ in answers)
        assert all(set(doc) == {"error"} and "overloaded" in doc["error"] for _, doc in answers)
        running.settimeout(10)
        assert running.recv(65536).startswith(b"HTTP/1.1 200")
