"""Wrap a ``torch.export`` program (``.pt2``, written by ``torch.export.save``) as a gated one-member bundle.

The program is loaded, converted to ONNX by the dynamo exporter (which takes an ``ExportedProgram``
as it is: opset 18, weights inside the file) and handed to :func:`exporters.wrap.wrap_onnx`, with the
program's own torch logits on the held-out inputs as the parity reference: the gates then cover the
conversion as well as the head.

Loading safety: ``torch.export.load`` alone can run code from the file (pickles, a shape string
``eval``-ed by sympy, node targets resolved from ``torch``, guard code compiled into the module);
:func:`load_program` loads through :mod:`exporters.pt2_safety`, which refuses such archives and drops
the guard code, so a plain-tensor program (what ``torch.export.save`` writes for an ordinary model)
loads without running code from the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from edge_runtime.bundle import TaskSpec
from edge_runtime.errors import error_line
from edge_runtime.extras import install_hint
from exporters.errors import ConversionError, ExportError
from exporters.pt2_safety import load_program_safely
from exporters.verify import Tolerance
from exporters.wrap import WrapResult, wrap_onnx

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised only on a runtime-only install
    raise ImportError(f"wrapping a .pt2 program needs torch; {install_hint('train')}", name=exc.name) from exc

__all__ = ["load_program", "program_logits", "program_to_onnx", "wrap_pt2"]


def load_program(path: str | os.PathLike[str]) -> "torch.export.ExportedProgram":
    """Load a ``.pt2`` written by ``torch.export.save`` without running code from it; one user input.

    Loads through :func:`exporters.pt2_safety.load_program_safely` (archive scan, weights-only loads,
    guard code dropped).

    Raises:
        ExportError: missing file, not an archive, several programs, anything whose loading could run
            code, torch cannot read it, or the program takes other than one input.
    """
    program = load_program_safely(path)
    inputs = [s for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    if len(inputs) != 1:
        raise ExportError(f"the program takes {len(inputs)} inputs; a bundle member takes exactly one (the sample batch)")
    return program


def _logits_index(output: Any) -> int:
    """Which flattened output holds the logits: a tensor, a ``(logits, ...)`` tuple, or a mapping's ``logits``."""
    if isinstance(output, torch.Tensor):
        return 0
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return 0
    if isinstance(output, Mapping) and isinstance(output.get("logits"), torch.Tensor):
        leaves, _ = torch.utils._pytree.tree_flatten(output)
        return next(i for i, leaf in enumerate(leaves) if leaf is output["logits"])
    raise ExportError(
        f"the program returns {type(output).__name__}; it must return logits, a (logits, ...) tuple or a mapping with 'logits'"
    )


def program_logits(program: "torch.export.ExportedProgram", x: np.ndarray, batch_size: int = 512) -> tuple[np.ndarray, int]:
    """The program's logits on ``x`` in torch and the flattened output index they came from.

    Returns:
        ``(logits (N, C) float32, index)``.

    Raises:
        ConversionError: the program fails on ``x`` (wrong shape, a fixed batch size).
    """
    module = program.module()
    parts, index = [], 0
    cuts = list(range(0, x.shape[0], batch_size)) + [x.shape[0]]
    with torch.no_grad():
        for start, stop in zip(cuts[:-1], cuts[1:]):
            try:
                out = module(torch.from_numpy(x[start:stop]))
            except Exception as exc:  # guards and kernels raise many types
                first = error_line(exc)
                raise ConversionError(
                    f"the program fails on held-out inputs of shape {list(x[start:stop].shape)}: {first}; "
                    "check --data, and export it with a dynamic batch (dynamic_shapes={'x': {0: Dim('batch')}})"
                ) from exc
            index = _logits_index(out)
            leaves, _ = torch.utils._pytree.tree_flatten(out)
            parts.append(leaves[index].detach().float().cpu().numpy())
    return np.concatenate(parts), index


def program_to_onnx(program: "torch.export.ExportedProgram") -> bytes:
    """The program as ONNX bytes: dynamo exporter, opset 18, weights inside (``external_data=False``).

    Raises:
        ConversionError: the exporter failed.
    """
    from exporters.onnx import OPSET, _innermost, _quiet_exporter

    with _quiet_exporter():
        try:
            onnx_program = torch.onnx.export(
                program, (), dynamo=True, opset_version=OPSET, external_data=False, optimize=True, verbose=False
            )
        except Exception as exc:  # torch.export/onnxscript raise many unrelated types
            raise ConversionError(f"torch.onnx.export failed for the program: {error_line(_innermost(exc))}") from exc
    if onnx_program is None:  # pragma: no cover - dynamo=True always returns a program
        raise ConversionError("torch.onnx.export returned nothing; upgrade torch to >= 2.5")
    data: bytes = onnx_program.model_proto.SerializeToString()
    return data


def wrap_pt2(
    path: str | os.PathLike[str],
    task: TaskSpec,
    out_dir: str | os.PathLike[str],
    *,
    heldout: tuple[Any, Any],
    name: str = "model",
    member_name: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    info: Mapping[str, Any] | None = None,
    tolerance: Tolerance = Tolerance(),
    batch_size: int = 512,
    overwrite: bool = True,
) -> WrapResult:
    """Convert a ``.pt2`` program to ONNX and wrap it as a gated one-member bundle.

    Args:
        path: the ``.pt2`` file.
        task, out_dir, heldout, name, member_name, metadata, info, tolerance, batch_size, overwrite:
            as for :func:`exporters.wrap.wrap_onnx`; the parity reference is the program run in torch.

    Returns:
        See :func:`exporters.wrap.wrap_onnx`.

    Raises:
        ExportError, ConversionError, VerificationError: see :func:`load_program` and
            :func:`exporters.wrap.wrap_onnx`.
    """
    from exporters.wrap import load_onnx

    program = load_program(path)
    x = np.ascontiguousarray(np.asarray(heldout[0], dtype=np.float32))
    if tuple(x.shape[1:]) != tuple(task.model_input_shape[1:]):
        raise ExportError(f"held-out inputs have shape {tuple(x.shape)}, the task's members take {list(task.model_input_shape)}")
    logits, index = program_logits(program, x, batch_size)
    proto = load_onnx(program_to_onnx(program))
    if index >= len(proto.graph.output):
        raise ConversionError(f"the ONNX graph has {len(proto.graph.output)} outputs, the program's logits are output {index}")
    return wrap_onnx(
        proto,
        task,
        out_dir,
        heldout=(x, heldout[1]),
        output=proto.graph.output[index].name,
        reference_logits=logits,
        reference=f"torch program ({Path(path).name})",
        name=name,
        member_name=member_name,
        metadata=metadata,
        info=info,
        tolerance=tolerance,
        batch_size=batch_size,
        overwrite=overwrite,
    )
