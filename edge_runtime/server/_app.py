"""The Starlette application: Open Inference Protocol (KServe V2) REST endpoints over one anytime runtime.

Endpoints (each model endpoint also under ``/v2/models/{name}/versions/{version}``; the one version is "1"):

    GET  /v2/health/live              {"live": true}
    GET  /v2/health/ready             {"ready": true}, 503 while shutting down
    GET  /v2                          server metadata {"name", "version", "extensions"}
    GET  /v2/models/{name}            model metadata (input/output tensors, -1 for the batch)
    GET  /v2/models/{name}/ready      {"name", "ready"}
    POST /v2/models/{name}/infer      inference (see :mod:`edge_runtime.server._protocol`)
    GET  /metrics                     Prometheus text format (see :mod:`edge_runtime.server._metrics`)

With ``ServerConfig.access_log`` set, every inference request also writes one JSON line (see
:mod:`edge_runtime.server._access_log`).

Every error is ``{"error": "<one line naming the fix>"}``: 400 bad request, 403 a web page's Origin, 404
unknown model or path, 405 wrong method, 413 body or batch too large, 415 a Content-Type or -Encoding not
read, 421 a Host not served (see :mod:`edge_runtime.server._http`), 503 shed under load (with Retry-After),
500 a fault in the bundle. A 500 says what failed in general terms only; ONNX Runtime's own message (build
paths, C++ signatures) goes to the server log. No request can stop the server: whatever a handler raises
is answered, never propagated.

Memory per request is bounded: at most ``max_batch_rows`` samples, run through the runtime
``chunk_rows`` at a time (each chunk gets what is left of the budget), and the sessions are built
without ONNX Runtime's CPU arena, which would keep the peak of the largest batch ever seen allocated.
After a body of 1 MiB or more, what the request freed is handed back to the OS (see ``_memory``).

The budget of a request counts from its arrival: the moment its first byte was parsed, as the connection
layer stamps it (:mod:`edge_runtime.server._connections`; the handler's start where nothing stamped it,
as under an in-process test client). Reading and decoding the body and waiting for a worker are spent
from the budget; the runtime gets what is left (see :mod:`edge_runtime.server._scheduler`), and
``anytime_elapsed_ms`` counts from the same moment. A batch is queued chunk by chunk, earliest deadline
first, so another client's request due sooner runs between the chunks of a large one; large bodies are
parsed and large answers encoded on a thread, in slices that let the event loop in between.

Under overload, :class:`_Shedder` answers 503 before routing (~15-25 us of the event loop, measured
in-process; under :func:`serve` the connection layer applies the same rules before any ASGI task): a full queue
before the body is read, a budget the queue shows cannot be met before the body is decoded. A client that
hangs up before its request is read is logged as one DEBUG line, and nothing is sent to it.
"""

from __future__ import annotations

import importlib.metadata
import itertools
import json
import logging
import math
import os
import time
import traceback
import uuid
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable, Protocol, Sequence, Union

import numpy as np
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edge_runtime.bundle import Manifest
from edge_runtime.errors import EdgeRuntimeError, InputError, MemberError, PolicyError
from edge_runtime.server._access_log import AccessLog
from edge_runtime.server._config import ServerConfig
from edge_runtime.server._connections import REFUSED, arrival_time
from edge_runtime.server._errors import ModelNotFoundError, OverloadedError, ServerError
from edge_runtime.server._http import CallerCheck, check_content_type, header_length, read_body
from edge_runtime.server._memory import RELEASE_AFTER_BYTES, release_freed_memory
from edge_runtime.server._metrics import CONTENT_TYPE, Outcome, ServerMetrics
from edge_runtime.server._protocol import (
    MODEL_VERSION,
    InferRequest,
    PredictionLike,
    check_declared_rows,
    declared_budget_ms,
    decode_infer_request,
    encode_infer_response,
    model_metadata,
    summarize,
)
from edge_runtime.server._scheduler import LatencyTracker, Scheduler, most_members

__all__ = ["RuntimeLike", "create_app"]

