"""torch -> ONNX export into anytime-edge bundles, every export gated (checker, parity, accuracy).

``wrap_onnx`` (a user's ONNX classifier -> bundle) needs onnx but not torch; ``wrap_pt2`` needs torch;
``compose_cascade`` (one-member bundles -> a cascade) needs neither; ``quantize_bundle`` (INT8 members,
ONNX Runtime's quantization tools) needs onnx but not torch.
The names below load lazily: ``import exporters.bundle`` (used by tests and tools that only write
bundles) does not import torch; the first use of an export function does, and a missing torch raises an
ImportError that names the ``train`` extra.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from exporters.bundle import archive_bundle, write_bundle
    from exporters.cascade import CascadeResult, compose_cascade
    from exporters.errors import ConversionError, ExportError, VerificationError
    from exporters.export import ExportResult, MemberExport, compressed_size, export_ensemble, export_model
    from exporters.onnx import OPSET, MemberHead, export_onnx
    from exporters.pt2 import wrap_pt2
    from exporters.quantize import QuantizeConfig, QuantizeResult, quantize_bundle
    from exporters.verify import GateReport, Tolerance
    from exporters.wrap import WrapResult, wrap_onnx

__all__ = [
    "CascadeResult",
    "ConversionError",
    "ExportError",
    "ExportResult",
    "GateReport",
    "MemberExport",
    "MemberHead",
    "OPSET",
    "QuantizeConfig",
    "QuantizeResult",
    "Tolerance",
    "VerificationError",
    "WrapResult",
    "archive_bundle",
    "compose_cascade",
    "compressed_size",
    "export_ensemble",
    "export_model",
    "export_onnx",
    "quantize_bundle",
    "wrap_onnx",
    "wrap_pt2",
    "write_bundle",
]

# Public name -> the module that defines it.
_SOURCES = {
    "OPSET": "exporters.onnx",
    "CascadeResult": "exporters.cascade",
    "ConversionError": "exporters.errors",
    "ExportError": "exporters.errors",
    "ExportResult": "exporters.export",
    "GateReport": "exporters.verify",
    "MemberExport": "exporters.export",
    "MemberHead": "exporters.onnx",
    "QuantizeConfig": "exporters.quantize",
    "QuantizeResult": "exporters.quantize",
    "Tolerance": "exporters.verify",
    "VerificationError": "exporters.errors",
    "WrapResult": "exporters.wrap",
    "archive_bundle": "exporters.bundle",
    "compose_cascade": "exporters.cascade",
    "compressed_size": "exporters.export",
    "export_ensemble": "exporters.export",
    "export_model": "exporters.export",
    "export_onnx": "exporters.onnx",
    "quantize_bundle": "exporters.quantize",
    "wrap_onnx": "exporters.wrap",
    "wrap_pt2": "exporters.pt2",
    "write_bundle": "exporters.bundle",
}


def __getattr__(name: str) -> Any:
    if name not in _SOURCES:
        raise AttributeError(f"module 'exporters' has no attribute '{name}'")
    value = getattr(importlib.import_module(_SOURCES[name]), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
