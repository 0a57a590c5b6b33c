"""Serve a bundle from KServe's own ``ModelServer`` (the ``kserve`` package): the ``kserve`` extra.

    python -m edge_runtime.kserve BUNDLE --http_port 8080 [--budget-ms 20] [KServe's own flags]

The same Open Inference Protocol (V2) endpoints as ``anytime-edge serve`` (``/v2/models/{name}/infer``,
metadata, readiness), answered by KServe's FastAPI app, with the same ``anytime_budget_ms`` /
``anytime_entropy_threshold`` request parameters, outputs and ``anytime_*`` response parameters: the
request and response translation is :mod:`edge_runtime.server._protocol`'s and the scheduling (bounded
worker pool, earliest deadline first, shedding) :mod:`edge_runtime.server._app`'s, so the two servers
cannot drift apart. KServe reads and writes Triton's binary tensor extension itself (a request's binary
inputs; outputs in binary when the request asks with ``binary_data_output`` or an output's
``binary_data``).

Differences from ``anytime-edge serve``: a budget counts from the moment KServe hands the decoded request
to the model (KServe parses the body first; ``anytime-edge serve`` counts from the first byte); KServe
binds every interface (0.0.0.0, as a pod needs) and has no Host/Origin checks, body limit or early
503 before the body is read; KServe's ``--workers`` (processes) must stay 1 (scale with
``--inference-workers`` threads or replicas); gRPC is off by default; errors other than the ``{"error": ...}`` bodies answered here follow
KServe/FastAPI (a malformed body is FastAPI's 422). Only this package imports ``kserve``, on first use of
its names; nothing else in ``edge_runtime`` does.
"""

from __future__ import annotations

from typing import Any

__all__ = ["AnytimeModel", "add_error_handlers"]


def __getattr__(name: str) -> Any:
    # kserve (pandas, grpc, kubernetes: seconds to import) loads on first use, so `python -m
    # edge_runtime.kserve` without the extra can say in one line what to install.
    if name not in __all__:
        raise AttributeError(f"module 'edge_runtime.kserve' has no attribute {name!r}")
    from edge_runtime.extras import install_hint

    try:
        import kserve  # noqa: F401 - imported only to name the missing extra here
    except ImportError as exc:  # name the extra, as the HTTP server does for its own
        raise ImportError(
            f"the KServe adapter needs '{exc.name}', which is not installed; {install_hint('kserve')}", name=exc.name
        ) from exc
    from edge_runtime.kserve import _model

    return getattr(_model, name)
