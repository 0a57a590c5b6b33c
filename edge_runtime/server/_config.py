"""How the V2 server runs: where it listens, the default exit controls, and how much work it takes on."""

from __future__ import annotations

import ipaddress
import math
import os
from dataclasses import dataclass, field

from edge_runtime.server._errors import ServerConfigError

HOLD_ORDERS = ("turns", "lifo", "fifo")  # which held request a free worker gets (see _connections.ReadGate)

__all__ = ["ServerConfig", "default_workers"]

_MIB = 2**20


def default_workers() -> int:
    """Inference threads for this machine: the usable cores minus one, at least one.

    One core stays with the event loop (HTTP parsing, JSON): a member evaluation releases the GIL inside
    ONNX Runtime, so with as many workers as cores the evaluations can take every core while answered
    requests wait for the loop to send them. On a 2-core box that is one worker. benchmarks/serve_load.py
    (``--sweep``) measures budgets kept and throughput with 1, 2 and 4 workers.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


@dataclass(frozen=True)
class ServerConfig:
    """Settings of one server process. Validated on construction; raises :class:`ServerConfigError`."""

    host: str = "127.0.0.1"  # loopback by default: exposing a factory PC's model is an explicit choice
    port: int = 8000  # 0 picks a free port (the chosen one is printed)
    model_name: str | None = None  # the name clients use in /v2/models/{name}; None = the bundle's name
    budget_ms: float | None = None  # default per-request latency budget; None = no budget
    entropy_threshold: float | None = None  # default exit threshold; None = the bundle's calibration
    workers: int = field(default_factory=default_workers)  # inference threads (the bounded pool)
    max_queue: int = 32  # requests allowed to wait for a worker; more are shed with 503
    no_budget_due_ms: float = (
        1000.0  # in the earliest-deadline-first queue, a request without a budget is due this long after arrival
    )
    max_body_bytes: int = 4 * _MIB  # larger request bodies (after inflating gzip/deflate) are refused with 413
    max_batch_rows: int = 4096  # samples per request; more are refused with 413 before the data is decoded
    chunk_rows: int = 256  # a batch runs through the runtime this many rows at a time (bounds ORT's buffers)
    # Host/Origin names served (see served_hosts): on a loopback bind besides the loopback names; on
    # another bind None accepts any; "*" accepts any anywhere.
    allowed_hosts: tuple[str, ...] | None = None
    reserve_ms: float = 0.5  # kept back from each budget for encoding and sending the answer
    max_connections: int = 256  # open connections; a new one beyond closes the longest-idle one (503 only if none is idle)
    backlog: int = 128  # connections the kernel queues before the server accepts them (listen backlog)
    header_timeout_s: float = 5.0  # a request head must be complete this long after the connection opens or the last answer
    body_timeout_s: float = 10.0  # a request body must be complete this long after its head (else 408 and close)
    keep_alive_s: float = 5.0  # an idle keep-alive connection is closed after this long without a byte
    # The interpreter's thread switch interval while serving (sys.setswitchinterval, restored after): how
    # long a worker back from ONNX Runtime may wait for the event loop to yield the interpreter lock. None
    # leaves Python's 5 ms.
    switch_interval_ms: float | None = 0.5
    shutdown_timeout_s: float = 30.0  # on SIGTERM, wait this long for in-flight requests, then cancel
    # While every worker is busy, a connection refused with 503 is held: its next request is read but not parsed
    # until a worker is free, the freshest first, its budget counted from its arrival (a client that resends at
    # once costs a read, not a 503 per retry); see _connections.ReadGate. False = parse everything at once.
    backpressure: bool = True
    # A held request is parsed after this long whatever the load (refused if its budget is spent). With "turns" a
    # client's wait is bounded by one round of the others (measured: 1 s cut needless refusals at 200 clients).
    max_hold_s: float = 1.0
    # Which held request a free worker gets (see _connections.ReadGate): "turns" (clients take turns, answers on
    # time), "lifo" the freshest (on time, but the fastest resenders get most answers), "fifo" the one held
    # longest (turns, but answers may be late).
    hold_order: str = "turns"
    access_log: str | None = None  # JSON-lines access log: a file path (appended to), "-" = standard output, None = off

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise ServerConfigError("host must be an address such as 127.0.0.1")
        if not 0 <= self.port <= 65535:
            raise ServerConfigError(f"port {self.port} is out of range; use 0-65535 (0 picks a free port)")
        if self.model_name is not None and (not self.model_name or "/" in self.model_name):
            raise ServerConfigError(f"model name {self.model_name!r} must be non-empty and contain no '/'")
        if self.budget_ms is not None and not (math.isfinite(self.budget_ms) and self.budget_ms > 0):
            raise ServerConfigError(f"budget_ms must be a positive number of milliseconds, not {self.budget_ms}")
        if self.entropy_threshold is not None and not (math.isfinite(self.entropy_threshold) and self.entropy_threshold >= 0):
            raise ServerConfigError(f"entropy_threshold must be a finite number >= 0, not {self.entropy_threshold}")
        if self.workers < 1:
            raise ServerConfigError(f"workers must be >= 1, not {self.workers}")
        if self.max_queue < 0:
            raise ServerConfigError(f"max_queue must be >= 0 (0 = never queue), not {self.max_queue}")
        if self.max_body_bytes < 1024:
            raise ServerConfigError(f"max_body_bytes must be at least 1024, not {self.max_body_bytes}")
        if self.max_batch_rows < 1:
            raise ServerConfigError(f"max_batch_rows must be >= 1, not {self.max_batch_rows}")
        if self.chunk_rows < 1:
            raise ServerConfigError(f"chunk_rows must be >= 1, not {self.chunk_rows}")
        if self.allowed_hosts is not None:
            if isinstance(self.allowed_hosts, str) or not all(
                isinstance(h, str) and h and not any(c.isspace() or c in "/@" for c in h) for h in self.allowed_hosts
            ):
                raise ServerConfigError(
                    f"allowed_hosts must be host names such as ('edge-7.factory.lan',), not {self.allowed_hosts!r}"
                )
            object.__setattr__(self, "allowed_hosts", tuple(self.allowed_hosts))
        if not (math.isfinite(self.no_budget_due_ms) and self.no_budget_due_ms > 0):
            raise ServerConfigError(f"no_budget_due_ms must be a positive number, not {self.no_budget_due_ms}")
        if not (math.isfinite(self.reserve_ms) and self.reserve_ms >= 0):
            raise ServerConfigError(f"reserve_ms must be a finite number >= 0, not {self.reserve_ms}")
        if self.max_connections < self.workers + self.max_queue:
            raise ServerConfigError(
                f"max_connections ({self.max_connections}) must be at least workers + max_queue "
                f"({self.workers + self.max_queue}), or queued requests would be refused for want of a connection"
            )
        if self.switch_interval_ms is not None and not (
            math.isfinite(self.switch_interval_ms) and 0 < self.switch_interval_ms <= 100
        ):
            raise ServerConfigError(f"switch_interval_ms must be in (0, 100] milliseconds or None, not {self.switch_interval_ms}")
        if self.backlog < 1:
            raise ServerConfigError(f"backlog must be >= 1, not {self.backlog}")
        for name in ("header_timeout_s", "body_timeout_s", "keep_alive_s", "max_hold_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ServerConfigError(f"{name} must be a positive number of seconds, not {value}")
        if self.hold_order not in HOLD_ORDERS:
            raise ServerConfigError(f"hold_order must be one of {list(HOLD_ORDERS)}, not {self.hold_order!r}")
        if self.access_log is not None and (not isinstance(self.access_log, str) or not self.access_log.strip()):
            raise ServerConfigError(f"access_log must be a file path or '-' (standard output), not {self.access_log!r}")
        if not (math.isfinite(self.shutdown_timeout_s) and self.shutdown_timeout_s > 0):
            raise ServerConfigError(f"shutdown_timeout_s must be a positive number, not {self.shutdown_timeout_s}")

    @property
    def served_hosts(self) -> frozenset[str] | None:
        """The Host/Origin names requests may carry; None = any (a non-loopback bind with no list).

        On a loopback bind the loopback names (and the bound address) always count: a browser page
        can reach 127.0.0.1, so other names are refused there unless listed (DNS rebinding). A listed
        ``"*"`` accepts any name (behind a proxy that checks them).
        """
        if (self.allowed_hosts is None and not self.is_loopback) or "*" in (self.allowed_hosts or ()):
            return None
        hosts = set(self.allowed_hosts or ())
        if self.is_loopback:
            hosts |= {"localhost", "127.0.0.1", "::1", self.host}
        return frozenset(h.lower() for h in hosts)

    @property
    def is_loopback(self) -> bool:
        """True when the server is reachable from this machine only."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False