logger = logging.getLogger("edge_runtime.server")

SERVER_NAME = "anytime-edge"
EXTENSIONS = ("classification",)  # V2 extensions implemented (see _protocol)
_DECODE_INLINE_BYTES = 64 * 1024  # larger bodies are parsed on a thread so the event loop keeps serving
_ENCODE_INLINE_ROWS = 64  # larger answers are encoded on a thread
_ESTIMATE_ROWS = 16  # only requests this small feed the scheduler's first-member estimate


class RuntimeLike(Protocol):
    """What the server needs from :class:`edge_runtime.AnytimeRuntime` (a fake in tests)."""

    @property
    def manifest(self) -> Manifest: ...  # read only: AnytimeRuntime's is a property

    def predict(
        self, x: np.ndarray, budget_ms: float | str | None = None, entropy_threshold: float | str | None = None
    ) -> Sequence[PredictionLike]: ...


def _version() -> str:
    try:
        return importlib.metadata.version("anytime-edge")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


class _NoAnswer(Response):
    """What a handler returns when the client is gone: nothing is sent (uvicorn attempts no 500 either)."""

    def __init__(self) -> None:
        pass

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        return None


_NO_ANSWER = _NoAnswer()


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class _Server:
    """The state behind the endpoints: one runtime, its scheduler, and whether it takes requests."""

    def __init__(self, runtime: RuntimeLike, config: ServerConfig) -> None:
        self.runtime = runtime
        self.config = config
        self.manifest = runtime.manifest
        self.name = config.model_name or self.manifest.name
        self.scheduler = Scheduler(
            workers=config.workers,
            max_queue=config.max_queue,
            reserve_ms=config.reserve_ms,
            tracker=LatencyTracker(),
            no_budget_due_ms=config.no_budget_due_ms,
        )
        # Defaults: the server's settings, else the runtime's own (set when it was loaded).
        self.default_budget: float | None = config.budget_ms
        if self.default_budget is None:
            self.default_budget = getattr(runtime, "budget_ms", None)
        self.default_threshold: float | None = config.entropy_threshold
        if self.default_threshold is None:
            self.default_threshold = getattr(runtime, "entropy_threshold", self._calibrated())
        self.ready = True
        self.metadata = model_metadata(self.name, self.manifest)
        # Ids for requests that bring none: this process's random prefix and a counter. (uuid4 per request
        # reads os.urandom, a system call that lets a worker take the interpreter lock from the event loop.)
        self._id_prefix, self._ids = uuid.uuid4().hex[:16] + "-", itertools.count(1)
        self.metrics = ServerMetrics(self.name, [m.name for m in self.manifest.members], runtime, self.scheduler)
        self.access_log = None if config.access_log is None else AccessLog(config.access_log, self.name)
        self.server_metadata = {"name": SERVER_NAME, "version": _version(), "extensions": list(EXTENSIONS)}

    def _calibrated(self) -> float | None:
        calibration = self.manifest.calibration
        return None if calibration is None else calibration.entropy_threshold

    def resolve(self, budget: float | str | None, threshold: float | str | None) -> tuple[float | None, float | None]:
        """A request's budget and threshold as numbers (None = not used), after defaults and spellings."""
        if budget is None:
            budget = self.default_budget
        if threshold is None:
            threshold = self.default_threshold
        elif threshold == "calibrated":
            threshold = self._calibrated()
        # The only word left is "off": decoding refused any other, and "calibrated" was resolved above.
        budget_ms, entropy = (None if budget == "off" else budget), (None if threshold == "off" else threshold)
        return budget_ms, entropy  # type: ignore[return-value]  # no str left (see above)

    def refusal(
        self, headers: Sequence[tuple[bytes, bytes]], body: bytes | None, arrival: float, waited: bool = False
    ) -> OverloadedError | None:
        """Why an inference request must be refused now, before it is decoded, or None (see :class:`_Shedder`).

        ``body`` is the whole body when it has arrived, else None (then only a full queue refuses).
        ``waited``: the request was held by the connection layer's read gate, so its deadline is checked even
        when a worker is free (see :meth:`Scheduler.check_deadline`).
        """
        scheduler = self.scheduler
        try:
            scheduler.check_capacity()
            if body is None:
                return None
            scheduler.check_deadline(arrival, self._budget_hint(dict(headers), body), waited=waited)
        except OverloadedError as exc:
            return exc
        return None

    def _budget_hint(self, fields: dict[bytes, bytes], body: bytes) -> float | None:
        """The budget (ms) a request body declares, read without decoding it, else the server's; None = none."""
        budget: Any = None
        if fields.get(b"content-encoding", b"identity").strip().lower() in (b"identity", b""):
            length = fields.get(b"inference-header-content-length")
            header = body[: int(length)] if length is not None and length.isdigit() else body
            budget, _ = self.resolve(declared_budget_ms(header), None)
        return budget if isinstance(budget, (int, float)) else None

    def held_in_time(self, request: bytes, arrival: float) -> bool:
        """Whether a request held unparsed by the read gate (raw bytes, arrived at ``arrival``) could still start
        in time; anything but an inference request with a budget can. Read without parsing (microseconds)."""
        head, found, body = request.partition(b"\r\n\r\n")
        if not found:
            return True
        lines = head.split(b"\r\n")
        target = lines[0].split(b" ")
        if len(target) < 2 or target[0] != b"POST" or not target[1].split(b"?", 1)[0].endswith(b"/infer"):
            return True
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            fields[name.strip().lower()] = value.strip()
        return self.scheduler.in_time(arrival, self._budget_hint(fields, body))

    def overloaded_response(
        self, headers: Sequence[tuple[bytes, bytes]], body: bytes | None, arrival: float, waited: bool = False
    ) -> bytes | None:
        """:meth:`refusal` as the HTTP/1.1 response the connection layer writes itself, without an ASGI task.

        Returns the response bytes; None to serve the request; ``b""`` (only when ``body`` is None) when every
        worker is busy, or the request was held (``waited``), and the body is needed to decide.
        """
        if not waited and self.scheduler.running < self.scheduler.workers:
            return None
        refused = self.refusal(headers, body, arrival, waited)
        if refused is None:
            return b"" if body is None else None  # b"": every worker busy, decide once the body is in
        self.note_shed(refused, arrival)
        content = json.dumps({"error": str(refused)}).encode()
        return (
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"retry-after: %d\r\n\r\n" % (len(content), max(1, math.ceil(refused.retry_after_s)))
        ) + content

    def busy(self) -> bool:
        """True while a new request could not start at once: every worker busy, or requests queued."""
        scheduler = self.scheduler
        return scheduler.running >= scheduler.workers or scheduler.queued > 0

    def note_shed(self, refused: OverloadedError, arrival: float) -> None:
        """Count a request refused before it reached a handler (its body not decoded) and log it."""
        elapsed_s = time.perf_counter() - arrival
        self.metrics.shed(refused.reason)
        self.metrics.answered(503, elapsed_s, None)
        if self.access_log is not None:
            self.access_log.write(503, elapsed_s * 1e3, None, shed=refused.reason)

    def check_model(self, request: Request) -> None:
        name = request.path_params["name"]
        if name != self.name:
            raise ModelNotFoundError(f"no model '{name}' is served here; this server serves '{self.name}'")
        version = request.path_params.get("version")
        if version is not None and version != MODEL_VERSION:
            raise ModelNotFoundError(f"model '{name}' has no version '{version}'; it has version {MODEL_VERSION}")

    # -- endpoints -------------------------------------------------------------------------------------

    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def health_ready(self, request: Request) -> Response:
        return JSONResponse({"ready": self.ready}, status_code=200 if self.ready else 503)

    async def server_info(self, request: Request) -> Response:
        return JSONResponse(self.server_metadata)

    async def model_info(self, request: Request) -> Response:
        return await self._guard(self._model_info, request)

    async def model_ready(self, request: Request) -> Response:
        return await self._guard(self._model_ready, request)

    async def infer(self, request: Request) -> Response:
        arrival = arrival_time(request.scope, time.perf_counter())  # the first byte's time, when the server stamped it
        outcome = Outcome()
        response = await self._guard(self._infer, request, arrival, outcome)
        if response is not _NO_ANSWER:
            elapsed_s = time.perf_counter() - arrival
            status = response.status_code
            shed = getattr(request.state, "shed", None)
            if shed is not None:
                self.metrics.shed(shed)
                _mark_refused(request.scope)
            self.metrics.answered(status, elapsed_s, outcome if status == 200 else None)
            if self.access_log is not None:
                self.access_log.write(status, elapsed_s * 1e3, outcome if outcome.request_id is not None else None, shed=shed)
        if response is not _NO_ANSWER and getattr(request.state, "body_bytes", 0) >= RELEASE_AFTER_BYTES:
            # after the answer is sent, on a thread: the request's lists and arrays are garbage by then
            response.background = BackgroundTask(release_freed_memory)
        return response

    async def scrape(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    async def _model_info(self, request: Request) -> Response:
        self.check_model(request)
        return JSONResponse(self.metadata)

    async def _model_ready(self, request: Request) -> Response:
        self.check_model(request)
        return JSONResponse({"name": self.name, "ready": self.ready}, status_code=200 if self.ready else 503)

    async def _guard(self, handler: Callable[..., Awaitable[Response]], request: Request, *args: Any) -> Response:
        """Run a handler and answer whatever it raises; nothing a request does reaches uvicorn."""
        try:
            return await handler(request, *args)
        except ClientDisconnect:
            # Normal: the client hung up before its request was read. Nobody is left to answer.
            logger.debug("client %s disconnected before its request to %s was read", request.client, request.url.path)
            return _NO_ANSWER
        except Exception as exc:  # noqa: BLE001 - the server answers every request and stays up
            try:
                return self._refusal(request, exc)
            finally:
                # The traceback's frames hold the request's parsed body (tens of MB for a big one) in
                # reference cycles through asyncio's futures, which only a full GC pass would free; a
                # server that refused six 4 MiB requests kept ~100 MB that way. Drop their locals now.
                traceback.clear_frames(exc.__traceback__)

    def _refusal(self, request: Request, exc: Exception) -> Response:
        if isinstance(exc, OverloadedError):
            request.state.shed = exc.reason
            return _error(exc.status, str(exc), {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))})
        if isinstance(exc, ServerError):
            return _error(exc.status, str(exc))
        if isinstance(exc, (InputError, PolicyError)):  # the runtime's own checks of the input and the threshold
            return _error(400, str(exc))
        if isinstance(exc, MemberError):  # ONNX Runtime's message carries build paths and C++ signatures: log it only
            logger.error("inference failed on %s %s", request.method, request.url.path, exc_info=exc)
            return _error(500, "inference failed: the model could not evaluate this input; see the server log")
        if isinstance(exc, EdgeRuntimeError):
            logger.error("inference failed: %s", exc)
            return _error(500, f"inference failed: {exc}")
        logger.error("unexpected error while answering %s %s", request.method, request.url.path, exc_info=exc)
        return _error(500, "internal error while answering the request; see the server log")

    async def _infer(self, request: Request, arrival: float, outcome: Outcome) -> Response:
        self.check_model(request)
        check_content_type(request)
        json_length = header_length(request)
        # (A request the queue shows cannot be served was refused before this, by _Shedder.)
        body = await read_body(request, self.config.max_body_bytes)
        request.state.body_bytes = len(body)
        header = body if json_length is None else body[:json_length]
        spec, rows = self.manifest.task.input, self.config.max_batch_rows
        if len(body) > _DECODE_INLINE_BYTES:
            check_declared_rows(header, spec, rows)  # a batch too large is refused before its data is parsed
            decoded = await run_in_threadpool(decode_infer_request, body, spec, json_length, rows)
        else:
            decoded = decode_infer_request(body, spec, json_length, rows)
        del body, header
        outcome.request_id = decoded.id if decoded.id is not None else f"{self._id_prefix}{next(self._ids):x}"
        outcome.budget_ms = self.resolve(decoded.budget_ms, None)[0]
        predictions, params = await self.run_decoded(decoded, arrival)
        if len(predictions) > _ENCODE_INLINE_ROWS:  # a large answer is encoded on a thread, not on the event loop
            return await run_in_threadpool(self._answer, decoded, predictions, params, arrival, outcome)
        return self._answer(decoded, predictions, params, arrival, outcome)

    async def run_decoded(self, decoded: InferRequest, arrival: float) -> tuple[list[PredictionLike], dict[str, Any]]:
        """Run a decoded request through the scheduler; return its predictions and ``anytime_*`` parameters.

        The part of an inference request after decoding, shared with the KServe adapter
        (:mod:`edge_runtime.kserve`). ``arrival`` is the ``time.perf_counter()`` the budget counts from;
        the parameters lack ``anytime_elapsed_ms``, which the caller sets when its answer is ready.

        Raises:
            OverloadedError: shed (503) because the queue is full or the budget cannot be met.
            EdgeRuntimeError: the runtime failed (a member error, a wrong number of answers).
        """
        budget, threshold = self.resolve(decoded.budget_ms, decoded.entropy_threshold)
        # Explicit values reach the runtime, so what the answer reports is what was applied.
        threshold_arg: float | str = "off" if threshold is None else threshold
        x, chunk = decoded.x, self.config.chunk_rows

        def call(first: int) -> Any:
            def run(budget_left: float | None) -> Sequence[PredictionLike]:
                budget_arg: float | str = "off" if budget_left is None else budget_left
                return self.runtime.predict(x[first : first + chunk], budget_ms=budget_arg, entropy_threshold=threshold_arg)

            return run

        # A batch runs ``chunk_rows`` at a time, each chunk queued on its own (earliest deadline first):
        # ORT's buffers stay bounded, and another client's request due sooner runs between the chunks of
        # a large batch instead of waiting for all of it. Only the first chunk can be shed; later ones get
        # what is left of the budget, so no work already done is thrown away.
        predictions: list[PredictionLike] = []
        queue_ms = 0.0
        for first in range(0, x.shape[0], chunk):
            done = await self.scheduler.run(
                call(first), arrival, budget, most_members, shed=first == 0, record=x.shape[0] <= _ESTIMATE_ROWS
            )
            predictions.extend(done.result)
            queue_ms += done.queue_ms
        if len(predictions) != x.shape[0]:
            raise EdgeRuntimeError(f"the runtime answered {len(predictions)} samples for a batch of {x.shape[0]}")
        params: dict[str, Any] = summarize(predictions, self.manifest)
        params["anytime_queue_ms"] = queue_ms
        params["anytime_budget_ms"] = "off" if budget is None else budget
        params["anytime_entropy_threshold"] = "off" if threshold is None else threshold
        return predictions, params

    def _answer(
        self,
        decoded: InferRequest,
        predictions: Sequence[PredictionLike],
        params: dict[str, Any],
        arrival: float,
        outcome: Outcome,
    ) -> Response:
        params["anytime_elapsed_ms"] = (time.perf_counter() - arrival) * 1e3
        outcome.record(predictions)
        outcome.members_used = params["anytime_members_used"]
        outcome.exit_reason = params["anytime_exit_reason"]
        outcome.queue_ms = params["anytime_queue_ms"]
        try:
            body = encode_infer_response(
                self.name, decoded, outcome.request_id or "", predictions, params, self.manifest.task.labels
            )
        except ValueError:
            raise EdgeRuntimeError("the model produced NaN or infinity; check the bundle with `anytime-edge inspect`") from None
        return Response(body, media_type="application/json")

    async def shutdown(self) -> None:
        self.ready = False
        await run_in_threadpool(self.scheduler.close)
        if self.access_log is not None:
            self.access_log.close()


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {
        404: f"no endpoint {request.url.path}; see GET /v2 and /v2/models/{{name}}",
        405: f"{request.method} is not allowed on {request.url.path}",
    }.get(exc.status_code, str(exc.detail))
    return _error(exc.status_code, message, dict(exc.headers or {}))


