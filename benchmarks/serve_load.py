"""Serving under load: latency, throughput, deadlines and memory of ``anytime-edge serve`` on loopback.

The server runs as its own process (``python -m edge_runtime serve BUNDLE --port 0``, bound to 127.0.0.1)
and this process is the load generator: closed-loop clients, each on one keep-alive HTTP/1.1 connection,
sending single-sample V2 requests (JSON, default outputs) back to back. After a 503 a client either sends
its next request at once (no back-off: the worst case, shed requests come straight back) or, as a
well-behaved client does, waits the Retry-After the server sent; budget levels are run both ways.
Everything is bounded in time and request count and stops by itself; every server started is stopped
(SIGTERM, then kill). The load generator shares the machine's cores with the server, as it would on a
2-core box; the table shows the server's CPU use and the machine's load average beside each level.

1. Overhead: one client, requests interleaved with in-process ``runtime.predict`` on the same samples in
   this process and with ``GET /v2/health/live`` (the HTTP stack's floor), so all see the same machine;
   overhead = HTTP round trip - in-process predict (median of the paired differences). JSON requests, and
   the same in Triton's binary tensor extension (no JSON number parsing). Goal: <= 1 ms p50 (JSON).
2. Load: p50/p99 latency and throughput at 1, 4 and 16 concurrent clients, for run-all (every member,
   no budget) and for a budget (``--budget-ms``, default 5, counted from arrival at the server; entropy
   exit off so the budget alone decides). Share of answers past budget + 1 ms, as the client measures it
   (goal: <= 1%), and past the budget by the server's own clock.
3. Sustained: ``--sustain-s`` (60 s) at 16 clients, half run-all and half budget requests; zero 5xx other
   than deliberate 503 shedding, and server RSS growth <= 10% (psutil, sampled every second).
4. Worker sweep: budget requests at 16 clients with 1, 2 and 4 inference threads (a fresh server each):
   how many concurrent member evaluations a 2-core box takes before they slow each other past deadlines.
5. Overload (``--overload``, alone; see ``_overload.py``): one client, then 16 and 200 closed-loop clients
   that retry at once on 503, 16 that wait the Retry-After (contrast), then 300 idle / half-sent-head
   connections beside 16 real clients, each
   ``--duration`` s (60) at ``--storm-budget-ms`` (1), on a fresh server per ``--repeat`` (median and
   spread). Goals: goodput at 200 clients >= 80% of one client's; <= 1% of 200s past budget + 1 ms at 16;
   p99 < 50 ms beside the idle sockets; no 5xx but 503; RSS growth <= 10%.

    python benchmarks/serve_load.py [--bundle runs/demo/bundle --data runs/demo/test.npz] [--json PATH]
    python benchmarks/serve_load.py --dev [--quick]     # a generated 4-member bundle (needs onnx)
    python benchmarks/serve_load.py --dev --overload --duration 10 --repeat 3 --json out.json

The default bundle is written by ``make demo``; without it the script says so and exits 2.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import psutil

import edge_runtime
from edge_runtime.device import device_info
from edge_runtime.server import default_workers
from profiles.report import format_table

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"  # loopback only: the load never leaves this machine
LEVELS = (1, 4, 16)
PAST_BUDGET_SLACK_MS = 1.0  # an answer counts as late past budget + this (HTTP on loopback)
START_TIMEOUT_S = 120.0


# ---------------------------------------------------------------------------------------------- inputs


def _dev_bundle(tmp: Path) -> tuple[Path, np.ndarray]:
    sys.path.insert(0, str(ROOT / "tests"))
    from onnx_members import make_bundle  # needs onnx: a development helper, not the runtime

    bundle = make_bundle(tmp / "dev", num_members=4, input_shape=(1, 28, 28), num_classes=10, hidden=1024)
    x = np.random.default_rng(0).normal(size=(256, 1, 28, 28)).astype(np.float32)
    return bundle, x


def _binary_bodies(x: np.ndarray, name: str, params: dict[str, Any]) -> list[tuple[bytes, int]]:
    """Requests in Triton's binary tensor extension: a JSON header, then the raw little-endian floats."""
    out = []
    for row in x:
        raw = np.ascontiguousarray(row, dtype="<f4").tobytes()
        header = json.dumps(
            {
                "inputs": [
                    {"name": name, "shape": [1, *row.shape], "datatype": "FP32", "parameters": {"binary_data_size": len(raw)}}
                ],
                "parameters": params,
            }
        ).encode()
        out.append((header + raw, len(header)))
    return out


def _bodies(x: np.ndarray, name: str, params: dict[str, Any]) -> list[bytes]:
    """One pre-encoded V2 request per sample, so the clients spend no time encoding."""
    return [
        json.dumps(
            {
                "inputs": [{"name": name, "shape": [1, *row.shape], "datatype": "FP32", "data": row.ravel().tolist()}],
                "parameters": params,
            }
        ).encode()
        for row in x
    ]


