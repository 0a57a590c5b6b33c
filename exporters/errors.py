"""Exceptions raised by the exporters.

AnytimeEdgeError       (edge_runtime.errors) the root of every package's errors
└── ExportError
    ├── ConversionError    torch -> ONNX conversion failed
    └── VerificationError  an exported model failed a gate: onnx.checker, torch-vs-ORT parity, accuracy
"""

from __future__ import annotations

from edge_runtime.errors import AnytimeEdgeError

__all__ = ["ConversionError", "ExportError", "VerificationError"]


class ExportError(AnytimeEdgeError):
    """Base of every error the exporters raise on purpose."""


class ConversionError(ExportError):
    """torch -> ONNX conversion failed."""


class VerificationError(ExportError):
    """An exported model failed one of the export gates."""