class _Shedder:
    """ASGI front of the inference route: refuse, in microseconds, what the queue shows cannot be served.

    Under a retry storm the event loop's time is what runs out, and a refusal that goes through routing,
    the request object, body decoding and a JSON response costs ~50-80 us of it (measured in-process on a
    2-core box; uvicorn's h11 parser added ~150 us, see _connections). Here, for ``POST .../infer`` while
    every worker is busy: a full queue is refused before the body is read, and a request whose deadline
    cannot be met (its budget found in the body without parsing it, else the server's default) is refused
    before decoding (:meth:`Scheduler.check_deadline`): 503 ``{"error"}`` with ``Retry-After``. Everything
    else passes through untouched, the first body message replayed.
    """

    def __init__(self, app: Any, server: _Server) -> None:
        self.app = app
        self.server = server

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        scheduler = self.server.scheduler
        if (
            scope["type"] != "http"
            or scheduler.running < scheduler.workers
            or scope["method"] != "POST"
            or not scope["path"].endswith("/infer")
        ):
            await self.app(scope, receive, send)
            return
        arrival = arrival_time(scope, time.perf_counter())
        refused = self.server.refusal(scope["headers"], None, arrival)
        if refused is not None:
            self.server.note_shed(refused, arrival)
            _mark_refused(scope)
            await _send_overloaded(send, refused)
            return
        message = await receive()
        body = message.get("body", b"") if message["type"] == "http.request" and not message.get("more_body", False) else None
        refused = self.server.refusal(scope["headers"], body, arrival)
        if refused is not None:
            self.server.note_shed(refused, arrival)
            _mark_refused(scope)
            await _send_overloaded(send, refused)
            return
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return message
            return await receive()

        await self.app(scope, replay, send)