# ---------------------------------------------------------------------------------------------- server


class ServerProcess:
    """``python -m edge_runtime serve`` on a free loopback port; a context manager that always stops it."""

    def __init__(self, bundle: Path, workers: int, max_queue: int, extra: Sequence[str] = ()) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edge_runtime",
                "serve",
                str(bundle),
                "--host",
                HOST,
                "--port",
                "0",
                "--workers",
                str(workers),
                "--max-queue",
                str(max_queue),
                *extra,
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            banner = self._first_line()
            match = re.search(r"on http://([\d.]+):(\d+)/v2$", banner)
            if not match:
                raise RuntimeError(f"unexpected server banner: {banner!r}")
            self.host, self.port = match.group(1), int(match.group(2))
            self.model = re.search(r"serving '([^']+)'", banner).group(1)  # type: ignore[union-attr]  # in every banner
            self._wait_ready()
            self.ps = psutil.Process(self.proc.pid)
        except BaseException:
            self.stop()
            raise

    def _first_line(self) -> str:
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line:
            self.proc.wait(timeout=START_TIMEOUT_S)
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"server exited {self.proc.returncode} before listening: {err.strip()}")
        return line.strip()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
                conn.request("GET", "/v2/health/ready")
                if conn.getresponse().status == 200:
                    conn.close()
                    return
                conn.close()
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("server did not become ready")

    def rss_mb(self) -> float:
        return self.ps.memory_info().rss / 2**20

    def stop(self) -> int | None:
        """SIGTERM (graceful), then kill if it has not exited within 30 s; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()
        return self.proc.returncode

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------------- clients


@dataclass
class Record:
    """One request as the client saw it."""

    latency_ms: float
    status: int  # HTTP status; 0 = connection error
    budget_ms: float | None = None
    members_used: int = 0
    exit_reason: str = ""
    server_ms: float = float("nan")  # anytime_elapsed_ms: handler start to answer ready
    infer_ms: float = float("nan")  # anytime_infer_ms: the runtime's own predict time
    retry_after_s: float = 0.0  # the Retry-After of a 503


class Client:
    """One keep-alive HTTP/1.1 connection speaking just enough HTTP for this benchmark.

    A raw socket rather than http.client: http.client parses headers with the email package (~0.1 ms a
    response) and writes headers and body in two sends; on a 2-core box the load generator's own CPU
    time is taken from the server, so the client does as little as it can. TCP_NODELAY, as urllib3 and
    httpx set it. Reconnects after a connection error.
    """

    def __init__(self, host: str, port: int, path: str) -> None:
        self.host, self.port = host, port
        self.prefix = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\nContent-Length: "
        ).encode()
        self.sock: socket.socket | None = None

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _exchange(self, request: bytes) -> tuple[int, bytes, bytes]:
        if self.sock is None:
            self.sock = self._connect()
        self.sock.sendall(request)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        status = int(head[9:12])
        match = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
        length = int(match.group(1)) if match else 0
        while len(body) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection mid-body")
            body += chunk
        if re.search(rb"(?i)\r\nconnection:\s*close", head):
            self.close()
        return status, head, body

    def get_ms(self, path: str) -> float:
        """Round trip of a GET (the HTTP stack's own floor when ``path`` is /v2/health/live)."""
        request = f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n\r\n".encode()
        t0 = time.perf_counter()
        status, _, _ = self._exchange(request)
        if status != 200:
            raise RuntimeError(f"GET {path} answered HTTP {status}")
        return (time.perf_counter() - t0) * 1e3

    def post(self, body: bytes | tuple[bytes, int], budget_ms: float | None) -> Record:
        """POST a JSON body, or (body, JSON header length) for Triton's binary tensor extension."""
        extra = b""
        if isinstance(body, tuple):
            body, json_length = body
            extra = b"\r\nInference-Header-Content-Length: " + str(json_length).encode()
        request = self.prefix + str(len(body)).encode() + extra + b"\r\n\r\n" + body
        t0 = time.perf_counter()
        try:
            status, head, data = self._exchange(request)
        except (OSError, ValueError):
            self.close()
            return Record((time.perf_counter() - t0) * 1e3, 0, budget_ms)
        latency = (time.perf_counter() - t0) * 1e3
        record = Record(latency, status, budget_ms)
        if status == 200:
            params = json.loads(data)["parameters"]
            record.members_used = params["anytime_members_used"]
            record.exit_reason = params["anytime_exit_reason"]
            record.server_ms = params["anytime_elapsed_ms"]
            record.infer_ms = params["anytime_infer_ms"]
        elif status == 503:
            match = re.search(rb"(?i)\r\nretry-after:\s*(\d+)", head)
            record.retry_after_s = float(match.group(1)) if match else 1.0
        return record

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


@dataclass
class Workload:
    """What the clients send: pre-encoded bodies, cycled; ``budgets`` parallel to ``bodies``."""

    bodies: list[bytes]
    budgets: list[float | None]

    def cycle(self, offset: int) -> Iterator[tuple[bytes, float | None]]:
        i = offset
        while True:
            yield self.bodies[i % len(self.bodies)], self.budgets[i % len(self.budgets)]
            i += 1


def run_load(
    server: ServerProcess,
    workload: Workload,
    clients: int,
    seconds: float,
    max_requests: int,
    backoff: bool = False,
    on_tick: Any = None,
) -> tuple[list[Record], float, float]:
    """``clients`` closed-loop clients for ``seconds`` or ``max_requests`` in all.

    With ``backoff`` a client that gets a 503 waits the Retry-After the server sent (as a well-behaved
    client does); without, it sends its next request at once (the worst case: shed requests come straight
    back, and the server spends its time refusing them).

    Returns:
        The records, the wall time (s) and the server's CPU use meanwhile (100 = one core busy).
    """
    path = f"/v2/models/{server.model}/infer"
    stop_at = time.perf_counter() + seconds
    counter = iter(range(max_requests))
    lock = threading.Lock()
    records: list[list[Record]] = [[] for _ in range(clients)]

    def loop(k: int) -> None:
        client = Client(server.host, server.port, path)
        try:
            for body, budget in workload.cycle(offset=k * 7919):
                with lock:
                    if next(counter, None) is None:
                        return
                if time.perf_counter() >= stop_at:
                    return
                record = client.post(body, budget)
                records[k].append(record)
                if backoff and record.status == 503:
                    time.sleep(max(0.0, min(record.retry_after_s, stop_at - time.perf_counter())))
        finally:
            client.close()

    threads = [threading.Thread(target=loop, args=(k,), daemon=True) for k in range(clients)]
    cpu0 = server.ps.cpu_times()
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        if on_tick is not None:
            on_tick(time.perf_counter() - t0)
        for t in threads:
            t.join(timeout=1.0 / len(threads))
    wall = time.perf_counter() - t0
    cpu1 = server.ps.cpu_times()
    cpu_percent = 100.0 * (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / wall
    return [r for rs in records for r in rs], wall, cpu_percent


# ---------------------------------------------------------------------------------------------- statistics


def _pct(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def summarize(records: list[Record], wall_s: float, server_cpu_percent: float) -> dict[str, Any]:
    ok = [r for r in records if r.status == 200]
    lat = [r.latency_ms for r in ok]
    budgeted = [r for r in ok if r.budget_ms is not None]
    late = [r for r in budgeted if r.latency_ms > r.budget_ms + PAST_BUDGET_SLACK_MS]  # type: ignore[operator]  # set: budgeted
    server_late = [r for r in budgeted if r.server_ms > r.budget_ms]  # type: ignore[operator]  # set: budgeted
    shed = [r for r in records if r.status == 503]
    return {
        "requests": len(records),
        "ok": len(ok),
        "shed_503": len(shed),
        "other_5xx": sum(1 for r in records if r.status >= 500 and r.status != 503),
        "other_errors": sum(1 for r in records if r.status != 200 and r.status < 500),
        "wall_s": wall_s,
        "server_cpu_percent": server_cpu_percent,
        "throughput_rps": len(ok) / wall_s if wall_s > 0 else 0.0,
        "latency_ms": {"p50": _pct(lat, 50), "p90": _pct(lat, 90), "p99": _pct(lat, 99), "max": max(lat, default=None)},
        "server_ms_p50": _pct([r.server_ms for r in ok], 50),
        "shed_latency_ms_p50": _pct([r.latency_ms for r in shed], 50),
        "shed_share": len(shed) / len(records) if records else 0.0,
        "past_budget_share": len(late) / len(budgeted) if budgeted else None,
        # late by the server's own clock (handler start to answer ready): the rest of the lateness is HTTP
        # parsing and sending, and waiting for a core, outside the server's view
        "server_past_budget_share": len(server_late) / len(budgeted) if budgeted else None,
        "mean_members": float(np.mean([r.members_used for r in ok])) if ok else None,
    }


def _conditions(meter_start: tuple[float, float]) -> dict[str, Any]:
    cpu = psutil.cpu_times_percent(interval=None)
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        load = []
    return {
        "load_average": load,
        "cpu_busy_percent_since_start": round(100.0 - cpu.idle, 1),
        "wall_s": round(time.monotonic() - meter_start[0], 1),
    }


# ---------------------------------------------------------------------------------------------- phases


def measure_overhead(server: ServerProcess, runtime: Any, x: np.ndarray, requests: int, budget_ms: float) -> dict[str, Any]:
    """Sequential HTTP requests interleaved with in-process predict on the same samples."""
    name = runtime.manifest.task.input.name
    run_all = {"anytime_budget_ms": "off", "anytime_entropy_threshold": "off"}
    modes = {
        "run-all": (_bodies(x, name, run_all), "off"),
        "run-all binary": (_binary_bodies(x, name, run_all), "off"),
        "budget": (_bodies(x, name, {"anytime_budget_ms": budget_ms, "anytime_entropy_threshold": "off"}), budget_ms),
    }
    client = Client(server.host, server.port, f"/v2/models/{server.model}/infer")
    out: dict[str, Any] = {}
    try:
        for mode, (bodies, budget) in modes.items():
            for i in range(min(50, requests)):  # warm both sides
                runtime.predict(x[i : i + 1], budget_ms=budget, entropy_threshold="off")
                client.post(bodies[i % len(bodies)], None)
            local, remote, server_side, infer, floor, shed, local_cpu = [], [], [], [], [], 0, 0.0
            cpu0 = server.ps.cpu_times()
            for i in range(requests):
                j = i % len(x)
                floor.append(client.get_ms("/v2/health/live"))
                c0, t0 = time.thread_time(), time.perf_counter()
                runtime.predict(x[j : j + 1], budget_ms=budget, entropy_threshold="off")
                t1 = time.perf_counter()
                local_cpu += time.thread_time() - c0
                record = client.post(bodies[j], None)
                if record.status == 503:  # a budget too tight for this machine's load: counted, not timed
                    shed += 1
                    continue
                if record.status != 200:
                    raise RuntimeError(f"overhead request failed with HTTP {record.status}")
                local.append((t1 - t0) * 1e3)
                remote.append(record.latency_ms)
                server_side.append(record.server_ms)
                infer.append(record.infer_ms)
            cpu1 = server.ps.cpu_times()
            cpu_live = _live_cpu_ms(server, client, requests)
            diff = np.array(remote) - np.array(local)
            if not remote:
                raise RuntimeError(f"every {mode} request was shed; raise --budget-ms")
            out[mode] = {
                "requests": requests,
                "shed_503": shed,
                "in_process_ms": {"p50": _pct(local, 50), "p99": _pct(local, 99)},
                "http_ms": {"p50": _pct(remote, 50), "p99": _pct(remote, 99)},
                "server_elapsed_ms_p50": _pct(server_side, 50),
                "server_predict_ms_p50": _pct(infer, 50),  # the runtime's predict inside the server
                # the same server's GET /v2/health/live, interleaved: what HTTP costs before any inference
                "http_floor_ms": {"p50": _pct(floor, 50), "p99": _pct(floor, 99)},
                # CPU the server process spent per request (user + system; the GETs' own CPU, measured
                # separately, taken off): less sensitive than wall time to waiting for a core on a busy machine
                "server_cpu_ms_per_request": (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / requests * 1e3 - cpu_live,
                "server_cpu_ms_per_live_get": cpu_live,
                "in_process_cpu_ms_per_predict": local_cpu / requests * 1e3,
                "overhead_ms": {
                    "p50_of_paired": float(np.median(diff)),
                    "p10": _pct(diff, 10),
                    "p90": _pct(diff, 90),
                    "p50_difference": float(np.percentile(remote, 50)) - float(np.percentile(local, 50)),
                },
            }
    finally:
        client.close()
    return out


def _live_cpu_ms(server: ServerProcess, client: Client, requests: int) -> float:
    """Server CPU per GET /v2/health/live, to take the interleaved GETs off the inference requests' CPU."""
    cpu0 = server.ps.cpu_times()
    for _ in range(requests):
        client.get_ms("/v2/health/live")
    cpu1 = server.ps.cpu_times()
    return (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / requests * 1e3


def _workload(x: np.ndarray, name: str, mode: str, budget_ms: float) -> Workload:
    if mode == "run-all":
        return Workload(_bodies(x, name, {"anytime_budget_ms": "off", "anytime_entropy_threshold": "off"}), [None])
    if mode == "budget":
        return Workload(_bodies(x, name, {"anytime_budget_ms": budget_ms, "anytime_entropy_threshold": "off"}), [budget_ms])
    # mixed: alternate run-all and budget requests
    run_all = _workload(x, name, "run-all", budget_ms).bodies
    budget = _workload(x, name, "budget", budget_ms).bodies
    bodies = [b for pair in zip(run_all, budget) for b in pair]
    return Workload(bodies, [None, budget_ms] * len(run_all))


# ---------------------------------------------------------------------------------------------- report


def _level_rows(levels: list[dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for lv in levels:
        s = lv["stats"]
        rows.append(
            [
                f"{lv['mode']} x{lv['clients']}" + (f" w{lv['workers']}" if "workers" in lv else ""),
                s["requests"],
                s["throughput_rps"],
                s["latency_ms"]["p50"],
                s["latency_ms"]["p99"],
                s["server_ms_p50"],
                s["mean_members"],
                f"{100 * s['shed_share']:.1f}%",
                "-" if s["past_budget_share"] is None else f"{100 * s['past_budget_share']:.2f}%",
                "-" if s["server_past_budget_share"] is None else f"{100 * s['server_past_budget_share']:.2f}%",
                s["other_5xx"] + s["other_errors"],
                f"{s['server_cpu_percent']:.0f}%",
                lv.get("load_average", "-"),
            ]
        )
    return rows


_LEVEL_HEADERS = [
    "load",
    "requests",
    "ok/s",
    "p50 ms",
    "p99 ms",
    "server p50",
    "members",
    "503",
    "late",
    "late (srv)",
    "errors",
    "srv cpu",
    "loadavg",
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "runs/demo/bundle")
    parser.add_argument("--data", type=Path, default=ROOT / "runs/demo/test.npz", help=".npz with inputs 'x'")
    parser.add_argument("--dev", action="store_true", help="use a generated 4-member bundle instead (needs onnx)")
    parser.add_argument("--quick", action="store_true", help="short phases, for development (~1 min)")
    parser.add_argument(
        "--budget-ms",
        type=float,
        default=5.0,
        help="latency budget of budget requests, counted from arrival at the server (default: 5)",
    )
    parser.add_argument("--workers", type=int, default=default_workers(), help="server inference threads")
    parser.add_argument("--max-queue", type=int, default=32, help="server queue bound")
    parser.add_argument("--level-s", type=float, default=None, help="seconds per load level (default 10; quick 2)")
    parser.add_argument("--sustain-s", type=float, default=None, help="sustained phase (default 60; quick 5)")
    parser.add_argument("--sweep", default="1,2,4", help="worker counts for the sweep ('' skips it)")
    parser.add_argument("--max-requests", type=int, default=50_000, help="cap on requests per phase")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--overload", action="store_true", help="run only the overload phases (5)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per overload phase (default 60)")
    parser.add_argument("--storm-budget-ms", type=float, default=1.0, help="budget of the overload phases (default 1)")
    parser.add_argument("--repeat", type=int, default=1, help="overload runs, each on a fresh server (default 1)")
    parser.add_argument(
        "--server-flag",
        action="append",
        default=[],
        metavar="FLAG",
        help="extra `anytime-edge serve` flag for the overload servers (repeatable), e.g. --no-backpressure",
    )
    parser.add_argument(
        "--phases",
        default="single,storm16,storm200,polite16,idle300",
        help="overload phases to run, comma-separated (default: all; goals of phases left out read '-')",
    )
    parser.add_argument(
        "--switch-interval-ms",
        type=float,
        default=None,
        help="passed to the server in the overload phases (default: the server's own)",
    )
    args = parser.parse_args(argv)
    level_s = args.level_s if args.level_s is not None else (2.0 if args.quick else 10.0)
    sustain_s = args.sustain_s if args.sustain_s is not None else (5.0 if args.quick else 60.0)
    overhead_n = 200 if args.quick else 1000
    sweep = [int(w) for w in args.sweep.split(",") if w.strip()]

    tmp = tempfile.TemporaryDirectory(prefix="serve_load.")
    try:
        if args.dev:
            bundle, x = _dev_bundle(Path(tmp.name))
            source = "generated dev bundle (4 members, 1x28x28 -> 10 classes, hidden 1024)"
        else:
            if not (args.bundle / "manifest.json").is_file() or not args.data.is_file():
                print(
                    f"serve_load: {args.bundle} or {args.data} is missing; run `make demo` first, pass --bundle "
                    "and --data, or use --dev",
                    file=sys.stderr,
                )
                return 2
            with np.load(args.data, allow_pickle=False) as data:
                x = np.asarray(data["x"], dtype=np.float32)[:512]
            bundle, source = args.bundle, str(args.bundle)
        if args.overload:
            return _run_overload(args, bundle, source, x)
        return _run(args, bundle, source, x, level_s, sustain_s, overhead_n, sweep)
    finally:
        tmp.cleanup()


def _run(
    args: argparse.Namespace,
    bundle: Path,
    source: str,
    x: np.ndarray,
    level_s: float,
    sustain_s: float,
    overhead_n: int,
    sweep: list[int],
) -> int:
    started = (time.monotonic(), 0.0)
    psutil.cpu_times_percent(interval=None)
    runtime = edge_runtime.load(bundle, warmup=16)
    name = runtime.manifest.task.input.name
    budget_ms = args.budget_ms
    info = device_info()
    header = (
        f"serve_load: {source}, {runtime.manifest.num_members} members; budget {budget_ms:g} ms; "
        f"server workers {args.workers}, max queue {args.max_queue}; device {info['cpu_model']}, "
        f"{info['logical_cores']} logical cores, {info['os']}, onnxruntime {info['onnxruntime']}; "
        f"load average at start {[round(v, 2) for v in os.getloadavg()]}"
    )
    print(header, flush=True)
    results: dict[str, Any] = {
        "benchmark": "serve_load",
        "bundle": source,
        "members": runtime.manifest.num_members,
        "budget_ms": budget_ms,
        "past_budget_slack_ms": PAST_BUDGET_SLACK_MS,
        "workers": args.workers,
        "max_queue": args.max_queue,
        "device": info,
        "client": "closed loop, keep-alive raw-socket HTTP/1.1, one thread per client, no back-off on 503",
        "level_s": level_s,
        "sustain_s": sustain_s,
    }
    with ServerProcess(bundle, args.workers, args.max_queue) as server:
        results["overhead"] = measure_overhead(server, runtime, x, overhead_n, budget_ms)
        rows = [
            [
                mode,
                o["in_process_ms"]["p50"],
                o["http_ms"]["p50"],
                o["http_ms"]["p99"],
                o["server_elapsed_ms_p50"],
                o["server_predict_ms_p50"],
                o["overhead_ms"]["p50_of_paired"],
                o["overhead_ms"]["p10"],
                o["overhead_ms"]["p90"],
                o["http_floor_ms"]["p50"],
                o["server_cpu_ms_per_request"],
                o["in_process_cpu_ms_per_predict"],
                o["server_cpu_ms_per_live_get"],
            ]
            for mode, o in results["overhead"].items()
        ]
        print("\n1. HTTP overhead, one client, interleaved with in-process predict and GET /v2/health/live (ms)")
        print(
            format_table(
                [
                    "mode",
                    "in-proc p50",
                    "http p50",
                    "http p99",
                    "server p50",
                    "predict p50",
                    "overhead p50",
                    "p10",
                    "p90",
                    "GET live p50",
                    "srv cpu/req",
                    "in-proc cpu",
                    "cpu/GET",
                ],
                rows,
            )
        )

        levels = []
        for mode, backoff in (("run-all", False), ("budget", False), ("budget", True)):
            workload = _workload(x, name, mode, budget_ms)
            for clients in LEVELS:
                stats = summarize(*run_load(server, workload, clients, level_s, args.max_requests, backoff=backoff))
                levels.append(
                    {
                        "mode": mode + (" retry-after" if backoff else ""),
                        "backoff": backoff,
                        "clients": clients,
                        "stats": stats,
                        "load_average": os.getloadavg()[0],
                    }
                )
        results["levels"] = levels
        print(
            f"\n2. Load: closed-loop clients, {level_s:g} s per level; late = answers past budget + "
            f"{PAST_BUDGET_SLACK_MS:g} ms (client clock), late (srv) = past budget by the server's clock; "
            "'retry-after' clients wait the Retry-After of a 503, the others retry at once"
        )
        print(format_table(_LEVEL_HEADERS, _level_rows(levels)))

        rss: list[tuple[float, float]] = []
        rss_start = server.rss_mb()

        def sample(elapsed: float) -> None:
            if not rss or elapsed - rss[-1][0] >= 1.0:
                rss.append((elapsed, server.rss_mb()))

        outcome = run_load(server, _workload(x, name, "mixed", budget_ms), 16, sustain_s, 10**9, on_tick=sample)
        rss_end = server.rss_mb()
        rss_values = [v for _, v in rss] + [rss_end]
        sustained = {
            "clients": 16,
            "stats": summarize(*outcome),
            "rss_mb": {"start": rss_start, "end": rss_end, "max": max(rss_values)},
            "rss_growth": rss_end / rss_start - 1.0,
            "rss_samples": rss,
        }
        results["sustained"] = sustained
        server_exit = server.stop()
        results["server_exit_status"] = server_exit
    print(f"\n3. Sustained: 16 clients for {sustain_s:g} s, alternating run-all and budget requests")
    print(format_table(_LEVEL_HEADERS, _level_rows([{"mode": "mixed", "clients": 16, "stats": sustained["stats"]}])))
    print(
        f"server RSS {rss_start:.1f} -> {rss_end:.1f} MiB (max {max(rss_values):.1f}): "
        f"growth {100 * sustained['rss_growth']:+.1f}%; server exit status after SIGTERM: {server_exit}"
    )

    sweep_levels = []
    for workers in sweep:
        with ServerProcess(bundle, workers, args.max_queue) as server:
            workload = _workload(x, name, "budget", budget_ms)
            run_load(server, workload, 4, min(1.0, level_s), 2000)  # warm up the fresh server
            for backoff in (False, True):
                stats = summarize(*run_load(server, workload, 16, level_s, args.max_requests, backoff=backoff))
                sweep_levels.append(
                    {
                        "mode": "budget" + (" retry-after" if backoff else ""),
                        "backoff": backoff,
                        "clients": 16,
                        "workers": workers,
                        "stats": stats,
                        "load_average": os.getloadavg()[0],
                    }
                )
    results["workers_sweep"] = sweep_levels
    if sweep_levels:
        print(f"\n4. Worker threads, budget requests at 16 clients ({level_s:g} s each)")
        print(format_table(_LEVEL_HEADERS, _level_rows(sweep_levels)))

    overhead = results["overhead"]["run-all"]["overhead_ms"]["p50_of_paired"]
    sus = sustained["stats"]
    goals = {"http_overhead_p50_ms": {"value": overhead, "goal": "<= 1.0", "met": overhead <= 1.0}}
    for backoff in (False, True):
        budget_levels = [lv["stats"] for lv in levels if lv["mode"].startswith("budget") and lv["backoff"] == backoff]
        answered = sum(s["ok"] for s in budget_levels)
        late = sum(round(s["past_budget_share"] * s["ok"]) for s in budget_levels if s["past_budget_share"] is not None)
        share = late / answered if answered else None
        key = "past_budget_share" + ("_retry_after_clients" if backoff else "_no_backoff_clients")
        goals[key] = {"value": share, "goal": "<= 0.01", "met": share is not None and share <= 0.01}
    goals.update(
        {
            "sustained_other_5xx": {
                "value": sus["other_5xx"] + sus["other_errors"],
                "goal": "0",
                "met": sus["other_5xx"] + sus["other_errors"] == 0,
            },
            "sustained_rss_growth": {"value": sustained["rss_growth"], "goal": "<= 0.10", "met": sustained["rss_growth"] <= 0.10},
        }
    )
    results["goals"] = goals
    results["conditions"] = _conditions(started)
    print("\nGoals")
    print(
        format_table(
            ["goal", "value", "target", "met"],
            [[k, g["value"], g["goal"], "yes" if g["met"] else "NO"] for k, g in goals.items()],
        )
    )
    print(f"conditions: {results['conditions']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=float) + "\n")
        print(f"wrote {args.json}")
    return 0


def _scrape_shed(server: ServerProcess) -> dict[str, float]:
    """The server's own counts from GET /metrics: requests by status, 503s by reason, holds (empty if none)."""
    try:
        from prometheus_client.parser import text_string_to_metric_families

        conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        text = response.read().decode()
        conn.close()
        if response.status != 200:  # a server without /metrics
            return {}
        out = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "anytime_shed_total":
                    out[f"shed_{s.labels['reason']}"] = s.value
                elif s.name == "anytime_requests_total":
                    out[f"status_{s.labels['status']}"] = s.value
                elif s.name in ("anytime_holds_total", "anytime_hold_refreshes_total"):
                    out[s.name.removeprefix("anytime_").removesuffix("_total")] = s.value
        return out
    except (ImportError, OSError, ValueError):
        return {}


def _run_overload(args: argparse.Namespace, bundle: Path, source: str, x: np.ndarray) -> int:
    """Phase 5: retry storms and idle connections, ``--repeat`` times on fresh servers."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _overload

    started = (time.monotonic(), 0.0)
    psutil.cpu_times_percent(interval=None)
    info = device_info()
    budget = args.storm_budget_ms
    name = edge_runtime.load(bundle, warmup=1).manifest.task.input.name
    bodies = _bodies(x, name, {"anytime_budget_ms": budget, "anytime_entropy_threshold": "off"})
    print(
        f"serve_load --overload: {source}; budget {budget:g} ms; {args.duration:g} s per phase, {args.repeat} run(s); "
        f"server workers {args.workers}, max queue {args.max_queue}; device {info['cpu_model']}, "
        f"{info['logical_cores']} logical cores; load average {[round(v, 2) for v in os.getloadavg()]}",
        flush=True,
    )
    phases = {"single": (1, 0), "storm16": (16, 0), "storm200": (200, 0), "polite16": (16, 0), "idle300": (16, 300)}
    chosen = [p.strip() for p in args.phases.split(",") if p.strip()]
    if not chosen or set(chosen) - set(phases):
        print(f"serve_load: --phases takes some of {', '.join(phases)}", file=sys.stderr)
        return 2
    phases = {p: phases[p] for p in phases if p in chosen}
    runs: list[dict[str, Any]] = []
    for _ in range(args.repeat):
        extra = [] if args.switch_interval_ms is None else ["--switch-interval-ms", str(args.switch_interval_ms)]
        extra += args.server_flag
        with ServerProcess(bundle, args.workers, args.max_queue, extra) as server:
            path = f"/v2/models/{server.model}/infer"
            _overload.run_phase(server.host, server.port, path, bodies, 1, min(2.0, args.duration), 2000)  # warm up
            rss_start = server.rss_mb()
            stats = {}
            for phase, (clients, idle) in phases.items():
                raw = _overload.run_phase(
                    server.host,
                    server.port,
                    path,
                    bodies,
                    clients,
                    args.duration,
                    args.max_requests * 10,
                    idle=idle,
                    server=server.ps,
                    polite=phase == "polite16",
                )
                stats[phase] = _overload.summarize(raw, budget)
                stats[phase]["load_average"] = os.getloadavg()[0]
                stats[phase]["rss_mb_after"] = server.rss_mb()  # where growth happens (a leak keeps rising)
            rss_growth = server.rss_mb() / rss_start - 1.0
            server_counts = _scrape_shed(server)
            runs.append(
                {
                    "stats": stats,
                    "rss_mb_start": rss_start,
                    "rss_growth": rss_growth,
                    "server_counts": server_counts,
                    "goals": _overload.overload_goals(stats, rss_growth),
                    "server_exit_status": server.stop(),
                }
            )
    rows = []
    for phase in phases:
        per_run = [r["stats"][phase] for r in runs]

        def spread(values: list[Any], fmt: str = "{:.1f}") -> str:
            vals = [v for v in values if v is not None]
            if not vals:
                return "-"
            text = fmt.format(float(np.median(vals)))
            return text if len(vals) == 1 else f"{text} [{fmt.format(min(vals))}-{fmt.format(max(vals))}]"

        rows.append(
            [
                phase,
                spread([s["requests"] for s in per_run], "{:.0f}"),
                spread([s["goodput_rps"] for s in per_run]),
                spread([100 * s["shed_503"] / max(1, s["requests"]) for s in per_run]),
                spread([s["latency_ms_200"]["p50"] for s in per_run], "{:.2f}"),
                spread([s["latency_ms_200"]["p99"] for s in per_run], "{:.2f}"),
                spread([None if s["late_share"] is None else 100 * s["late_share"] for s in per_run], "{:.2f}"),
                sum(s["other_5xx"] for s in per_run),
                sum(s["other"] for s in per_run),
                spread([s.get("jain_fairness_200") for s in per_run], "{:.2f}"),
                spread([s.get("latency_ms_503_p99") for s in per_run], "{:.0f}"),
                spread([s["server_cpu_percent"] for s in per_run], "{:.0f}"),
                spread([s["client_cpu_percent"] for s in per_run], "{:.0f}"),
                spread([s["load_average"] for s in per_run]),
            ]
        )
    print(
        f"\n5. Overload: closed-loop clients retrying at once on 503, budget {budget:g} ms; median [min-max] of "
        f"{len(runs)} run(s); late = 200s past budget + {_overload.PAST_BUDGET_SLACK_MS:g} ms (client clock); "
        "fairness = Jain's index of the 200s per client (1 = equal)"
    )
    print(
        format_table(
            [
                "phase",
                "requests",
                "ok/s",
                "503 %",
                "p50 ms",
                "p99 ms",
                "late %",
                "5xx",
                "other",
                "fairness",
                "503 p99 ms",
                "srv cpu %",
                "client cpu %",
                "loadavg",
            ],
            rows,
        )
    )
    goal_rows = []
    for key in runs[0]["goals"]:
        values = [r["goals"][key]["value"] for r in runs]
        met = sum(1 for r in runs if r["goals"][key]["met"])
        goal_rows.append(
            [
                key,
                ", ".join("-" if v is None else f"{v:.3g}" for v in values),
                runs[0]["goals"][key]["goal"],
                f"{met}/{len(runs)}",
            ]
        )
    print("\nGoals (value per run)")
    print(format_table(["goal", "values", "target", "met"], goal_rows))
    results = {
        "benchmark": "serve_load --overload",
        "bundle": source,
        "budget_ms": budget,
        "duration_s": args.duration,
        "workers": args.workers,
        "max_queue": args.max_queue,
        "server_flags": args.server_flag,
        "device": info,
        "runs": runs,
        "client": "asyncio closed loop, keep-alive raw HTTP/1.1, no back-off on 503",
        "conditions": _conditions(started),
    }
    for r in runs:
        print(f"server counts (GET /metrics, all phases): {r['server_counts']}")
    print(f"conditions: {results['conditions']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=float) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
