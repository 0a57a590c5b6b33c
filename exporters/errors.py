"""Exceptions raised by the exporters.

    ExportError
    ├── ConversionError    torch -> ONNX conversion failed
    └── VerificationError  an exported model failed a gate: onnx.checker, torch-vs-ORT parity, accuracy
"""

from __future__ import annotations

__all__ = ["ConversionError", "ExportError", "VerificationError"]


class ExportError(Exception):
    """Base of every error the exporters raise on purpose."""


class ConversionError(ExportError):
    """torch -> ONNX conversion failed."""


class VerificationError(ExportError):
    """An exported model failed one of the export gates."""
