"""The read gate (backpressure): a connection refused for overload is held, and the freshest request is served first.

Unit tests drive :class:`ReadGate` with scripted connections, a scripted "busy" flag and deadline test; tests
against a real server process whose only worker is held for a second check what clients see.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_runtime.server._connections import ReadGate
from test_server import infer_body
from test_server_deadline import _connect, _server_process


class _Loop:
    def __init__(self) -> None:
        self.timers: list[Any] = []

    def call_later(self, delay: float, callback: Any, *args: Any) -> Any:
        self.timers.append((callback, args))
        return self


class _Conn:
    """A connection as the gate sees it: held, sends a request, is released (parsed)."""

    def __init__(self, loop: _Loop, gate: ReadGate, name: str, goes_to_worker: bool = True) -> None:
        self.loop, self.gate, self.name = loop, gate, name
        self.goes_to_worker = goes_to_worker  # what end_hold reports: False = answered at once (refused)
        self.holding = False
        self.data = b""
        self.since = 0.0
        self.released = 0
        self.waited: list[bool] = []  # per release: whether its deadline is checked though a worker is free

    def begin_hold(self) -> None:
        self.holding = True

    def send(self, data: bytes, at: float | None = None) -> None:
        self.data, self.since = data, time.perf_counter() if at is None else at
        self.gate.arrived(self)

    def held_request(self) -> bytes:
        return self.data

    def held_since(self) -> float:
        return self.since

    def end_hold(self, waited: bool = True) -> bool:
        self.waited.append(waited)
        self.holding = False
        self.released += 1
        return bool(self.data) and self.goes_to_worker


def _gate(busy: list[bool], in_time: Any = None, **kwargs: Any) -> tuple[ReadGate, _Loop]:
    return ReadGate(lambda: busy[0], in_time, **kwargs), _Loop()


def test_gate_holds_only_while_busy_and_serves_the_freshest_request_first() -> None:
    busy = [False]
    gate, loop = _gate(busy)
    a, b, c = (_Conn(loop, gate, n) for n in "abc")
    assert not gate.hold(a) and not a.holding  # a free worker: nothing is held
    busy[0] = True
    assert gate.hold(a) and gate.hold(b) and gate.hold(c) and a.holding and gate.waiting == 3
    a.send(b"A")
    b.send(b"B")
    gate.release()  # still busy
    assert (a.released, b.released) == (0, 0)
    busy[0] = False
    gate.release()
    assert (a.released, b.released, c.released) == (0, 1, 0)  # b arrived last: the freshest goes first
    assert b.waited == [True]  # lifo: refused if its budget is spent, even with a worker free
    gate.release()  # b has not reached the scheduler yet: a waits, or two would race for one worker
    assert a.released == 0
    gate.admitted()
    gate.release()
    assert a.released == 1 and c.released == 0  # c sent nothing: still held while others wait
    gate.admitted()
    gate.release()  # nobody waits and the server is free: c goes back to normal reading
    assert c.released == 1 and gate.waiting == 0 and gate.held == 3


def test_a_stale_freshest_request_keeps_every_held_request_waiting() -> None:
    busy = [True]
    fresh = [False]
    gate, loop = _gate(busy, lambda data, since: fresh[0])
    a, b = _Conn(loop, gate, "a"), _Conn(loop, gate, "b")
    gate.hold(a)
    gate.hold(b)
    a.send(b"A")
    b.send(b"B")
    busy[0] = False
    gate.release()  # the freshest cannot make its deadline, so the older cannot either: no refusal burst
    assert (a.released, b.released) == (0, 0)
    fresh[0] = True
    gate.release()
    assert (a.released, b.released) == (0, 1)


def test_requests_refused_on_release_let_the_next_one_go_at_once() -> None:
    busy = [True]
    gate, loop = _gate(busy)
    a = _Conn(loop, gate, "a")
    b, c = _Conn(loop, gate, "b", goes_to_worker=False), _Conn(loop, gate, "c", goes_to_worker=False)
    for conn, data in ((a, b"A"), (b, b"B"), (c, b"C")):
        gate.hold(conn)
        conn.send(data)
    busy[0] = False
    gate.release()  # c and b are answered at once (e.g. refused): a, a worker's next request, follows in the same call
    assert (a.released, b.released, c.released) == (1, 1, 1)


def test_a_request_held_past_max_hold_is_parsed_whatever_the_load() -> None:
    busy = [True]
    gate, loop = _gate(busy, lambda data, since: False, max_hold_s=0.05)
    old, new = _Conn(loop, gate, "old"), _Conn(loop, gate, "new")
    gate.hold(old)
    gate.hold(new)
    now = time.perf_counter()
    old.send(b"O", at=now - 0.2)
    new.send(b"N", at=now)
    callback, args = loop.timers[0]
    callback(*args)  # the re-check: busy, but old waited past max_hold_s
    assert (old.released, new.released) == (1, 0) and gate.waiting == 1
    assert len(loop.timers) == 2  # still someone held: the re-check is armed again


def test_gate_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="max_hold_s"):
        ReadGate(lambda: False, max_hold_s=0)


def _exchange(sock: Any, request: bytes) -> tuple[bytes, dict[str, Any]]:
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
    while len(rest) < length:
        rest += sock.recv(65536)
    return head, json.loads(rest)


def _post(body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    return (
        b"POST /v2/models/fake/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(data)
    ) + data


def _metrics(port: int) -> dict[str, float]:
    with _connect(port) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    families = text_string_to_metric_families(data.partition(b"\r\n\r\n")[2].decode())
    return {s.name + "".join(f",{v}" for v in s.labels.values() if v != "fake"): s.value for f in families for s in f.samples}


def test_retries_after_503_wait_for_the_worker_and_the_freshest_is_served_first() -> None:
    request = _post(infer_body())
    config = {"workers": 1, "max_queue": 0, "max_hold_s": 30.0}
    with contextlib.contextmanager(_server_process)(1.0, config) as (_, port):
        with _connect(port) as running, _connect(port) as older, _connect(port) as newer:
            running.sendall(request)  # takes the only worker for a second
            time.sleep(0.3)
            for sock in (older, newer):
                first, _ = _exchange(sock, request)
                assert first.startswith(b"HTTP/1.1 503")
            older.sendall(request)  # resent at once: held, not refused again
            time.sleep(0.05)
            newer.sendall(request)
            running.settimeout(10)
            assert running.recv(65536).startswith(b"HTTP/1.1 200")
            newer.settimeout(10)
            head, answer = _exchange(newer, b"")  # the freshest is served first, after the running one
            assert head.startswith(b"HTTP/1.1 200") and answer["outputs"]
            older.settimeout(0.3)
            with pytest.raises(TimeoutError):
                older.recv(65536)  # still held while the worker serves the newer one
            older.settimeout(10)
            head, answer = _exchange(older, b"")
            assert head.startswith(b"HTTP/1.1 200") and answer["outputs"]
        samples = _metrics(port)
    assert samples["anytime_holds_total"] == 2 and samples["anytime_connections_held"] == 0


def test_a_held_request_whose_budget_ran_out_is_refused_not_answered_late() -> None:
    config = {"workers": 1, "max_queue": 0, "max_hold_s": 1.5}
    with contextlib.contextmanager(_server_process)(1.0, config) as (_, port):
        with _connect(port) as running, _connect(port) as other:
            running.sendall(_post(infer_body()))
            time.sleep(0.3)
            first, _ = _exchange(other, _post(infer_body()))
            assert first.startswith(b"HTTP/1.1 503")
            t0 = time.monotonic()
            # held; when the worker frees (0.7 s later) its 200 ms budget is spent: refused, though a worker is free
            head, answer = _exchange(other, _post(infer_body(parameters={"anytime_budget_ms": 200})))
            waited = time.monotonic() - t0
            assert head.startswith(b"HTTP/1.1 503") and b"retry-after" in head.lower()
            assert "budget" in answer["error"] and 1.2 < waited < 5.0  # parsed at max_hold_s, not at once
        samples = _metrics(port)
    assert samples["anytime_shed_total,deadline"] == 1  # the held one; the first 503 was a full queue


def test_fifo_order_serves_the_request_held_longest_even_if_late() -> None:
    busy = [True]
    gate = ReadGate(lambda: busy[0], lambda data, since: False, order="fifo")
    loop = _Loop()
    a, b = _Conn(loop, gate, "a"), _Conn(loop, gate, "b")
    for conn in (a, b):
        gate.hold(conn)
    a.send(b"A")
    b.send(b"B")
    busy[0] = False
    gate.release()  # the deadline test is not consulted: a, held longest, goes first and is served as is
    assert (a.released, b.released) == (1, 0) and a.waited == [False]
    with pytest.raises(ValueError, match="order"):
        ReadGate(lambda: False, order="random")
