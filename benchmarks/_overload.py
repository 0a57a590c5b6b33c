"""Overload phases of serve_load.py (issue 14): retry storms and idle connections against one server.

Clients are asyncio tasks in the load generator's process (200 threads would measure the generator's own
GIL instead of the server), each on one keep-alive HTTP/1.1 connection to 127.0.0.1, sending pre-encoded
single-sample V2 requests back to back; after a 503 a client sends its next request at once (no back-off:
every shed request comes straight back). Every phase is bounded by its duration and a request cap.

* ``single``: one client, the server's goodput baseline.
* ``storm16`` / ``storm200``: 16 / 200 such clients. Goals: goodput (200s per second) at 200 clients
  >= 80% of ``single``; at 16 clients <= 1% of the 200s later than budget + 1 ms (client clock).
* ``polite16``: 16 clients that wait the ``Retry-After`` of a 503 (for contrast with ``storm16``; no goal).
* ``idle300``: 300 connections that send nothing or half a request head, reopened 1 s after the server
  closes them (as an idle pool or a slow-loris client would), beside 16 real clients. Goal: the real
  clients' 200s p99 < 50 ms.
In all: no 5xx other than 503, server RSS growth <= 10% over the phases.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from typing import Any, Sequence

import numpy as np

PAST_BUDGET_SLACK_MS = 1.0
IDLE_REOPEN_S = 1.0  # an idle connection the server closed is reopened after this long


async def _client(
    host: str,
    port: int,
    path: str,
    bodies: Sequence[bytes],
    offset: int,
    stop_at: float,
    budget: list[int],
    records: list[tuple[int, float, int]],
    polite: bool = False,
) -> None:
    prefix = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\nContent-Length: ".encode()
    reader = writer = None
    i = offset
    while time.perf_counter() < stop_at and budget[0] > 0:
        budget[0] -= 1
        body = bodies[i % len(bodies)]
        i += 1
        t0 = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
                writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                t0 = time.perf_counter()
            writer.write(prefix + str(len(body)).encode() + b"\r\n\r\n" + body)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            match = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            await reader.readexactly(int(match.group(1)) if match else 0)
            status = int(head[9:12])
            records.append((status, (time.perf_counter() - t0) * 1e3, offset))
            if re.search(rb"(?i)\r\nconnection:\s*close", head):
                writer.close()
                writer = None
            if polite and status == 503:  # a well-behaved client waits the Retry-After
                wait = re.search(rb"(?i)\r\nretry-after:\s*(\d+)", head)
                await asyncio.sleep(min(float(wait.group(1)) if wait else 1.0, max(0.0, stop_at - time.perf_counter())))
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError):
            records.append((0, (time.perf_counter() - t0) * 1e3, offset))
            if writer is not None:
                writer.close()
            writer = None
            await asyncio.sleep(0.01)
    if writer is not None:
        writer.close()


async def _idle(host: str, port: int, half_head: bool, stop_at: float, reopened: list[int]) -> None:
    """Hold one connection that never completes a request; reopen it a second after the server closes it."""
    while time.perf_counter() < stop_at:
        try:
            reader, writer = await asyncio.open_connection(host, port)
            if half_head:
                writer.write(f"POST /v2/models/x/infer HTTP/1.1\r\nHost: {host}:{port}\r\n".encode())
            try:
                await asyncio.wait_for(reader.read(1), max(0.0, stop_at - time.perf_counter()))
            except asyncio.TimeoutError:
                pass
            writer.close()
        except OSError:
            pass
        reopened[0] += 1
        await asyncio.sleep(min(IDLE_REOPEN_S, max(0.0, stop_at - time.perf_counter())))


def run_phase(
    host: str,
    port: int,
    path: str,
    bodies: Sequence[bytes],
    clients: int,
    seconds: float,
    max_requests: int,
    idle: int = 0,
    server: Any = None,
    polite: bool = False,
) -> dict[str, Any]:
    """``clients`` closed-loop clients (and ``idle`` idle connections) for ``seconds``; returns the records.

    ``server`` (a psutil.Process) adds the server's CPU use; the load generator's own is always recorded:
    on a 2-core box the clients take CPU from the server, more so with 200 of them than with one.
    """
    records: list[tuple[int, float, int]] = []  # (status, client latency ms, client id)
    reopened = [0]
    budget = [max_requests]

    async def main() -> float:
        stop_at = time.perf_counter() + seconds
        idlers = [asyncio.create_task(_idle(host, port, k % 2 == 1, stop_at, reopened)) for k in range(idle)]
        if idle:
            await asyncio.sleep(1.0)  # let them connect before the real clients start
        t0 = time.perf_counter()
        await asyncio.gather(
            *(_client(host, port, path, bodies, k * 7919, stop_at, budget, records, polite) for k in range(clients))
        )
        wall = time.perf_counter() - t0
        await asyncio.gather(*idlers)
        return wall

    cpu0, server0 = time.process_time(), server.cpu_times() if server is not None else None
    wall = asyncio.run(main())
    client_cpu = 100.0 * (time.process_time() - cpu0) / wall
    server_cpu = None
    if server is not None:
        server1 = server.cpu_times()
        server_cpu = 100.0 * (server1.user + server1.system - server0.user - server0.system) / wall
    return {
        "records": records,
        "wall_s": wall,
        "idle_reopened": reopened[0],
        "client_cpu_percent": client_cpu,
        "server_cpu_percent": server_cpu,
    }


def summarize(phase: dict[str, Any], budget_ms: float) -> dict[str, Any]:
    records, wall = phase["records"], phase["wall_s"]
    ok = [ms for status, ms, _ in records if status == 200]
    refused = [ms for status, ms, _ in records if status == 503]
    per_client: dict[int, int] = {}
    for status, _, client in records:
        per_client[client] = per_client.get(client, 0) + (status == 200)
    counts = np.array(list(per_client.values()), dtype=np.float64)
    return {
        "requests": len(records),
        "ok": len(ok),
        "shed_503": len(refused),
        "other_5xx": sum(1 for status, _, _ in records if status >= 500 and status != 503),
        "other": sum(1 for status, _, _ in records if status not in (200, 503) and status < 500),  # 4xx, connection errors
        # How evenly the 200s went round the clients: Jain's fairness index (1 = equal shares, 1/n = one client
        # got all; Jain, Chiu and Hawe, DEC-TR-301, 1984) and the least-served client's 200s per second.
        "jain_fairness_200": float(counts.sum() ** 2 / (len(counts) * (counts**2).sum())) if counts.sum() else None,
        "min_client_ok_rps": float(counts.min()) / wall if len(counts) and wall > 0 else None,
        "latency_ms_503_p99": float(np.percentile(refused, 99)) if refused else None,
        "wall_s": wall,
        "goodput_rps": len(ok) / wall if wall > 0 else 0.0,
        "latency_ms_200": {q: (float(np.percentile(ok, int(q[1:]))) if ok else None) for q in ("p50", "p90", "p99")},
        "late_share": (sum(1 for ms in ok if ms > budget_ms + PAST_BUDGET_SLACK_MS) / len(ok)) if ok else None,
        "idle_reopened": phase["idle_reopened"],
        "client_cpu_percent": phase["client_cpu_percent"],  # 100 = one core
        "server_cpu_percent": phase["server_cpu_percent"],
    }


def overload_goals(stats: dict[str, dict[str, Any]], rss_growth: float) -> dict[str, dict[str, Any]]:
    """The issue-14 goals from the phases' statistics."""
    single = stats["single"]["goodput_rps"] if "single" in stats else None
    ratio = stats["storm200"]["goodput_rps"] / single if single and "storm200" in stats else None
    late = stats["storm16"]["late_share"] if "storm16" in stats else None  # None: the phase was not run
    idle_p99 = stats["idle300"]["latency_ms_200"]["p99"] if "idle300" in stats else None
    errors = sum(s["other_5xx"] for s in stats.values())
    return {
        "goodput_200_clients_vs_single": {"value": ratio, "goal": ">= 0.80", "met": ratio is not None and ratio >= 0.8},
        "late_share_16_clients": {"value": late, "goal": "<= 0.01", "met": late is not None and late <= 0.01},
        "p99_ms_beside_300_idle": {"value": idle_p99, "goal": "< 50", "met": idle_p99 is not None and idle_p99 < 50},
        "other_5xx": {"value": errors, "goal": "0", "met": errors == 0},
        "rss_growth": {"value": rss_growth, "goal": "<= 0.10", "met": rss_growth <= 0.10},
    }
