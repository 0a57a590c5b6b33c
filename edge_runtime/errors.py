"""Exceptions raised by the on-device runtime.

Every error the runtime raises on purpose derives from :class:`EdgeRuntimeError`, so a caller (the CLI,
the server) catches one type and prints one line. Messages say what is wrong and how to fix it.

    EdgeRuntimeError
    ├── BundleError            the bundle on disk cannot be used
    │   ├── ManifestError      manifest.json is missing, malformed or of an unknown version
    │   ├── ChecksumError      a member file is missing or its sha256 differs from the manifest
    │   └── ModelLoadError     ONNX Runtime refused to load a member
    ├── InputError             a request's input has the wrong shape, dtype, values or is empty
    ├── PolicyError            an exit policy was configured with impossible values
    ├── MemberError            a member raised while evaluating a request
    ├── DependencyError        onnxruntime is installed but cannot import (e.g. built for NumPy 1.x)
    └── ServerError            (edge_runtime.server) the V2 server
        ├── ServerConfigError  impossible server settings
        ├── RequestError       a bad request: HTTP 400
        ├── BodyTooLargeError  a body over the size limit: HTTP 413
        ├── ModelNotFoundError an unknown model name: HTTP 404
        └── OverloadedError    shed under load: HTTP 503 with Retry-After
"""

from __future__ import annotations

__all__ = [
    "BundleError",
    "ChecksumError",
    "DependencyError",
    "EdgeRuntimeError",
    "InputError",
    "ManifestError",
    "MemberError",
    "ModelLoadError",
    "PolicyError",
]


class EdgeRuntimeError(Exception):
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


class MemberError(EdgeRuntimeError):
    """A member raised while evaluating a request."""


class DependencyError(EdgeRuntimeError, ImportError):
    """An installed dependency cannot be imported (a broken pair such as onnxruntime 1.17 with numpy 2).

    Also an ImportError, so code that treats a failed import as "not available" still does.
    """
