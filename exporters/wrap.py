"""Wrap a user's ONNX classifier as a gated one-member bundle, without torch.

A model the user already has (``model.onnx``, ``x -> logits``) lacks the head every bundle member carries
(see :mod:`edge_runtime.bundle`): outputs ``logits``, ``probs`` and ``entropy``. :func:`add_head` builds
that head as a small ONNX graph with :mod:`onnx.helper` and joins it to the user's graph with
:func:`onnx.compose.merge_models`; the user's nodes and initializers are kept as they are (their names
get a ``model/`` prefix only when one collides with a head name). The head computes, as
:class:`exporters.onnx.MemberHead` does in torch, ``log_probs = LogSoftmax(logits)``,
``probs = Exp(log_probs)`` and ``entropy = -ReduceSum(probs * log_probs)``, so a confident answer (a
probability that underflows to 0) gives entropy 0, not ``0 * -inf``.

:func:`wrap_onnx` then runs the export gates (:mod:`exporters.verify`) before anything is written:

1. ``onnx.checker`` (full check) on the wrapped graph, and the member I/O contract;
2. parity on held-out inputs: the wrapped ``logits`` against the reference logits (the source model run
   in ONNX Runtime, or the torch program a ``.pt2`` came from), ``probs`` and ``entropy`` against numpy's
   softmax/entropy of the reference logits (float64), first at batch 1 then in larger batches (proving
   the batch dimension is dynamic);
3. held-out accuracy of the wrapped graph equals the reference's within the tolerance.

Refused, with one line naming the fix: a model without exactly one float32 input, whose input shape
disagrees with the data's, whose batch dimension is fixed above 1, whose logits are not ``(N, classes)``
with the data's class count, or whose weights live in external data files. A model exported with a
fixed batch of 1 (common with older exporters) gets a symbolic batch dimension; the reference then runs
it row by row, and if its operators bake the batch in, the gates fail and it is refused.

This module imports onnx, onnxruntime, numpy and the runtime only: a device with the runtime install
plus ``onnx`` (``pip install -c constraints.txt '.[wrap]'`` in the checkout) can wrap a model it received.
"""

from __future__ import annotations

import math
import os
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from edge_runtime.bundle import REQUIRED_OUTPUTS, Manifest, MemberSpec, TaskSpec, load_bundle
from edge_runtime.errors import EdgeRuntimeError, error_line
from edge_runtime.extras import install_hint
from edge_runtime.session import create_session
from exporters.bundle import write_bundle
from exporters.errors import ConversionError, ExportError, VerificationError
from exporters.irversion import lower_ir_version
from exporters.verify import GateReport, Tolerance, accuracy, check_accuracy, check_graph, check_heldout, check_parity

if TYPE_CHECKING:
    import onnx
    from onnx import ModelProto

__all__ = [
    "MIN_OPSET",
    "ONNX_INSTALL_HINT",
    "SourceGraph",
    "WrapResult",
    "add_head",
    "chance_accuracy",
    "inspect_source",
    "load_onnx",
    "near_chance",
    "reference_outputs",
    "wrap_onnx",
]

# LogSoftmax/Exp/Mul/ReduceSum/Neg/Identity with broadcasting Mul exist from opset 7 on.
MIN_OPSET = 7
ONNX_INSTALL_HINT = f"{install_hint('wrap')}; or the onnx package alone"
_PREFIX = "model/"  # added to the user's names only when one collides with the head's
_HEAD_INPUT = "wrap/source_logits"
_BATCH = "batch"  # the symbolic batch dimension given to a model exported with a fixed batch of 1
_DYNAMIC_HINT = "torch: dynamic_shapes={'x': {0: torch.export.Dim('batch')}}, or dynamic_axes for the legacy exporter"
_HEAD_NAMES = frozenset(
    {*REQUIRED_OUTPUTS, _HEAD_INPUT, "wrap/log_probs", "wrap/p_log_p", "wrap/neg_entropy", "wrap/axes", "prev_logits"}
)
ArrayLike = Any


