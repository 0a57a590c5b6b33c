"""Exceptions raised by the on-device runtime, and the root of every Anytime Edge error.

:class:`AnytimeEdgeError` is the one root: each package's base derives from it, so a caller (the CLI
dispatcher, a user's script) catches one class and prints one line. It lives here, in a module without
dependencies, because every package may import ``edge_runtime`` (data flows towards the runtime) while
the runtime imports none of them. Messages say what is wrong and how to fix it.

    AnytimeEdgeError                 (this module) one root for the whole distribution
    ├── EdgeRuntimeError             edge_runtime: the runtime, below
    ├── ExportError                  exporters.errors: conversion and export gates
    ├── ProfileError                 profiles.errors: measurement and selection
    └── DistillError                 distill.errors: data, checkpoints, training

The runtime's own errors, all beneath :class:`EdgeRuntimeError`:

    EdgeRuntimeError
    ├── BundleError            the bundle on disk cannot be used
    │   ├── ManifestError      manifest.json is missing, malformed or of an unknown version
    │   ├── ChecksumError      a member file is missing or its sha256 differs from the manifest
    │   └── ModelLoadError     ONNX Runtime refused to load a member
    ├── InputError             a request's input has the wrong shape, dtype, values or is empty
    ├── PolicyError            an exit policy was configured with impossible values
    ├── SessionConfigError     impossible ONNX Runtime session settings (also a ValueError)
    ├── MemberError            a member raised while evaluating a request
    ├── DependencyError        onnxruntime is installed but cannot import (e.g. built for NumPy 1.x)
    └── ServerError            (edge_runtime.server) the V2 server
        ├── ServerConfigError  impossible server settings
        ├── RequestError       a bad request: HTTP 400
        ├── BodyTooLargeError  a body (inflated) or batch over the limits: HTTP 413
        ├── UnsupportedMediaTypeError  a Content-Type/-Encoding not read: HTTP 415
        ├── CallerRefusedError a Host (421) or web page Origin (403) not served
        ├── ModelNotFoundError an unknown model name: HTTP 404
        └── OverloadedError    shed under load: HTTP 503 with Retry-After
"""

from __future__ import annotations

import re

__all__ = [
    "AnytimeEdgeError",
    "BundleError",
    "ChecksumError",
    "DependencyError",
    "EdgeRuntimeError",
    "InputError",
    "ManifestError",
    "MemberError",
    "ModelLoadError",
    "PolicyError",
    "SessionConfigError",
    "error_line",
]


class AnytimeEdgeError(Exception):
    """Root of every error any Anytime Edge package raises on purpose; catch it to report one line."""


class EdgeRuntimeError(AnytimeEdgeError):
    """Base of every error the runtime raises on purpose."""


class BundleError(EdgeRuntimeError):
    """The bundle on disk cannot be used."""


class ManifestError(BundleError):
    """manifest.json is missing, malformed, or of a version this runtime does not read."""


class ChecksumError(BundleError):
    """A member file is missing, or its sha256 differs from the one the manifest records."""


class ModelLoadError(BundleError):
    """ONNX Runtime refused to load a member file."""


class InputError(EdgeRuntimeError):
    """A request's input has the wrong shape or dtype, holds NaN/inf, or is empty."""


class PolicyError(EdgeRuntimeError):
    """An exit policy was given values it cannot work with."""


class SessionConfigError(EdgeRuntimeError, ValueError):
    """A :class:`~edge_runtime.session.SessionConfig` was given impossible values.

    Also a ValueError, which it raised before it had its own class.
    """


class MemberError(EdgeRuntimeError):
    """A member raised while evaluating a request."""


class DependencyError(EdgeRuntimeError, ImportError):
    """An installed dependency cannot be imported (a broken pair such as onnxruntime 1.17 with numpy 2).

    Also an ImportError, so code that treats a failed import as "not available" still does.
    """


_BANNER = re.compile(r"^[\W_]*$")  # a line of only '*', '=', '-' ...: a banner, not a message
_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")
_ORT_NODE = re.compile(r"Non-zero status code returned while running (\w+) node\. Name:'([^']*)' Status Message: ")
_SOURCE_LOCATION = re.compile(r"(?:[\w.+:-]*[/\\])*[\w.+-]+\.(?:h|hpp|hh|c|cc|cpp|cxx|cu):\d+\s*")
_CPP_SIGNATURE = re.compile(r"\b(?:\w+::)+~?\w+(?:<[^()]*>)?\([^()]*\)(?:\s*const)?\s*")
_MAX_CHARS = 300


def error_line(exc: BaseException) -> str:
    """One line of an exception's message for a user: the first meaningful line, without native internals.

    ONNX Runtime's messages carry its build paths (``/onnxruntime_src/.../reshape_helper.h:84``), C++
    signatures, its ``[ONNXRuntimeError] : 1 : FAIL :`` prefix and multi-line "EP Error" banners; none of
    it helps the user and some of it describes the build. Those parts are dropped here; the full
    exception belongs in a log. Other exceptions give their first non-empty line. At most 300 characters.

    Returns:
        The line, or the exception's type name when its message is empty.
    """
    lines = [line.strip() for line in str(exc).splitlines()]
    text = next((line for line in lines if line and not _BANNER.match(line)), "")
    text = _ORT_PREFIX.sub("", text)
    text = _ORT_NODE.sub(lambda m: f"{m.group(1)} node{' ' + repr(m.group(2)) if m.group(2) else ''}: ", text)
    text = _CPP_SIGNATURE.sub("", _SOURCE_LOCATION.sub("", text)).strip()
    if len(text) > _MAX_CHARS:
        text = text[: _MAX_CHARS - 3].rstrip() + "..."
    return text or type(exc).__name__
