"""Errors of the V2 server. Each one carries the HTTP status it is answered with.

They derive from :class:`edge_runtime.errors.EdgeRuntimeError`, so the CLI prints any of them as one line:

    EdgeRuntimeError
    └── ServerError              base of the server's errors; ``status`` is the HTTP status
        ├── ServerConfigError    a ServerConfig field is impossible (not an HTTP answer)
        ├── RequestError         400: the request body is not a valid V2 request for this model
        ├── BodyTooLargeError    413: the body (inflated) exceeds max_body_bytes, or the batch max_batch_rows
        ├── UnsupportedMediaTypeError 415: a Content-Type or Content-Encoding the server does not read
        ├── CallerRefusedError   421/403: a Host or Origin not served here (DNS rebinding, web pages)
        ├── ModelNotFoundError   404: no model or version of that name is served here
        └── OverloadedError      503: shed because the request could not be answered within its budget
"""

from __future__ import annotations

from edge_runtime.errors import EdgeRuntimeError

__all__ = [
    "BodyTooLargeError",
    "CallerRefusedError",
    "ModelNotFoundError",
    "OverloadedError",
    "RequestError",
    "ServerConfigError",
    "ServerError",
    "UnsupportedMediaTypeError",
]


class ServerError(EdgeRuntimeError):
    """Base of the server's errors; ``status`` is the HTTP status the error is answered with."""

    status: int = 500


class ServerConfigError(ServerError):
    """A :class:`ServerConfig` field has an impossible value."""


class RequestError(ServerError):
    """The request is not a valid V2 inference request for this model (bad JSON, name, shape, datatype, NaN)."""

    status = 400


class BodyTooLargeError(ServerError):
    """The request body is larger than the server accepts."""

    status = 413


class UnsupportedMediaTypeError(ServerError):
    """The body's Content-Type or Content-Encoding is not one the server reads."""

    status = 415


class CallerRefusedError(ServerError):
    """The request names a Host (421) or comes from a web page Origin (403) that this server does not serve."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class ModelNotFoundError(ServerError):
    """No model (or model version) of that name is served here."""

    status = 404


class OverloadedError(ServerError):
    """Shed: the queue is full, or the request could no longer be answered within its latency budget."""

    status = 503

    REASONS = ("queue_full", "deadline", "expired", "shutdown")

    def __init__(self, message: str, retry_after_s: float = 1.0, reason: str = "queue_full") -> None:
        super().__init__(message)
        if reason not in self.REASONS:
            raise ValueError(f"shed reason {reason!r} is not one of {self.REASONS}")
        self.retry_after_s = retry_after_s  # sent as the Retry-After header (whole seconds, at least 1)
        # why (the ``reason`` of anytime_shed_total): queue_full = every worker busy and the queue full;
        # deadline = the queue shows the budget cannot be met; expired = the budget ran out while queued
        self.reason = reason