def _onnx() -> Any:
    """The onnx module, or an ExportError naming the install."""
    try:
        import onnx
        import onnx.compose  # merge_models / add_prefix
    except ImportError as exc:
        raise ExportError(f"wrapping an ONNX model needs the onnx package: {ONNX_INSTALL_HINT}") from exc
    return onnx


@dataclass(frozen=True)
class SourceGraph:
    """What :func:`inspect_source` found in a user's graph."""

    input_name: str  # the one graph input (not an initializer)
    input_shape: tuple[int | str | None, ...]  # per dimension: a size, a symbolic name, or None (unknown)
    output_name: str  # the graph output taken as logits
    opset: int  # version of the default ("ai.onnx") domain
    params: int  # elements in the initializers
    fixed_batch: bool = False  # the input's batch is fixed at 1: made dynamic, kept only if the gates pass


@dataclass(frozen=True)
class WrapResult:
    """What :func:`wrap_onnx` wrote and measured."""

    path: Path  # the bundle directory
    manifest: Manifest  # as written (with the checksum)
    gates: GateReport  # parity and accuracy (``torch_accuracy`` holds the reference's accuracy)
    reference: str  # what the parity gate compared against, e.g. "source ONNX in ONNX Runtime"
    bytes: int  # size of the wrapped ONNX file
    bytes_zip: int  # its deflated size
    params: int  # elements in the source graph's initializers

    @property
    def accuracy(self) -> float:
        """Held-out accuracy of the wrapped graph (fraction)."""
        return self.gates.onnx_accuracy

    def describe(self) -> list[str]:
        """Lines for a CLI."""
        g = self.gates
        worst = max(g.max_abs_diff.values()) if g.max_abs_diff else 0.0
        return [
            f"{g.member}: held-out accuracy {100 * g.onnx_accuracy:.2f}% on {g.num_heldout} samples "
            f"(reference: {self.reference} {100 * g.torch_accuracy:.2f}%), max |diff| {worst:.2e}, "
            f"{self.bytes} B ({self.bytes_zip} B deflated), {self.params:,d} params"
        ]


def load_onnx(source: "bytes | str | os.PathLike[str] | onnx.ModelProto") -> "onnx.ModelProto":
    """Parse an ONNX model from a path, bytes or a ModelProto (copied), without reading external data.

    Raises:
        ExportError: onnx is not installed, the file is missing or is not an ONNX model.
    """
    onnx = _onnx()
    if isinstance(source, onnx.ModelProto):
        proto: ModelProto = onnx.ModelProto()
        proto.CopyFrom(source)
        return proto
    if isinstance(source, (bytes, bytearray)):
        data, where = bytes(source), "the model bytes"
    else:
        path = Path(source)
        if not path.is_file():
            raise ExportError(f"{path} does not exist or is not a file; pass an .onnx model file")
        data, where = path.read_bytes(), str(path)
    try:
        model: ModelProto = onnx.load_model_from_string(data)
        return model
    except Exception as exc:  # protobuf raises DecodeError and others
        raise ExportError(f"{where} is not an ONNX model ({type(exc).__name__}); pass a file saved with onnx.save") from exc


def _tensors(graph: Any) -> list[Any]:
    """Every TensorProto of a graph and its subgraphs: initializers and node attributes."""
    found = list(graph.initializer) + [s.values for s in graph.sparse_initializer]
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                found.append(attr.t)
            found.extend(attr.tensors)
            if attr.HasField("g"):
                found.extend(_tensors(attr.g))
            for sub in attr.graphs:
                found.extend(_tensors(sub))
    return found


def _names(graph: Any) -> set[str]:
    """Every value and node name used in a graph and its subgraphs."""
    names = {v.name for v in (*graph.input, *graph.output, *graph.value_info, *graph.initializer)}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
        for attr in node.attribute:
            if attr.HasField("g"):
                names |= _names(attr.g)
            for sub in attr.graphs:
                names |= _names(sub)
    names.discard("")
    return names


