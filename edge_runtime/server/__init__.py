"""Serve a bundle over the Open Inference Protocol (KServe V2) REST API, with latency budgets and early exit.

Needs the ``serve`` extra (starlette, uvicorn): ``pip install -c constraints.txt '.[serve]'`` in the checkout. Nothing outside this
package imports it, so a runtime-only install works without the extra.

    from edge_runtime import load
    from edge_runtime.server import ServerConfig, serve

    serve(load("bundle/"), ServerConfig(port=8000, budget_ms=20))

The wire format (tensors, outputs, ``anytime_*`` parameters, batch reporting) is described in
:mod:`edge_runtime.server._protocol`, the endpoints and errors in :mod:`edge_runtime.server._app`, the
worker pool and load shedding in :mod:`edge_runtime.server._scheduler`, the checks of Host, Origin,
Content-Type and Content-Encoding in :mod:`edge_runtime.server._http`, connection limits and backpressure in
:mod:`edge_runtime.server._connections`, ``GET /metrics`` in :mod:`edge_runtime.server._metrics` and the
JSON-lines access log in :mod:`edge_runtime.server._access_log`.
"""

from __future__ import annotations

from edge_runtime.extras import install_hint

try:
    import starlette  # noqa: F401 - imported only to name the missing extra here, not deep in a later import
    import uvicorn  # noqa: F401 - the same
except ImportError as exc:  # name the extra, as httpx does for its optional dependencies
    raise ImportError(
        f"the anytime-edge server needs '{exc.name}', which is not installed; {install_hint('serve')}",
        name=exc.name,
    ) from exc

from edge_runtime.server._app import RuntimeLike, create_app
from edge_runtime.server._config import ServerConfig, default_workers
from edge_runtime.server._errors import (
    BodyTooLargeError,
    CallerRefusedError,
    ModelNotFoundError,
    OverloadedError,
    RequestError,
    ServerConfigError,
    ServerError,
    UnsupportedMediaTypeError,
)
from edge_runtime.server._protocol import OUTPUT_NAMES, PARAM_BUDGET_MS, PARAM_CLASSIFICATION, PARAM_ENTROPY_THRESHOLD
from edge_runtime.server._serve import serve

__all__ = [
    "BodyTooLargeError",
    "CallerRefusedError",
    "ModelNotFoundError",
    "OUTPUT_NAMES",
    "OverloadedError",
    "PARAM_BUDGET_MS",
    "PARAM_CLASSIFICATION",
    "PARAM_ENTROPY_THRESHOLD",
    "RequestError",
    "RuntimeLike",
    "ServerConfig",
    "ServerConfigError",
    "ServerError",
    "UnsupportedMediaTypeError",
    "create_app",
    "default_workers",
    "serve",
]
