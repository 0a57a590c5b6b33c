"""The manifest's optional ``quantization`` object: how an INT8 bundle was made from a float one.

Written by ``anytime-edge quantize`` (:mod:`exporters.quantize`); the runtime only reads it (to show it and
to keep it when the manifest is rewritten by ``calibrate``/``profile``). A float bundle has no such object,
and older runtimes ignore it (unknown manifest keys are allowed), so bundles of either kind stay valid.
Running an INT8 member needs nothing new: ONNX Runtime executes the QuantizeLinear/DequantizeLinear pairs
(fused into integer kernels at session creation) like any other operator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from edge_runtime.errors import ManifestError

__all__ = ["CALIBRATION_METHODS", "INT8_TYPES", "QUANTIZATION_METHODS", "Quantization"]

QUANTIZATION_METHODS = ("static", "dynamic")  # static: calibrated activation ranges (QDQ); dynamic: ranges per call
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")  # onnxruntime.quantization.CalibrationMethod
INT8_TYPES = ("int8", "uint8")
_FORMATS = {"static": "QDQ", "dynamic": "QOperator"}


@dataclass(frozen=True)
class Quantization:
    """How the members were quantized, and what the gates measured against the float bundle."""

    method: str  # "static" or "dynamic"
    weight_type: str = "int8"  # integer type of the weights
    activation_type: str | None = "uint8"  # static: integer type of the activations; dynamic: None
    per_channel: bool = False  # one weight scale per output channel (else one per tensor)
    calibration: str | None = "minmax"  # static: how activation ranges were chosen; dynamic: None
    calibration_samples: int = 0  # samples the activation ranges were calibrated on (0 for dynamic)
    float_head: bool = True  # the logits combine and the softmax/entropy head run in float32
    tool: str = ""  # the quantizer, e.g. "onnxruntime.quantization 1.32.0"
    source: Mapping[str, Any] = field(default_factory=dict)  # the float bundle: name, member sha256s
    gates: Mapping[str, Any] = field(default_factory=dict)  # held-out accuracy, agreement, max prob diff

    def __post_init__(self) -> None:
        if self.method not in QUANTIZATION_METHODS:
            raise ManifestError(f"quantization.method '{self.method}' is unknown; use one of {list(QUANTIZATION_METHODS)}")
        if self.weight_type not in INT8_TYPES:
            raise ManifestError(f"quantization.weight_type '{self.weight_type}' is unknown; use one of {list(INT8_TYPES)}")
        if self.method == "static":
            if self.activation_type not in INT8_TYPES:
                raise ManifestError(
                    f"static quantization needs activation_type in {list(INT8_TYPES)}, not {self.activation_type!r}"
                )
            if self.calibration not in CALIBRATION_METHODS:
                raise ManifestError(
                    f"static quantization needs calibration in {list(CALIBRATION_METHODS)}, not {self.calibration!r}"
                )
        elif self.activation_type is not None or self.calibration is not None:
            raise ManifestError("dynamic quantization has no activation_type or calibration; set both to null")
        if (
            isinstance(self.calibration_samples, bool)
            or not isinstance(self.calibration_samples, int)
            or self.calibration_samples < 0
        ):
            raise ManifestError("quantization.calibration_samples must be an integer >= 0")

    @property
    def format(self) -> str:
        """ONNX Runtime's name for the graph form: ``"QDQ"`` (static) or ``"QOperator"`` (dynamic)."""
        return _FORMATS[self.method]

    def describe(self) -> str:
        """One line, e.g. ``static QDQ, weights int8 per-channel, activations uint8 (minmax on 256 samples)``."""
        weights = f"weights {self.weight_type}{' per-channel' if self.per_channel else ''}"
        if self.method == "dynamic":
            return f"dynamic {self.format}, {weights}, activations quantized per call"
        return (
            f"static {self.format}, {weights}, activations {self.activation_type} "
            f"({self.calibration} on {self.calibration_samples} samples)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "format": self.format,
            "weight_type": self.weight_type,
            "activation_type": self.activation_type,
            "per_channel": self.per_channel,
            "calibration": self.calibration,
            "calibration_samples": self.calibration_samples,
            "float_head": self.float_head,
            "tool": self.tool,
            "source": dict(self.source),
            "gates": dict(self.gates),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Quantization":
        """Parse ``manifest["quantization"]`` (``format`` is derived from ``method`` and not read back)."""
        if not isinstance(d, Mapping) or "method" not in d:
            raise ManifestError("quantization must be an object with a 'method'; rebuild the bundle with anytime-edge quantize")
        return cls(
            method=str(d["method"]),
            weight_type=str(d.get("weight_type", "int8")),
            activation_type=d.get("activation_type"),
            per_channel=bool(d.get("per_channel", False)),
            calibration=d.get("calibration"),
            calibration_samples=d.get("calibration_samples", 0),
            float_head=bool(d.get("float_head", True)),
            tool=str(d.get("tool", "")),
            source=dict(d.get("source", {})),
            gates=dict(d.get("gates", {})),
        )
