"""The HTTP connections: slow or idle clients cannot hold the server, and the budget clock starts on arrival.

uvicorn's own protections do not cover a server that must answer within milliseconds (measured with
uvicorn 0.54): its ``limit_concurrency`` counts idle sockets, so 255 connections that never send a
request head make every real request get a plain-text 503 for as long as they stay open; a request head
sent a byte at a time has no time limit (any byte resets the keep-alive timer); and its pure-Python h11
parser costs ~150 us a request on a 2-core box, which under a retry storm is what fills the event loop
(httptools, the C parser uvicorn uses when it is installed: ~5 us).

So the server runs uvicorn's httptools protocol with these rules added (:class:`ConnectionLimits`):

* **Head timeout.** From a connection's start, and from the end of each answer on it, the next request head
  must be complete within ``header_timeout_s``; trickled bytes do not reset it. Otherwise the connection
  is closed (a half-sent head has no request to answer).
* **Head size.** A request line and headers over ``max_header_bytes`` (64 KiB) are answered 431 and the
  connection closed (uvicorn's h11 parser capped them at 16 KiB; httptools has no cap of its own).
* **Body timeout.** A request's body must arrive within ``body_timeout_s`` of its head; otherwise it is
  answered 408 (``{"error"}``, ``Connection: close``) if no answer has started, and the connection is closed.
* **Idle keep-alive** (uvicorn's ``timeout_keep_alive``): a connection with no byte of a new request for
  ``keep_alive_s`` is closed.
* **Connection cap without starving.** At most ``max_connections`` are open; a new one beyond that closes
  the connection that has been idle longest (no request in progress, including half-sent heads), as
  nginx reuses idle keep-alive connections. Only when every connection has a request in progress is the
  new one answered 503 ``{"error"}`` with ``Retry-After`` and ``Connection: close``.
* **Refusals without the application.** Under overload (every worker busy) an inference request is
  refused here, with the app's own rules (``_Server.overloaded_response``), before any ASGI task or request
  object exists; its body, when the decision needs it, is held (up to 64 KiB) until it is complete.
* **Backpressure** (:class:`ReadGate`, ``ServerConfig.backpressure``). While every worker is busy, a
  connection whose request has just been refused (503), or answered while others wait, is *held*: what its
  client sends next is read and stamped with its arrival time but not parsed, so a client that resends at
  once costs the event loop one read, not a refusal per retry. Which held request a free worker gets is the
  gate's ``order`` (default: clients take turns, and none is answered after its budget ran out: such a
  request is refused instead, even when a worker is free). A request held longer than ``max_hold_s`` is
  parsed then whatever the load, so none waits unanswered for long.
* **Arrival time.** The moment the first byte of a request is read (held) or parsed is stored in the ASGI scope
  (``scope["extensions"]["anytime.arrival"]``, a ``time.perf_counter()`` value); the budget counts from it,
  so time spent reading and parsing the body is spent from the budget (see :func:`arrival_time`).
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, MutableMapping

from starlette.types import Receive, Scope, Send

from edge_runtime.server._config import HOLD_ORDERS

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError as exc:  # httptools missing: name the extra that installs it
    from edge_runtime.extras import install_hint

    raise ImportError(
        f"the anytime-edge server needs 'httptools', which is not installed; {install_hint('serve')}", name="httptools"
    ) from exc

__all__ = ["ARRIVAL", "REFUSED", "ConnectionLimits", "ReadGate", "arrival_time", "guarded_protocol"]

logger = logging.getLogger("edge_runtime.server")

_DEFER_BYTES = 64 * 1024  # a body held back for the overload decision beyond this goes to the app undecided
_HOLD_BYTES = 64 * 1024  # a held connection is not read further once this much of its next request is kept
_LINGER_S = 1.0  # after an error answer, how long what the client still sends is read and dropped
ARRIVAL = "anytime.arrival"  # key in scope["extensions"]: perf_counter() when the request's first byte was parsed
REFUSED = "anytime.refused"  # key in scope["extensions"], set by the app when it answered 503 for overload


def arrival_time(scope: MutableMapping[str, Any], default: float) -> float:
    """When the request arrived (``time.perf_counter()``), as the connection layer stamped it, else ``default``."""
    extensions = scope.get("extensions") or {}
    value = extensions.get(ARRIVAL)
    return value if isinstance(value, float) else default


@dataclass(frozen=True)
class ConnectionLimits:
    """How long a connection may take over each part of a request, and how many may be open."""

    max_connections: int  # open connections; beyond it the longest-idle one is closed
    header_timeout_s: float  # a request head must be complete this long after the connection starts or the last answer ends
    body_timeout_s: float  # a request body must be complete this long after its head
    retry_after_s: int = 1  # Retry-After of the 503 sent when every connection is busy
    max_header_bytes: int = 64 * 1024  # request line + headers; more is answered 431 (httptools itself has no limit)


def _json_error(status: int, reason: bytes, message: str, extra: bytes = b"") -> bytes:
    """A whole HTTP/1.1 response: ``{"error": message}``, ``Connection: close``."""
    body = json.dumps({"error": message}).encode()
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%sconnection: close\r\n\r\n"
        % (status, reason, len(body), extra)
        + body
    )


class ReadGate:
    """Backpressure: held connections are read but not parsed while the server is busy; who is served next.

    A held connection is still read, but its bytes are kept (with the time the first one arrived) instead of
    being parsed. :meth:`release`, called when a worker comes free, when a held request arrives and every
    ``recheck_s``, hands one held request to the parser, chosen by ``order``:

    * ``"turns"`` (default): clients take turns, and no answer is late. Held connections queue by *turn*:
      since when their client has been waiting for an answer (a refusal keeps the place, an answer sends it to
      the back). A free worker gets the request of the earliest turn among those that can still make their
      deadlines. While a request runs, the earliest-turn held request whose budget is already spent is
      *refreshed*: parsed now, so it is refused (503), and its client, which resends at once, has a fresh
      request waiting by the time the worker frees. A served client's next request is held behind the others.
    * ``"lifo"``: the freshest request that can still make its deadline (adaptive LIFO; Maurer, "Fail at
      Scale", ACM Queue 13(8), 2015): on time and cheaper (no refresh refusals), but the clients that resend
      fastest get most answers.
    * ``"fifo"``: the request held longest, served even when its budget is spent (answered late, with the
      first member): every client takes turns, answers arrive late under a retry storm.

    In every order a held request is parsed after ``max_hold_s`` whatever the load (a few per re-check), so
    none waits unanswered for long; with "turns" and "lifo" it is then refused if its budget is spent.

    Args:
        busy: True while a new request could not start at once (every worker busy, or requests queued).
        in_time: (held bytes, arrival) -> whether that request can still make its deadline (not used by "fifo").
        recheck_s: while connections are held, how often to look for room and for requests held too long.
        max_hold_s: the longest a held request waits before it is parsed regardless of load.
        order: "turns", "lifo" or "fifo" (see above).
    """

    pending_s = 0.005  # a released request blocks the next release until it reaches the scheduler, or this long
    stale_per_recheck = 8  # at most this many over-long holds are parsed per re-check (no burst of refusals)
    release_per_call = 4  # held requests parsed per release while each is answered at once (e.g. refused)
    look_back = 8  # held requests examined per choice (the freshest for in-time ones, the earliest turns to refresh)

    def __init__(
        self,
        busy: Callable[[], bool],
        in_time: Callable[[bytes, float], bool] | None = None,
        recheck_s: float = 0.001,
        max_hold_s: float = 1.0,
        order: str = "turns",
    ) -> None:
        if not (recheck_s > 0 and max_hold_s > 0):
            raise ValueError("recheck_s and max_hold_s must be > 0")
        if order not in HOLD_ORDERS:
            raise ValueError(f"order must be one of {list(HOLD_ORDERS)}, not {order!r}")
        self._busy = busy
        self.order = order
        self._in_time = in_time if order != "fifo" else None
        self.recheck_s = recheck_s
        self.max_hold_s = max_hold_s
        self._silent: dict[Any, None] = {}  # held connections whose client has sent nothing yet
        self._ready: dict[Any, None] = {}  # held connections with a request waiting, in arrival order (oldest first)
        self._turns: dict[Any, int] = {}  # held connections by turn, earliest first -> its turn's number ("turns")
        self._turn_numbers = itertools.count()
        self._released: dict[Any, float] = {}  # released, request not begun yet -> when released (monotonic)
        self._refreshing: tuple[Any, float] | None = None  # refreshed, its client's new request not arrived yet
        self._timer: Any = None
        self.held = 0  # connections held so far
        self.refreshed = 0  # held requests refused early so that their clients resend in time ("turns")

    @property
    def waiting(self) -> int:
        """Connections held now."""
        return len(self._silent) + len(self._ready)

    def hold(self, conn: "_GuardedProtocol", answered: bool = False) -> bool:
        """Hold ``conn`` (read, not parsed) if the server is busy or others are held already.

        ``answered``: its last request was answered (not refused): its turn starts again, behind the others.
        """
        if not self.waiting and not self._busy():
            return False
        conn.begin_hold()
        self._silent[conn] = None
        if answered:
            self._turns.pop(conn, None)
        if conn not in self._turns:
            self._turns[conn] = next(self._turn_numbers)
        self.held += 1
        self._arm(conn.loop)
        return True

    def arrived(self, conn: "_GuardedProtocol") -> None:
        """The first byte of a request reached held ``conn``: it now waits."""
        if conn not in self._silent:
            return
        del self._silent[conn]
        self._ready[conn] = None
        if self._refreshing is not None and self._refreshing[0] is conn:
            self._refreshing = None
        self.release()

    def forget(self, conn: "_GuardedProtocol") -> None:
        """A connection closed: it no longer waits."""
        self._silent.pop(conn, None)
        self._ready.pop(conn, None)
        self._turns.pop(conn, None)
        self._released.pop(conn, None)
        if self._refreshing is not None and self._refreshing[0] is conn:
            self._refreshing = None

    def admitted(self) -> None:
        """A request reached the scheduler (its queue or a worker): a released one is no longer on its way.

        With "turns", a worker is now busy for a while: refresh the earliest turn if its budget is spent.
        """
        if self._released:
            self._released.clear()
        if self.order == "turns":
            self._refresh()

    def release(self) -> None:
        """Hand a held request to the parser if one could start now (a worker is free).

        One at a time: while a released request has not reached the scheduler (for up to ``pending_s``), no
        other is released, or two requests would race for one free worker and the later one be refused. A
        released request answered at once (e.g. refused) lets the next be released in the same call.
        """
        if not self.waiting or self._busy():
            return
        if self._released:
            now = time.monotonic()
            for conn, when in list(self._released.items()):
                if now - when > self.pending_s:
                    del self._released[conn]
            if self._released:
                return
        for _ in range(self.release_per_call):
            if not self._ready:
                break
            if self._busy():
                return
            conn = self._next()
            if conn is None:  # none can make its deadline
                if self.order == "turns":
                    self._refresh()
                return
            del self._ready[conn]
            self._turns.pop(conn, None)
            if conn.end_hold(waited=self.order != "fifo"):  # on its way to a worker
                self._released[conn] = time.monotonic()
                return
        if self._ready or self._busy():
            return
        for conn in list(self._silent):  # not busy and nobody waiting: back to normal reading
            del self._silent[conn]
            self._turns.pop(conn, None)
            conn.end_hold()

    def _next(self) -> Any:
        """The held request a free worker gets (see the orders), or None when none can make its deadline."""
        if self.order == "fifo":
            return next(iter(self._ready))
        fresh = []
        for conn in itertools.islice(reversed(self._ready), self.look_back):  # an older one is later still
            if self._in_time is not None and not self._in_time(conn.held_request(), conn.held_since()):
                break
            fresh.append(conn)
        if not fresh or self.order == "lifo":
            return fresh[0] if fresh else None
        return min(fresh, key=lambda conn: self._turns.get(conn, 1 << 62))

    def _refresh(self) -> None:
        """Refuse now the earliest-turn held request whose budget is spent, so its client resends in time.

        One at a time: not again until that client's new request has arrived (or ``pending_s`` passed)."""
        if self._refreshing is not None:
            if time.monotonic() - self._refreshing[1] < self.pending_s:
                return
            self._refreshing = None
        for conn in itertools.islice(self._turns, self.look_back):
            if conn not in self._ready:
                continue  # its client has sent nothing: nothing to refresh
            if self._in_time is None or self._in_time(conn.held_request(), conn.held_since()):
                return  # the earliest turn can still be served in time: it will be
            del self._ready[conn]
            self._refreshing = (conn, time.monotonic())
            self.refreshed += 1
            conn.end_hold()
            return

    def _expire(self) -> None:
        """Parse requests held longer than ``max_hold_s`` (oldest first, a few per call)."""
        limit = time.perf_counter() - self.max_hold_s
        for _ in range(self.stale_per_recheck):
            if not self._ready:
                return
            conn = next(iter(self._ready))
            if conn.held_since() > limit:
                return
            del self._ready[conn]
            conn.end_hold(waited=self.order != "fifo")

    def _arm(self, loop: Any) -> None:
        if self._timer is None:
            self._timer = loop.call_later(self.recheck_s, self._tick, loop)

    def _tick(self, loop: Any) -> None:
        self._timer = None
        self._expire()
        self.release()
        if self.waiting:
            self._arm(loop)


class _GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with head/body timeouts, idle eviction and the arrival stamp."""

    limits: ClassVar[ConnectionLimits]
    # (headers, body or None, arrival, waited) -> a whole 503 response to write, None to serve, b"" to decide on
    # the body; waited: the request was held by the read gate (its deadline is checked even if a worker is free)
    shed: ClassVar[Callable[[Any, bytes | None, float, bool], bytes | None] | None] = None
    gate: ClassVar[ReadGate | None] = None  # backpressure; None = always read

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._head_timer: Any = None
        self._body_timer: Any = None
        self._idle_since: float | None = time.monotonic()
        self._head_raw: int | None = 0  # bytes received since the current request head began (None: not reading a head)
        self._discarding = False  # answered and closing: what still arrives is read and dropped
        self._deferred: bytearray | None = None  # body held while deciding whether to refuse (overload)
        self._answered = False  # the current request was answered here, without the application
        self._held: bytearray | None = None  # held by the read gate: what arrived meanwhile, unparsed
        self._held_at = 0.0  # perf_counter() when the first held byte arrived
        self._held_arrival: float | None = None  # the arrival stamp of the request being fed from the hold
        self._hold_checks_deadline = True  # that request is refused if its budget is spent (ReadGate "lifo")
        self._waited = False  # the current request was held by the read gate
        if len(self.connections) > self.limits.max_connections and not self._evict_idle():
            self.app = self._refuse  # every open connection has a request in progress: answer 503
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        if self.gate is not None:
            self.gate.forget(self)
        super().connection_lost(exc)

    # -- the parts of a request ----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        if self._held is not None:
            first = not self._held
            if first:
                self._held_at = time.perf_counter()
                self._idle_since = None  # a request is waiting: no longer idle
            self._held += data
            if len(self._held) > _HOLD_BYTES:
                self.flow.pause_reading()
            if first and self.gate is not None:
                self.gate.arrived(self)  # (may release this very connection: nothing follows here)
            return
        reading_head = self._head_raw is not None
        super().data_received(data)
        if reading_head and self._head_raw is not None and not self.transport.is_closing():
            # Still inside a head after this data: httptools buffers a header until its line ends, so count
            # raw bytes here too, not only the complete headers seen in on_header.
            self._head_raw += len(data)
            if self._head_raw > self.limits.max_header_bytes:
                self._head_too_large = True
                self.send_400_response("")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._waited = self._held_arrival is not None and self._hold_checks_deadline
        self._arrival = self._held_arrival if self._held_arrival is not None else time.perf_counter()
        self._held_arrival = None
        self.scope["extensions"] = {ARRIVAL: self._arrival}  # type: ignore[dict-item]  # our extension holds a float
        self._head_size = 0

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count_head(self, size: int) -> None:
        self._head_size += size
        if self._head_size > self.limits.max_header_bytes:
            self._head_too_large = True
            raise ValueError("request head too large")  # httptools stops parsing; uvicorn calls send_400_response

    def on_headers_complete(self) -> None:
        self._head_raw = None
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._idle_since = None
        self._body_timer = self.loop.call_later(self.limits.body_timeout_s, self._body_timed_out)
        self._deferred = None
        self._answered = False
        shed = type(self).shed  # a staticmethod (protocol_class): read from the class, no self is bound
        if (
            shed is not None
            and (self.cycle is None or self.cycle.response_complete)
            and not self.pipeline
            and self.parser.get_method() == b"POST"
            and self.url.split(b"?", 1)[0].endswith(b"/infer")
        ):
            # Under overload, refuse here: no ASGI task, no request object (see _app._Shedder for the rules).
            response = shed(self.headers, None, self._arrival, self._waited)
            if response:
                self._answer(response)
                return
            if response is not None and not self.expect_100_continue:  # (that client waits for the app's 100)
                self._deferred = bytearray()  # every worker busy: the body decides
                return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self._answered:
            return
        if self._deferred is not None:
            self._deferred += body
            if len(self._deferred) > _DEFER_BYTES:
                self._serve_deferred()
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        if self._deferred is not None:
            shed = type(self).shed
            assert shed is not None  # a body is only deferred when shed is set
            response = shed(self.headers, bytes(self._deferred), self._arrival, self._waited)
            if response:
                self._deferred = None
                self._answer(response)
            else:
                self._serve_deferred()
        if not self._answered:
            super().on_message_complete()
        self._maybe_idle()  # an answer sent before the body was read (a shed request) ends here

    def _serve_deferred(self) -> None:
        """Hand a deferred request to the application after all, with the body held so far."""
        body, self._deferred = self._deferred, None
        super().on_headers_complete()
        if body:
            super().on_body(bytes(body))

    def _answer(self, response: bytes) -> None:
        """Write a whole response for the current request (its body, if any, is read and dropped)."""
        self._answered = True
        if self.parser.get_http_version() != "1.1" or not self.parser.should_keep_alive():
            self.transport.write(response.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n", 1))
            self._linger_close()
        else:
            self.transport.write(response)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._maybe_idle()

    def _maybe_idle(self) -> None:
        """Once the last request is read and answered, the next head's clock starts."""
        busy = self._body_timer is not None or self.pipeline or (self.cycle is not None and not self.cycle.response_complete)
        busy = busy or getattr(self, "_deferred", None) is not None
        if not busy and not self.transport.is_closing():
            self._head_raw = 0
            refused = self._refused()
            if self.gate is not None and (refused or self.gate.waiting) and self.gate.hold(self, answered=not refused):
                # Held until a worker is free: no head or keep-alive clock runs meanwhile. Until its client sends
                # something it counts as idle, so the connection cap may close it for a new connection.
                self._idle_since = time.monotonic()
                if self._head_timer is not None:
                    self._head_timer.cancel()
                    self._head_timer = None
                keep_alive = getattr(self, "timeout_keep_alive_task", None)
                if keep_alive is not None:
                    keep_alive.cancel()
                    self.timeout_keep_alive_task = None
                return
            self._idle_since = time.monotonic()
            self._arm_head_timer()

    def _refused(self) -> bool:
        """Whether the request just finished here was refused for overload (503), here or by the app."""
        if self._answered:
            return True
        cycle = self.cycle
        extensions = cycle.scope.get("extensions") if cycle is not None else None
        return bool(extensions and extensions.get(REFUSED))

    def begin_hold(self) -> None:
        """Keep what arrives from now on unparsed, stamped with its arrival (see :class:`ReadGate`)."""
        self._held = bytearray()

    def held_request(self) -> bytes:
        """What arrived while held (the start of the next request), unparsed."""
        return bytes(self._held or b"")

    def held_since(self) -> float:
        """perf_counter() when the first byte of the held request arrived (only while one is held)."""
        return self._held_at

    def end_hold(self, waited: bool = True) -> bool:
        """Parse what was held, its request stamped with its arrival, and read normally again.

        ``waited``: the request's deadline is checked even if a worker is free (refused when its budget is
        spent); False serves it as any request that finds a worker free.

        Returns True when a request went on to the application (it may take a worker); False when there was
        none, or it was answered here (refused, or an error).
        """
        held, self._held = self._held, None
        if self.transport.is_closing() or held is None:
            return False
        self.flow.resume_reading()
        self._idle_since = time.monotonic()
        self._arm_head_timer()
        if not held:
            return False
        self._held_arrival = self._held_at
        self._hold_checks_deadline = waited
        self._answered = False
        self.data_received(bytes(held))
        cycle = self.cycle
        return not self._answered and not self.transport.is_closing() and cycle is not None and not cycle.response_complete

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes that are not HTTP, as ``{"error"}`` JSON like every other error here."""
        if getattr(self, "_head_too_large", False):
            response = _json_error(
                431,
                b"Request Header Fields Too Large",
                f"the request line and headers exceed {self.limits.max_header_bytes} bytes; send fewer or shorter headers",
            )
        else:
            response = _json_error(400, b"Bad Request", "the request is not valid HTTP/1.1; send a well-formed request")
        self.transport.write(response)
        self._linger_close()

    def _linger_close(self) -> None:
        """Close after an error answer without losing it: closing with unread bytes makes the kernel send a
        reset, which can destroy the answer before the client reads it. So: end our side, drop what still
        arrives for a second, then close (as nginx's lingering close does)."""
        self._discarding = True
        self._cancel_timers()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(_LINGER_S, self.transport.close)

    # -- timeouts ------------------------------------------------------------------------------------

    def _arm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timed_out)

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            logger.debug(
                "closed a connection from %s: no complete request head within %g s", self.client, self.limits.header_timeout_s
            )
            self.transport.close()

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            cycle.disconnected = True  # the handler's reads end now; nothing more is written by it
            self.transport.write(
                _json_error(
                    408,
                    b"Request Timeout",
                    f"the request body did not arrive within {self.limits.body_timeout_s:g} s; send the whole body at once",
                )
            )
            cycle.message_event.set()
        logger.debug("closed a connection from %s: request body incomplete after %g s", self.client, self.limits.body_timeout_s)
        self._linger_close()

    # -- the connection cap --------------------------------------------------------------------------

    def _is_idle(self) -> bool:
        return getattr(self, "_idle_since", None) is not None and (self.cycle is None or self.cycle.response_complete)

    def _evict_idle(self) -> bool:
        """Close the connection idle longest (not this one); False when none is idle."""
        idle = [c for c in self.connections if c is not self and isinstance(c, _GuardedProtocol) and c._is_idle()]
        if not idle:
            return False
        oldest = min(idle, key=lambda c: c._idle_since or 0.0)  # set: _is_idle
        logger.debug("closed an idle connection from %s: %d connections open", oldest.client, len(self.connections))
        oldest._cancel_timers()
        oldest.transport.close()
        self.connections.discard(oldest)  # counted out now; connection_lost follows
        return True

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = json.dumps(
            {"error": f"overloaded: {len(self.connections) - 1} connections all have requests in progress; retry later"}
        ).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(self.limits.retry_after_s).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def guarded_protocol(
    limits: ConnectionLimits,
    shed: Callable[[Any, bytes | None, float, bool], bytes | None] | None = None,
    gate: ReadGate | None = None,
) -> type[HttpToolsProtocol]:
    """The uvicorn protocol class (``uvicorn.Config(http=...)``) that applies ``limits``.

    ``shed`` (the app's ``_Server.overloaded_response``) refuses inference requests under overload in the
    connection layer itself, before any ASGI task exists (~half the event loop's cost of a refusal).
    ``gate`` holds refused connections while the server is busy and serves the freshest first (backpressure).
    """
    return type(
        "AnytimeHttpProtocol", (_GuardedProtocol,), {"limits": limits, "shed": staticmethod(shed) if shed else None, "gate": gate}
    )