def _mark_refused(scope: Any) -> None:
    """Tell the connection layer this request was refused for overload (its read gate holds such connections)."""
    extensions = scope.get("extensions")
    if extensions is None:
        extensions = scope["extensions"] = {}
    extensions[REFUSED] = True


async def _send_overloaded(send: Any, exc: OverloadedError) -> None:
    body = json.dumps({"error": str(exc)}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(max(1, math.ceil(exc.retry_after_s))).encode()),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})


PathLike = Union[str, "os.PathLike[str]"]


def create_app(runtime: RuntimeLike | PathLike, config: ServerConfig | None = None) -> Starlette:
    """Build the V2 application around a runtime.

    Args:
        runtime: a loaded :class:`edge_runtime.AnytimeRuntime` (or anything with its ``manifest`` and
            thread-safe ``predict``), or the path of a bundle to load with default session settings.
        config: server settings; defaults to :class:`ServerConfig` ().

    Returns:
        The ASGI application; run it with :func:`edge_runtime.server.serve` or any ASGI server.

    Raises:
        EdgeRuntimeError: ``runtime`` is a path that does not hold a loadable bundle.
    """
    config = config or ServerConfig()
    if isinstance(runtime, (str, os.PathLike)):
        from edge_runtime import load

        served: RuntimeLike = load(runtime)
    else:
        served = runtime
    server = _Server(served, config)
    routes: list[Route] = []
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        # infer first: Starlette tries routes in order, and inference is the hot path
        routes.insert(0, Route(f"{prefix}/infer", server.infer, methods=["POST"]))
        routes += [
            Route(prefix, server.model_info, methods=["GET"]),
            Route(f"{prefix}/ready", server.model_ready, methods=["GET"]),
        ]
    routes += [
        Route("/v2/health/live", server.live, methods=["GET"]),
        Route("/v2/health/ready", server.health_ready, methods=["GET"]),
        Route("/v2", server.server_info, methods=["GET"]),
        Route("/metrics", server.scrape, methods=["GET"]),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await server.shutdown()

    app = Starlette(
        routes=routes,
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
        middleware=[Middleware(_Shedder, server=server), Middleware(CallerCheck, hosts=config.served_hosts)],
    )
    app.state.server = server
    return app