def _dims(value_info: Any) -> tuple[int | str | None, ...] | None:
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    return tuple(
        d.dim_value if d.HasField("dim_value") else (d.dim_param or None) if d.HasField("dim_param") else None
        for d in t.shape.dim
    )


def inspect_source(
    proto: "onnx.ModelProto",
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    output: str | None = None,
) -> SourceGraph:
    """Check that a user's graph can become a bundle member and say which input/output it uses.

    The logits are ``output`` when given, else the only graph output, else the output named
    ``logits``, else the first output (as a torch model's ``(logits, ...)`` tuple is read).

    Args:
        proto: the user's model.
        input_shape: one sample's shape from the data, without the batch dimension.
        num_classes: the data's class count.
        output: the graph output holding the logits; None picks it as above.

    Raises:
        ExportError: external data, not exactly one float32 input, a shape or class count that
            disagrees with the data, a fixed batch dimension, or an opset older than :data:`MIN_OPSET`.
    """
    onnx = _onnx()
    graph = proto.graph
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in _tensors(graph)):
        raise ExportError(
            "the model keeps weights in external data files; save it as one file "
            "(onnx.save_model(model, path, save_as_external_data=False)) and wrap that"
        )
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ExportError(
            f"the model has {len(inputs)} inputs {[i.name for i in inputs]}; a bundle member takes exactly one "
            "(the sample batch): re-export it with one input"
        )
    x = inputs[0]
    elem = x.type.tensor_type.elem_type if x.type.HasField("tensor_type") else 0
    if elem != onnx.TensorProto.FLOAT:
        kind = onnx.TensorProto.DataType.Name(elem) if elem else x.type.WhichOneof("value")
        raise ExportError(
            f"the model's input '{x.name}' is {kind}; bundles take float32 inputs: re-export it with a float32 input"
        )
    dims = _dims(x)
    if dims is not None:
        if len(dims) != len(input_shape) + 1:
            raise ExportError(
                f"the model's input '{x.name}' has rank {len(dims)} {list(dims)}, the data's samples are "
                f"{list(input_shape)} (rank {len(input_shape) + 1} with the batch); pass the data it was trained on"
            )
        if isinstance(dims[0], int) and dims[0] > 1:
            raise ExportError(
                f"the model's input '{x.name}' has a fixed batch of {dims[0]}; re-export it with a dynamic batch "
                f"dimension ({_DYNAMIC_HINT})"
            )
        for got, want in zip(dims[1:], input_shape):
            if isinstance(got, int) and got > 0 and got != want:
                raise ExportError(
                    f"the model's input '{x.name}' has shape {list(dims)}, the data's samples are {list(input_shape)}; "
                    "pass the data the model was trained on"
                )
    outputs = [o.name for o in graph.output]
    if output is None:
        if not outputs:
            raise ExportError("the model has no graph outputs; it must output logits of shape (N, classes)")
        output = outputs[0] if len(outputs) == 1 or "logits" not in outputs else "logits"
    elif output not in outputs:
        raise ExportError(f"the model has no output '{output}'; its outputs are {outputs}")
    out = next(o for o in graph.output if o.name == output)
    out_elem = out.type.tensor_type.elem_type if out.type.HasField("tensor_type") else 0
    if out_elem != onnx.TensorProto.FLOAT:
        kind = onnx.TensorProto.DataType.Name(out_elem) if out_elem else out.type.WhichOneof("value")
        raise ExportError(f"the model's output '{output}' is {kind}; it must be float32 logits of shape (N, classes)")
    out_dims = _dims(out)
    if out_dims is not None:
        if len(out_dims) != 2:
            raise ExportError(
                f"the model's output '{output}' has shape {list(out_dims)}; it must be logits of shape (N, {num_classes})"
            )
        if isinstance(out_dims[1], int) and out_dims[1] > 0 and out_dims[1] != num_classes:
            raise ExportError(
                f"the model outputs {out_dims[1]} classes, the data has {num_classes}; pass the data it was trained on"
            )
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or opset < MIN_OPSET:
        raise ExportError(
            f"the model uses opset {opset}; wrapping needs opset >= {MIN_OPSET}: convert it with onnx.version_converter"
        )
    params = sum(int(np.prod(t.dims)) for t in graph.initializer)
    return SourceGraph(
        input_name=x.name,
        input_shape=dims or (),
        output_name=output,
        opset=opset,
        params=params,
        fixed_batch=dims is not None and dims[0] == 1,
    )


