"""Run the V2 application under uvicorn: bind (loopback by default), serve, and stop gracefully on SIGTERM.

On SIGTERM or Ctrl-C uvicorn stops accepting connections, lets in-flight requests finish (up to
``ServerConfig.shutdown_timeout_s``), then the app stops its worker threads. Afterwards uvicorn re-raises
the signal it caught; for SIGTERM a handler installed here takes it, so a graceful stop returns normally
(exit status 0) instead of dying by the signal. Ctrl-C still ends in KeyboardInterrupt.
"""

from __future__ import annotations

import signal
import socket
import sys
import threading
from typing import Callable

import uvicorn

from edge_runtime.server._app import PathLike, RuntimeLike, create_app
from edge_runtime.server._config import ServerConfig
from edge_runtime.server._connections import ConnectionLimits, ReadGate, guarded_protocol
from edge_runtime.server._errors import ServerConfigError

__all__ = ["serve"]


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets that say they are TCP. Without it
    # a response written as headers + body waits for the client's delayed ACK (~40 ms per request).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ServerConfigError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port or --host") from None
    return sock


def serve(
    runtime: RuntimeLike | PathLike,
    config: ServerConfig | None = None,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Serve ``runtime`` until SIGTERM or Ctrl-C, then finish in-flight requests and return.

    Args:
        runtime: a loaded runtime, or a bundle path (see :func:`create_app`).
        config: server settings; ``port=0`` picks a free port.
        announce: called once with the base URL when the socket is bound (the CLI prints it).

    Raises:
        ServerConfigError: the address cannot be bound.
        KeyboardInterrupt: after a graceful stop caused by Ctrl-C (SIGINT).
    """
    config = config or ServerConfig()
    app = create_app(runtime, config)
    sock = _bind(config.host, config.port)
    host, port = sock.getsockname()[:2]
    limits = ConnectionLimits(config.max_connections, config.header_timeout_s, config.body_timeout_s)
    gate = None
    if config.backpressure:
        gate = ReadGate(
            app.state.server.busy, app.state.server.held_in_time, max_hold_s=config.max_hold_s, order=config.hold_order
        )
        app.state.server.scheduler.on_free = gate.release
        app.state.server.scheduler.on_queued = gate.admitted
        app.state.server.metrics.gate = gate  # GET /metrics reports the held connections
    uv_config = uvicorn.Config(
        app,
        http=guarded_protocol(
            limits, app.state.server.overloaded_response, gate
        ),  # httptools, with timeouts and the connection cap (see _connections)
        log_level="warning",
        access_log=False,
        lifespan="on",
        limit_concurrency=None,  # uvicorn's limit counts idle sockets; the protocol caps connections instead
        backlog=config.backlog,
        timeout_keep_alive=config.keep_alive_s,  # type: ignore[arg-type]  # a float works (loop.call_later)
        timeout_graceful_shutdown=max(1, round(config.shutdown_timeout_s)),
        server_header=False,
    )
    server = uvicorn.Server(uv_config)
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    if announce is not None:
        announce(url)
    # The event loop and the workers share the interpreter lock. A worker whose member just ran in ONNX
    # Runtime (which releases the lock) waits for the loop to yield it: up to the switch interval, 5 ms by
    # default, while the loop is busy (overload, a large body) -- longer than a whole 1 ms budget.
    switch_interval = sys.getswitchinterval()
    if config.switch_interval_ms is not None:
        sys.setswitchinterval(config.switch_interval_ms / 1e3)
    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if on_main else None
    if on_main:
        # uvicorn re-raises the SIGTERM it handled once shutdown is done; this handler takes it (and a
        # SIGTERM that arrives before uvicorn installs its own still stops the server).
        signal.signal(signal.SIGTERM, server.handle_exit)
    try:
        server.run(sockets=[sock])
    finally:
        sys.setswitchinterval(switch_interval)
        sock.close()
        if on_main:
            signal.signal(signal.SIGTERM, previous)
