"""Checks of a bundle's members against its manifest, run by :func:`edge_runtime.bundle.load_bundle`
before ONNX Runtime sees a byte: the input sample size, ONNX well-formedness, self-containment (no
external data) and the graph's input shape. Nothing here allocates anything of the manifest's shapes.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from edge_runtime._onnx_scan import OnnxScanError, scan_model
from edge_runtime._sources import LoadLimits
from edge_runtime.errors import ManifestError, ModelLoadError

if TYPE_CHECKING:
    from edge_runtime.bundle import Manifest, MemberSpec, TaskSpec

__all__ = ["check_member_graph", "check_sample_size"]

_ONNX_FLOAT = 1  # TensorProto.FLOAT


def check_sample_size(manifest: Manifest, where: str, limits: LoadLimits) -> None:
    elements = math.prod(manifest.task.input.shape[1:])
    if elements > limits.max_sample_elements:
        raise ManifestError(
            f"{where}: task.input.shape {list(manifest.task.input.shape)} makes one sample {elements:,} elements, "
            f"over the {limits.max_sample_elements:,} limit; fix the shape (or raise LoadLimits.max_sample_elements)"
        )


def check_member_graph(member: MemberSpec, blob: bytes, task: TaskSpec) -> None:
    """Refuse external data and an input shape the graph does not take, before ONNX Runtime sees the bytes."""
    try:
        facts = scan_model(blob)
    except OnnxScanError as exc:
        raise ModelLoadError(f"member '{member.name}' ({member.file}) is not a valid ONNX model ({exc}); re-export it") from None
    if facts.external:
        shown = ", ".join(repr(n) for n in facts.external[:3]) + (" ..." if len(facts.external) > 3 else "")
        raise ModelLoadError(
            f"member '{member.name}' ({member.file}) keeps tensors {shown} in external data files, which no checksum "
            "covers; bundles must be self-contained: re-export the member with its weights inside the .onnx"
        )
    spec = task.input
    found = facts.inputs.get(spec.name)
    if found is None:
        return  # the runtime's contract check names the missing input
    elem, dims = found
    if elem not in (0, _ONNX_FLOAT):
        raise ModelLoadError(
            f"member '{member.name}' input '{spec.name}' has ONNX element type {elem}, but the manifest says "
            f"{spec.dtype}; re-export the member"
        )
    if dims is None:
        return
    want = task.model_input_shape  # the client shape after the preprocess layout
    fixed = [d if isinstance(d, int) and d > 0 else None for d in dims]
    if len(dims) != len(want) or any(f is not None and f != s for f, s in zip(fixed[1:], want[1:])):
        dims_shown = ["?" if not isinstance(d, int) or d <= 0 else d for d in dims]
        raise ModelLoadError(
            f"member '{member.name}' takes '{spec.name}' shaped {dims_shown}, but the manifest says "
            f"{list(want)}; fix task.input.shape or re-export the bundle"
        )