def _head_model(onnx: Any, *, batch: int | str | None, num_classes: int, opset: int, ir_version: int) -> Any:
    """``wrap/source_logits -> logits, probs, entropy`` as an ONNX model of the user's opset and IR version."""
    h = onnx.helper
    f = onnx.TensorProto.FLOAT
    b = batch if isinstance(batch, str) else None  # a fixed output batch was refused earlier; keep it symbolic
    nodes = [
        h.make_node("Identity", [_HEAD_INPUT], ["logits"], name="wrap/logits"),
        # Rank-2 logits: axis 1 is the class axis under every opset's LogSoftmax semantics.
        h.make_node("LogSoftmax", ["logits"], ["wrap/log_probs"], name="wrap/log_softmax", axis=1),
        h.make_node("Exp", ["wrap/log_probs"], ["probs"], name="wrap/probs"),
        h.make_node("Mul", ["probs", "wrap/log_probs"], ["wrap/p_log_p"], name="wrap/p_log_p"),
    ]
    initializers = []
    if opset >= 13:  # ReduceSum takes its axes as an input from opset 13 on
        initializers.append(h.make_tensor("wrap/axes", onnx.TensorProto.INT64, [1], [1]))
        nodes.append(h.make_node("ReduceSum", ["wrap/p_log_p", "wrap/axes"], ["wrap/neg_entropy"], name="wrap/sum", keepdims=0))
    else:
        nodes.append(h.make_node("ReduceSum", ["wrap/p_log_p"], ["wrap/neg_entropy"], name="wrap/sum", axes=[1], keepdims=0))
    nodes.append(h.make_node("Neg", ["wrap/neg_entropy"], ["entropy"], name="wrap/entropy"))
    graph = h.make_graph(
        nodes,
        "anytime_edge_head",
        [h.make_tensor_value_info(_HEAD_INPUT, f, [b, num_classes])],
        [
            h.make_tensor_value_info("logits", f, [b, num_classes]),
            h.make_tensor_value_info("probs", f, [b, num_classes]),
            h.make_tensor_value_info("entropy", f, [b]),
        ],
        initializer=initializers,
    )
    return h.make_model(graph, opset_imports=[h.make_opsetid("", opset)], ir_version=ir_version)


def add_head(proto: "onnx.ModelProto", source: SourceGraph, num_classes: int) -> "onnx.ModelProto":
    """The user's graph plus the bundle head: ``<input> -> logits, probs, entropy``.

    The user's nodes and initializers are copied unchanged; when one of their names collides with a head
    name (``logits``, ``probs``, ``entropy``, ``wrap/*``), every user name gets the prefix ``model/``
    (:func:`onnx.compose.add_prefix`), the input only if it collides itself. Other outputs of the user's
    graph are dropped from the outputs (the nodes stay). The IR version is lowered as far as the opsets
    allow (:mod:`exporters.irversion`).

    Args:
        proto: the user's model (not modified).
        source: what :func:`inspect_source` found in it.
        num_classes: columns of the logits.

    Returns:
        The wrapped model; its single input is :attr:`SourceGraph.input_name`, or ``model/<name>`` when
        that name collided.

    Raises:
        ConversionError: onnx.compose refused to join the graphs.
    """
    onnx = _onnx()
    user = onnx.ModelProto()
    user.CopyFrom(proto)
    output = source.output_name
    if source.fixed_batch:
        _free_batch(user.graph, source.input_name)
    if _names(user.graph) & _HEAD_NAMES:
        rename_input = source.input_name in _HEAD_NAMES
        user = onnx.compose.add_prefix(user, _PREFIX, rename_inputs=rename_input)
        output = _PREFIX + output
    out = next(o for o in user.graph.output if o.name == output)
    batch = (_dims(out) or (None,))[0]
    head = _head_model(onnx, batch=batch, num_classes=num_classes, opset=source.opset, ir_version=user.ir_version)
    try:
        wrapped = onnx.compose.merge_models(
            user,
            head,
            io_map=[(output, _HEAD_INPUT)],
            outputs=list(REQUIRED_OUTPUTS),
            producer_name="anytime-edge wrap",
            name=user.graph.name or "wrapped",
        )
    except Exception as exc:  # onnx.compose raises ValueError and checker errors
        first = error_line(exc)
        raise ConversionError(f"cannot add the probs/entropy head to the model: {first}") from exc
    lower_ir_version(wrapped)
    merged: ModelProto = wrapped
    return merged


