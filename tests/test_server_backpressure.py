"""The read gate (backpressure): a connection refused for overload is not read again until a worker is free.

Unit tests drive :class:`ReadGate` with scripted connections and a scripted "busy" flag; one test runs a real
server process whose only worker is held for a second.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from edge_runtime.server._connections import ReadGate
from test_server import infer_body
from test_server_deadline import _connect, _server_process


class _Loop:
    def __init__(self) -> None:
        self.timers: list[Any] = []

    def call_later(self, delay: float, callback: Any) -> Any:
        self.timers.append(callback)
        return self


class _Flow:
    def __init__(self) -> None:
        self.read_paused = False

    def pause_reading(self) -> None:
        self.read_paused = True


class _Conn:
    def __init__(self, loop: _Loop) -> None:
        self.loop = loop
        self.flow = _Flow()
        self.resumed = 0

    def resume_reading_held(self) -> None:
        self.flow.read_paused = False
        self.resumed += 1


def test_gate_holds_while_busy_and_resumes_oldest_first_one_at_a_time() -> None:
    busy = [False]
    gate = ReadGate(lambda: busy[0])
    loop = _Loop()
    a, b, c = _Conn(loop), _Conn(loop), _Conn(loop)
    assert not gate.hold(a) and not a.flow.read_paused  # a free worker: nothing is held
    busy[0] = True
    assert gate.hold(a) and gate.hold(b) and a.flow.read_paused and gate.waiting == 2
    gate.release()  # still busy
    assert (a.resumed, b.resumed) == (0, 0)
    busy[0] = False
    assert gate.hold(c)  # others wait already: first come, first read
    gate.release()
    assert (a.resumed, b.resumed, c.resumed) == (1, 0, 0)
    gate.release()  # a's request has not begun yet: b waits, or two would race for one worker
    assert b.resumed == 0
    gate.started(a)
    gate.release()
    assert (b.resumed, c.resumed) == (1, 0)
    gate.forget(c)  # closed while waiting
    gate.started(b)
    gate.release()
    assert c.resumed == 0 and gate.waiting == 0 and gate.held == 3


def test_a_resumed_connection_with_nothing_to_send_does_not_block_the_others() -> None:
    busy = [True]
    gate = ReadGate(lambda: busy[0])
    gate.pending_s = 0.0
    loop = _Loop()
    a, b = _Conn(loop), _Conn(loop)
    gate.hold(a)
    gate.hold(b)
    busy[0] = False
    gate.release()
    time.sleep(0.001)
    gate.release()  # a began nothing within pending_s
    assert (a.resumed, b.resumed) == (1, 1)
    assert loop.timers  # while connections wait, a re-check is scheduled


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


def test_a_retry_after_503_waits_for_the_worker_instead_of_a_second_refusal() -> None:
    body = json.dumps(infer_body()).encode()
    request = (
        b"POST /v2/models/fake/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    ) + body
    with contextlib.contextmanager(_server_process)(1.0, {"workers": 1, "max_queue": 0}) as (_, port):
        with _connect(port) as running, _connect(port) as other:
            running.sendall(request)  # takes the only worker for a second
            time.sleep(0.3)
            first, _ = _exchange(other, request)
            assert first.startswith(b"HTTP/1.1 503")
            # resent at once: held unread until the worker is free, then served
            second, answer = _exchange(other, request)
            assert second.startswith(b"HTTP/1.1 200") and answer["outputs"]
            running.settimeout(10)
            assert running.recv(65536).startswith(b"HTTP/1.1 200")
        with _connect(port) as sock:  # the server's own account of it
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    samples = {
        s.name: s.value for f in text_string_to_metric_families(data.partition(b"\r\n\r\n")[2].decode()) for s in f.samples
    }
    assert samples["anytime_holds_total"] == 1 and samples["anytime_connections_held"] == 0
