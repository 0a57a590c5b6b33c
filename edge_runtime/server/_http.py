"""The HTTP envelope of a request, checked before the V2 handlers read it: who may call, what the body is.

* Callers. A browser on the device can be made to send requests to a loopback server by any web page,
  and with DNS rebinding (a hostname that resolves to 127.0.0.1) it can read the answers too. So on a
  loopback bind only loopback names are accepted in ``Host`` (421 otherwise), and a request whose
  ``Origin`` names another host is refused (403). A deployment reached under other names lists them in
  ``ServerConfig.allowed_hosts`` (``--allowed-host``); on a non-loopback bind without that list any
  ``Host`` is accepted, as the bind was an explicit choice to be reachable.
* Media types. An inference body must be ``application/json`` or, for Triton's binary tensor extension,
  ``application/octet-stream`` (or carry no ``Content-Type``); anything else is 415. That refuses the
  ``text/plain`` and form posts a web page can send without a CORS preflight.
* Compression. ``Content-Encoding: gzip`` or ``deflate`` (what tritonclient sends with request compression)
  is inflated while it streams in; the body limit applies to the inflated size, so a small compressed
  "bomb" is refused with 413 once it passes the limit, never inflated whole. Other encodings are 415.
  ``Inference-Header-Content-Length`` counts bytes of the decoded body, as in Triton.
"""

from __future__ import annotations

import zlib
from typing import AsyncIterator, Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from edge_runtime.server._errors import (
    BodyTooLargeError,
    CallerRefusedError,
    RequestError,
    UnsupportedMediaTypeError,
)

__all__ = ["CallerCheck", "check_content_type", "header_length", "read_body"]

_MEDIA_TYPES = ("application/json", "application/octet-stream")
_ENCODINGS = {"gzip": "gzip", "x-gzip": "gzip", "deflate": "deflate"}


def _host_name(value: str) -> str:
    """The host of a ``Host`` header value (``name``, ``name:port``, ``[v6]:port``), lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


class CallerCheck:
    """ASGI middleware: refuse requests whose ``Host`` or ``Origin`` names a host not served here.

    Args:
        app: the application behind it.
        hosts: the accepted host names; None accepts any (no check).
    """

    def __init__(self, app: ASGIApp, hosts: Iterable[str] | None) -> None:
        self.app = app
        self.hosts = None if hosts is None else frozenset(_host_name(h) for h in hosts)

    def refusal(self, headers: Headers) -> CallerRefusedError | None:
        """Why a request with these headers is refused, or None when it is accepted."""
        assert self.hosts is not None
        served = ", ".join(sorted(self.hosts))
        host = headers.get("host")
        if host is not None and _host_name(host) not in self.hosts:
            return CallerRefusedError(
                f"Host {host!r} is not served here (it answers {served}); "
                "to serve another name, start it with --allowed-host NAME",
                status=421,
            )
        origin = headers.get("origin")
        if origin is not None:
            try:
                origin_host = urlsplit(origin).hostname
            except ValueError:
                origin_host = None
            if origin_host is None or _host_name(origin_host) not in self.hosts:
                return CallerRefusedError(
                    f"requests from web pages of origin {origin!r} are refused (this server answers {served}); "
                    "call it from a program, or start it with --allowed-host for that page's host",
                    status=403,
                )
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.hosts is not None:
            refused = self.refusal(Headers(scope=scope))
            if refused is not None:
                await JSONResponse({"error": str(refused)}, status_code=refused.status)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def check_content_type(request: Request) -> None:
    """Accept a JSON or binary-extension body (or one without a ``Content-Type``).

    Raises:
        UnsupportedMediaTypeError: any other media type (415).
    """
    value = request.headers.get("content-type")
    if value is None:
        return
    media = value.split(";", 1)[0].strip().lower()
    if media not in _MEDIA_TYPES:
        raise UnsupportedMediaTypeError(
            f"Content-Type {media or value!r} is not accepted; send application/json "
            "(or application/octet-stream with Inference-Header-Content-Length for binary tensors)"
        )


class _Inflater:
    """Inflates a gzip or zlib/raw deflate stream chunk by chunk, refusing output beyond ``limit`` bytes."""

    def __init__(self, encoding: str, limit: int) -> None:
        self.encoding = encoding
        self.limit = limit
        self.size = 0
        self._d: zlib._Decompress | None = zlib.decompressobj(16 + zlib.MAX_WBITS) if encoding == "gzip" else None

    def feed(self, data: bytes) -> bytes:
        if self._d is None:  # deflate: zlib-wrapped (RFC 9110) or, as some clients send it, raw
            zlib_header = len(data) >= 2 and data[0] & 0x0F == 8 and ((data[0] << 8) | data[1]) % 31 == 0
            self._d = zlib.decompressobj(zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS)
        out: list[bytes] = []
        while data:
            if self._d.eof:
                raise RequestError(f"the {self.encoding} body has bytes after its end; send one compressed stream")
            try:
                # At most one byte past the limit: enough to know the limit is passed, never more.
                piece = self._d.decompress(data, self.limit - self.size + 1)
            except zlib.error as exc:
                raise RequestError(
                    f"the body is not valid {self.encoding} ({exc}); compress it with {self.encoding} or send it uncompressed"
                ) from None
            self.size += len(piece)
            if self.size > self.limit:
                raise BodyTooLargeError(
                    f"the {self.encoding} body inflates to more than this server's limit of {self.limit} bytes; "
                    "send fewer samples per request or raise --max-body-mb"
                )
            out.append(piece)
            data = self._d.unconsumed_tail or self._d.unused_data
        return b"".join(out)

    def finish(self) -> None:
        if self._d is None or not self._d.eof:
            raise RequestError(f"the {self.encoding} body ends before its compressed stream does; send the whole body")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, inflated if it is compressed, of at most ``limit`` bytes (before and after inflating).

    Raises:
        BodyTooLargeError: the body, or what it inflates to, exceeds ``limit`` (413).
        UnsupportedMediaTypeError: a ``Content-Encoding`` other than gzip, deflate or identity (415).
        RequestError: a bad ``Content-Length`` or a corrupt compressed body (400).
    """
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "", *_ENCODINGS):
        raise UnsupportedMediaTypeError(
            f"Content-Encoding {encoding!r} is not supported; send the body uncompressed, or gzip/deflate compressed"
        )
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise RequestError("Content-Length is not a number") from None
        if size > limit:
            raise BodyTooLargeError(
                f"the body has {size} bytes, more than this server's limit of {limit}; "
                "send fewer samples per request or raise --max-body-mb"
            )
    inflater = _Inflater(_ENCODINGS[encoding], limit) if encoding in _ENCODINGS else None
    chunks: list[bytes] = []
    received = 0
    async for chunk in _stream(request):
        received += len(chunk)
        if received > limit:
            raise BodyTooLargeError(
                f"the body exceeds this server's limit of {limit} bytes; send fewer samples per request or raise --max-body-mb"
            )
        chunks.append(inflater.feed(chunk) if inflater is not None else chunk)
    if inflater is not None:
        inflater.finish()
    return b"".join(chunks)


async def _stream(request: Request) -> AsyncIterator[bytes]:
    async for chunk in request.stream():
        if chunk:
            yield chunk


def header_length(request: Request) -> int | None:
    """The ``Inference-Header-Content-Length`` header (bytes of JSON before binary tensors), or None.

    Raises:
        RequestError: the header is not a number.
    """
    value = request.headers.get("inference-header-content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise RequestError(f"Inference-Header-Content-Length {value!r} is not a number of bytes") from None
