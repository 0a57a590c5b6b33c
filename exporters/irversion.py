"""Stamp ONNX models with the lowest IR version their opsets allow, so older ONNX Runtimes read them.

torch (and many other producers) write the newest IR version (10), but the runtime install accepts
onnxruntime >= 1.17, which reads IR <= 9 and would refuse the file on the device. Opset 18 needs only IR 8,
and classifier graphs use none of the newer IR features (float8/int4 types, function overloads); the
checker confirms it before the lower version is kept. Needs ``onnx`` only (no torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

__all__ = ["lower_ir_version"]


def lower_ir_version(proto: "onnx.ModelProto") -> None:
    """Lower ``proto.ir_version`` in place to the minimum its opset imports need, if it still checks there.

    Leaves the model unchanged when it already has that version or the checker refuses the lower one.
    """
    import onnx

    minimum = onnx.helper.find_min_ir_version_for(list(proto.opset_import), ignore_unknown=True)
    if minimum >= proto.ir_version:
        return
    original = proto.ir_version
    proto.ir_version = minimum
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError:
        proto.ir_version = original