def _free_batch(graph: Any, input_name: str) -> None:
    """Declare a batch-1 graph's batch dimension symbolic: the input's and outputs' first dimension, and
    drop the intermediate shape annotations (ONNX Runtime infers them again). Nodes and weights stay; a
    graph whose operators bake in the batch (a Reshape to [1, -1]) then fails the gates and is refused."""
    for value in (*[i for i in graph.input if i.name == input_name], *graph.output):
        shape = value.type.tensor_type.shape
        if value.type.tensor_type.HasField("shape") and len(shape.dim) and shape.dim[0].dim_value == 1:
            shape.dim[0].dim_param = _BATCH  # clears dim_value (a oneof)
    del graph.value_info[:]


def _batches(n: int, batch_size: int) -> list[slice]:
    # A first batch of one row, then larger ones: proves the batch dimension is not fixed.
    cuts = [0, 1] + list(range(1 + batch_size, n, batch_size)) + [n]
    return [slice(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


def reference_outputs(logits: np.ndarray) -> dict[str, np.ndarray]:
    """What the head must compute, in float64 numpy: ``logits``, ``probs`` (softmax), ``entropy`` (nats).

    Args:
        logits: (N, C) reference logits.

    Returns:
        ``{"logits": (N, C), "probs": (N, C), "entropy": (N,)}``, from log-softmax like the head.
    """
    z = np.asarray(logits, dtype=np.float64)
    shifted = z - z.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    probs = np.exp(log_probs)
    return {"logits": z, "probs": probs, "entropy": -(probs * log_probs).sum(axis=1)}


def _run_source(blob: bytes, input_name: str, output: str, x: np.ndarray, batch_size: int, num_classes: int) -> np.ndarray:
    """The source model's logits on ``x`` in ONNX Runtime (the reference for a user's .onnx); ``batch_size``
    1 runs it row by row (a model with a fixed batch of 1)."""
    try:
        session = create_session(blob, name="source model")
    except EdgeRuntimeError as exc:
        raise ConversionError(f"ONNX Runtime cannot load the model: {exc}") from exc
    parts = []
    for rows in _batches(x.shape[0], batch_size):
        try:
            (values,) = session.run([output], {input_name: x[rows]})
        except Exception as exc:  # ORT raises its own types
            raise ConversionError(
                f"the model fails in ONNX Runtime on a batch of {rows.stop - rows.start} held-out inputs: "
                f"{error_line(exc)}; check --data and --preprocess"
            ) from exc
        parts.append(np.asarray(values))
    logits = np.concatenate(parts)
    if logits.ndim != 2 or logits.shape[1] != num_classes:
        raise ExportError(
            f"the model's output '{output}' has shape {list(logits.shape)} on held-out inputs; "
            f"a classifier for this data outputs logits (N, {num_classes})"
        )
    return logits


def wrap_onnx(
    model: "bytes | str | os.PathLike[str] | onnx.ModelProto",
    task: TaskSpec,
    out_dir: str | os.PathLike[str],
    *,
    heldout: tuple[ArrayLike, ArrayLike],
    output: str | None = None,
    reference_logits: ArrayLike | None = None,
    reference: str = "source ONNX in ONNX Runtime",
    name: str = "model",
    member_name: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    info: Mapping[str, Any] | None = None,
    tolerance: Tolerance = Tolerance(),
    batch_size: int = 512,
    overwrite: bool = True,
) -> WrapResult:
    """Add the bundle head to a user's ONNX classifier and write a gated one-member bundle.

    Args:
        model: the classifier (path, bytes or ModelProto): one float32 input ``task.model_input_shape``
            (the client's input after ``task.preprocess``), logits ``(N, task.num_classes)``.
        task: labels, input shape and preprocess of the bundle. The input name is taken from the model's
            graph (the returned manifest holds it); ``task.preprocess`` maps what a client sends to what
            the model takes (identity for a model that takes raw values).
        out_dir: the bundle directory to (re)place.
        heldout: ``(x, y)``: inputs as the model takes them (after ``task.preprocess``), integer labels.
        output: the graph output holding the logits (default: see :func:`inspect_source`).
        reference_logits: (N, C) logits of the model the file came from on ``heldout[0]`` (e.g. the torch
            program of a ``.pt2``); None runs the source ONNX in ONNX Runtime.
        reference: what ``reference_logits`` came from, for reports.
        name: the bundle's name.
        member_name: the member's name; default ``name``.
        metadata: provenance stored in the manifest.
        info: provenance stored in the member's ``info``.
        tolerance: parity and accuracy tolerances (:class:`exporters.verify.Tolerance`).
        batch_size: held-out rows per ONNX Runtime call.
        overwrite: replace an existing bundle at ``out_dir`` (only after every gate passed).

    Returns:
        The bundle path, the manifest written, and what the gates measured.

    Raises:
        ExportError: onnx missing, the model or held-out data refused (see :func:`inspect_source`).
        ConversionError: the head cannot be joined, or the model fails in ONNX Runtime.
        VerificationError: a gate failed; nothing was written.
    """
    onnx = _onnx()
    if batch_size < 1:
        raise ExportError("batch_size must be >= 1")
    member = member_name or name
    if not member:
        raise ExportError("the member needs a non-empty name")
    x = np.ascontiguousarray(np.asarray(heldout[0], dtype=np.float32))
    y = np.asarray(heldout[1]).reshape(-1)
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise ExportError(f"held-out labels have dtype {y.dtype}; pass integer class ids")
    y = y.astype(np.int64)
    check_heldout(task, x, y)

    proto = load_onnx(model)
    source = inspect_source(proto, input_shape=tuple(task.model_input_shape[1:]), num_classes=task.num_classes, output=output)
    if reference_logits is None:
        ref_logits = _run_source(
            proto.SerializeToString(),
            source.input_name,
            source.output_name,
            x,
            1 if source.fixed_batch else batch_size,
            task.num_classes,
        )
    else:
        ref_logits = np.asarray(reference_logits, dtype=np.float32)
        if ref_logits.shape != (x.shape[0], task.num_classes):
            raise ExportError(
                f"reference logits have shape {list(ref_logits.shape)}, expected [{x.shape[0]}, {task.num_classes}] "
                "(one row per held-out input)"
            )
    if not np.all(np.isfinite(ref_logits)):
        raise VerificationError("the model's logits hold NaN/inf on held-out inputs; check --data and --preprocess")

    wrapped = add_head(proto, source, task.num_classes)
    input_name = wrapped.graph.input[0].name
    blob = wrapped.SerializeToString()
    # Gate 1: checker and the member contract, before anything runs the graph.
    check_graph(blob, name=member, inputs=[input_name], outputs=list(REQUIRED_OUTPUTS))
    try:
        session = create_session(blob, name=member)
    except EdgeRuntimeError as exc:
        raise VerificationError(f"ONNX Runtime refused the wrapped model: {exc}") from exc
    got: dict[str, list[np.ndarray]] = {o: [] for o in REQUIRED_OUTPUTS}
    for rows in _batches(x.shape[0], batch_size):
        try:
            values = session.run(list(REQUIRED_OUTPUTS), {input_name: x[rows]})
        except Exception as exc:  # ORT raises its own types
            raise VerificationError(
                f"the wrapped model fails in ONNX Runtime on a batch of {rows.stop - rows.start}: {error_line(exc)}; "
                f"re-export the model with a dynamic batch dimension ({_DYNAMIC_HINT})"
            ) from exc
        for o, v in zip(REQUIRED_OUTPUTS, values):
            got[o].append(np.asarray(v))
    # Gate 2: the head against numpy, the logits against the reference.
    try:
        actual = {o: np.concatenate(v) for o, v in got.items()}
        diffs = check_parity(reference_outputs(ref_logits), actual, name=member, tolerance=tolerance)
    except (ValueError, VerificationError) as exc:
        if not source.fixed_batch:
            raise
        raise VerificationError(
            f"the model was exported with a fixed batch of 1 and its graph depends on it ({error_line(exc)}); "
            f"re-export it with a dynamic batch dimension ({_DYNAMIC_HINT})"
        ) from exc
    gates = GateReport(
        member=member,
        max_abs_diff=diffs,
        torch_accuracy=accuracy(ref_logits, y),
        onnx_accuracy=accuracy(actual["logits"], y),
        num_heldout=int(y.shape[0]),
    )
    # Gate 3: accuracy.
    check_accuracy(gates.torch_accuracy, gates.onnx_accuracy, name=member, tolerance=tolerance)

    task = replace(task, input=replace(task.input, name=input_name))
    size, size_zip = len(blob), len(zlib.compress(blob, 6))
    spec = MemberSpec(
        name=member,
        file=f"{member}.onnx",
        sha256="",  # write_bundle sets it from the bytes it writes
        outputs=tuple(REQUIRED_OUTPUTS),
        params=source.params,
        info={
            **dict(info or {}),
            "method": "wrapped",
            "source_output": source.output_name,
            **({"batch_made_dynamic": True} if source.fixed_batch else {}),
            "bytes": size,
            "bytes_zip": size_zip,
            "gates": {**gates.to_dict(), "reference": reference},
        },
    )
    provenance = {
        "exporter": {
            "wrap": "onnx.compose",
            "onnx": onnx.__version__,
            "source_opset": source.opset,
            "tolerance": {"rtol": tolerance.rtol, "atol": tolerance.atol, "accuracy_gap": tolerance.accuracy_gap},
        }
    }
    manifest = Manifest(name=name, task=task, members=(spec,), metadata={**provenance, **dict(metadata or {})})
    path = write_bundle(out_dir, manifest, [blob], overwrite=overwrite)
    return WrapResult(
        path=path,
        manifest=load_bundle(path).manifest,
        gates=gates,
        reference=reference,
        bytes=size,
        bytes_zip=size_zip,
        params=source.params,
    )


def chance_accuracy(labels: ArrayLike, num_classes: int) -> float:
    """What guessing scores on ``labels``: the larger of ``1 / num_classes`` and the most frequent label's share."""
    y = np.asarray(labels).reshape(-1).astype(np.int64)
    return max(1.0 / num_classes, float(np.bincount(y).max()) / y.size if y.size else 0.0)


def near_chance(accuracy_value: float, labels: ArrayLike, num_classes: int) -> bool:
    """True when an accuracy lies within a tenth of the way from guessing (:func:`chance_accuracy`) to perfect.

    A wrapped model there usually gets inputs scaled unlike its training (``--preprocess``), or other data.
    """
    chance = chance_accuracy(labels, num_classes)
    return math.isfinite(accuracy_value) and accuracy_value <= chance + 0.1 * (1.0 - chance)
