"""The KServe model: one bundle's anytime runtime behind ``kserve.Model``'s ``predict``.

KServe decodes the HTTP body (JSON, or Triton's binary tensor extension) into a ``kserve.InferRequest``;
:meth:`AnytimeModel.predict` turns that back into the V2 request object, checks it with
:func:`~edge_runtime.server._protocol.decode_infer_document` (the HTTP server's checks), runs it through
the HTTP server's scheduler, and answers a ``kserve.InferResponse`` built from
:func:`~edge_runtime.server._protocol.response_outputs`, with the same ``anytime_*`` parameters.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, Mapping

import numpy as np
from kserve import InferOutput, InferRequest, InferResponse, Model
from kserve.protocol.infer_type import to_http_parameters
from starlette.requests import Request
from starlette.responses import Response

from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.server._app import RuntimeLike, _Server
from edge_runtime.server._config import ServerConfig
from edge_runtime.server._errors import RequestError
from edge_runtime.server._protocol import MODEL_VERSION, decode_infer_document, model_metadata, response_outputs

__all__ = ["AnytimeModel", "add_error_handlers"]

_DECODE_INLINE_VALUES = 16384  # inputs with more values are checked on a thread, off KServe's event loop


class AnytimeModel(Model):  # type: ignore[misc]  # kserve ships no type hints
    """A bundle served by KServe's ``ModelServer``; register it with ``ModelServer().start([model])``.

    Args:
        runtime: a loaded :class:`edge_runtime.AnytimeRuntime` (or anything with its ``manifest`` and a
            thread-safe ``predict``).
        config: the HTTP server's settings that apply here: ``model_name`` (None = the bundle's name),
            ``budget_ms`` and ``entropy_threshold`` defaults, ``workers``, ``max_queue``, ``max_batch_rows``,
            ``chunk_rows``, ``reserve_ms``, ``no_budget_due_ms``. Host, port and connection limits are KServe's.
    """

    def __init__(self, runtime: RuntimeLike, config: ServerConfig | None = None) -> None:
        self._core = _Server(runtime, config or ServerConfig())
        super().__init__(self._core.name)
        self.ready = False

    def load(self) -> bool:
        """Mark the model ready (the runtime was loaded before); KServe serves only ready models."""
        self.ready = True
        return self.ready

    def stop(self) -> None:
        """Stop taking requests and end the inference threads (KServe calls this on shutdown)."""
        self.ready = False
        self._core.scheduler.close()

    def get_input_types(self) -> list[dict[str, Any]]:
        """The V2 metadata of the input tensor (``-1`` for the batch), as ``anytime-edge serve`` reports it."""
        return list(model_metadata(self.name, self._core.manifest)["inputs"])

    def get_output_types(self) -> list[dict[str, Any]]:
        """The V2 metadata of the outputs (see :mod:`edge_runtime.server._protocol`)."""
        return list(model_metadata(self.name, self._core.manifest)["outputs"])

    async def predict(self, payload: Any, headers: Mapping[str, str] | None = None) -> InferResponse:
        """Answer one V2 inference request (see the module doc).

        Raises:
            RequestError: the request is not a valid V2 request for this model (answered 400).
            BodyTooLargeError: more samples than ``max_batch_rows`` (413).
            OverloadedError: shed because the queue is full or the budget cannot be met (503).
            EdgeRuntimeError: the runtime failed (500).
        """
        arrival = time.perf_counter()
        if not isinstance(payload, InferRequest):
            raise RequestError(f"this model speaks the V2 protocol; POST /v2/models/{self.name}/infer")
        doc, binary = _request_document(payload)
        spec, rows = self._core.manifest.task.input, self._core.config.max_batch_rows
        if sum(int(np.prod(t.shape)) for t in payload.inputs) > _DECODE_INLINE_VALUES:
            decoded = await asyncio.to_thread(decode_infer_document, doc, spec, binary, bool(binary), rows)
        else:
            decoded = decode_infer_document(doc, spec, binary, bool(binary), rows)
        predictions, params = await self._core.run_decoded(decoded, arrival)
        if not all(np.isfinite(p.probabilities).all() and np.isfinite(p.entropy) for p in predictions):
            # KServe's JSON encoder would send NaN as null; anytime-edge serve refuses the same way
            raise EdgeRuntimeError("the model produced NaN or infinity; check the bundle with `anytime-edge inspect`")
        outputs = response_outputs(decoded, predictions, self._core.manifest.task.labels)
        params["anytime_elapsed_ms"] = (time.perf_counter() - arrival) * 1e3
        return InferResponse(
            response_id=decoded.id if decoded.id is not None else uuid.uuid4().hex,
            model_name=self.name,
            model_version=MODEL_VERSION,
            infer_outputs=[InferOutput(o["name"], o["shape"], o["datatype"], data=o["data"]) for o in outputs],
            parameters=params,
            use_binary_outputs=payload.use_binary_outputs,
            requested_outputs=payload.request_outputs,
        )


def _request_document(request: InferRequest) -> tuple[dict[str, Any], bytes]:
    """The V2 request object of a KServe ``InferRequest``, and the binary part its input refers to.

    JSON data stays the client's list (so the server's checks of integer and range still apply); data
    KServe holds only as raw bytes (gRPC's raw contents) becomes the binary part, read as the binary
    extension would be.
    """
    binary = b""
    inputs = []
    for tensor in request.inputs:
        entry: dict[str, Any] = {"name": tensor.name, "shape": list(tensor.shape), "datatype": tensor.datatype}
        params = dict(to_http_parameters(tensor.parameters)) if tensor.parameters else {}
        params.pop("binary_data_size", None)  # KServe has already read the binary part it named
        if tensor.data is not None and not isinstance(tensor.data, np.ndarray):
            entry["data"] = tensor.data
        else:
            try:
                raw = np.ascontiguousarray(tensor.as_numpy())
            except Exception as exc:  # noqa: BLE001 - KServe raises several types for a datatype it cannot read
                raise RequestError(f"input '{tensor.name}' cannot be read as {tensor.datatype} ({exc}); send FP32") from None
            binary = raw.astype(raw.dtype.newbyteorder("<"), copy=False).tobytes()
            params["binary_data_size"] = len(binary)
        if params:
            entry["parameters"] = params
        inputs.append(entry)
    doc: dict[str, Any] = {"inputs": inputs}
    if request.id is not None:
        doc["id"] = request.id
    if request.parameters:
        doc["parameters"] = dict(to_http_parameters(request.parameters))
    if request.request_outputs:
        doc["outputs"] = [
            {"name": out.name, "parameters": dict(to_http_parameters(out.parameters)) if out.parameters else {}}
            for out in request.request_outputs
        ]
    return doc, binary


def add_error_handlers(app: Any, model: AnytimeModel) -> None:
    """Answer the runtime's and server's errors on KServe's FastAPI ``app`` as ``anytime-edge serve`` does.

    ``{"error": "<one line naming the fix>"}`` with the error's status (400, 413, 503 with Retry-After,
    500 without ONNX Runtime's internals), instead of KServe's generic 500.
    """

    async def handle(request: Request, exc: Exception) -> Response:
        return model._core._refusal(request, exc)

    app.add_exception_handler(EdgeRuntimeError, handle)
