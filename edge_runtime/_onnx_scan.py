"""What the bundle loader needs to know about a member ONNX file, read without onnx or onnxruntime.

The runtime installs neither the ``onnx`` package nor its generated protobuf classes, yet two checks must
happen before ONNX Runtime sees a member:

* **self-contained members**: a tensor whose ``data_location`` is EXTERNAL (or that lists
  ``external_data`` entries) makes ONNX Runtime open a file named by the model, resolved against the
  *process's working directory* when the model is given as bytes; no checksum covers that file. The scan
  finds such tensors anywhere: graph initializers, sparse initializers, node attributes, subgraphs
  (``If``/``Loop``/``Scan`` bodies), functions and training-info graphs.
* **input shapes**: the shape of each graph input, so the manifest's input shape is checked against the
  graph before anything is allocated for it.

It walks the protobuf wire format directly (https://protobuf.dev/programming-guides/encoding/), using the
field numbers of ``onnx/onnx.proto`` (IR version 10). Large payloads (``raw_data``) are skipped by length,
never copied. Malformed bytes raise :class:`OnnxScanError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

__all__ = ["ModelFacts", "OnnxScanError", "scan_model"]

# onnx.proto field numbers (only those the scan follows).
_MODEL_GRAPH, _MODEL_TRAINING_INFO, _MODEL_FUNCTIONS = 7, 20, 25
_TRAINING_INIT, _TRAINING_ALGO = 1, 2
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_INPUT, _GRAPH_SPARSE_INITIALIZER = 1, 5, 11, 15
_NODE_ATTRIBUTE = 5
_FUNCTION_NODE, _FUNCTION_ATTRIBUTE_PROTO = 7, 11
_ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS, _ATTR_SPARSE, _ATTR_SPARSES = 5, 6, 10, 11, 22, 23
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 8, 13, 14
_VALUE_NAME, _VALUE_TYPE = 1, 2
_TYPE_TENSOR = 1
_TENSOR_TYPE_ELEM, _TENSOR_TYPE_SHAPE = 1, 2
_SHAPE_DIM = 1
_DIM_VALUE, _DIM_PARAM = 1, 2
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
_MAX_DEPTH = 64  # nested subgraphs; protobuf's own parsers stop at 100


class OnnxScanError(ValueError):
    """The bytes are not a well-formed ONNX ModelProto."""


Dim = int | str | None  # a fixed size, a symbolic name, or unknown


@dataclass
class ModelFacts:
    """What :func:`scan_model` found."""

    inputs: dict[str, tuple[int, tuple[Dim, ...] | None]] = field(default_factory=dict)  # main graph: name -> (elem type, dims)
    external: list[str] = field(default_factory=list)  # names of tensors whose data lives in another file


def scan_model(data: bytes) -> ModelFacts:
    """Scan ONNX ``data`` for external-data tensors and the main graph's input shapes.

    Raises:
        OnnxScanError: the bytes are not a well-formed protobuf message.
    """
    facts = ModelFacts()
    view = memoryview(data)
    graphs = 0
    for number, wire, start, end, _ in _fields(view, 0, len(view)):
        if wire != 2:
            continue
        if number == _MODEL_GRAPH:
            graphs += 1
            _graph(view, start, end, facts, 1, main=True)
        elif number == _MODEL_FUNCTIONS:
            _function(view, start, end, facts, 1)
        elif number == _MODEL_TRAINING_INFO:
            for n, w, s, e, _ in _fields(view, start, end):
                if w == 2 and n in (_TRAINING_INIT, _TRAINING_ALGO):
                    _graph(view, s, e, facts, 2, main=False)
    if graphs == 0:
        raise OnnxScanError("it holds no graph")
    return facts


def _fields(buf: memoryview, pos: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """Yield (field number, wire type, start, end, varint value) for each field in buf[pos:end]."""
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise OnnxScanError("a field has number 0")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield number, wire, pos, pos, value
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if length > end - pos:
                raise OnnxScanError("a field runs past the end of its message (truncated file?)")
            yield number, wire, pos, pos + length, length
            pos += length
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if size > end - pos:
                raise OnnxScanError("a fixed-size field runs past the end of its message")
            yield number, wire, pos, pos + size, 0
            pos += size
        else:  # groups (3, 4) are not used by onnx.proto; 6 and 7 do not exist
            raise OnnxScanError(f"unexpected wire type {wire}")


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise OnnxScanError("a varint is truncated or too long")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _graph(buf: memoryview, start: int, end: int, facts: ModelFacts, depth: int, main: bool) -> None:
    if depth > _MAX_DEPTH:
        raise OnnxScanError(f"subgraphs nest deeper than {_MAX_DEPTH} levels")
    for number, wire, s, e, _ in _fields(buf, start, end):
        if wire != 2:
            continue
        if number == _GRAPH_NODE:
            _node(buf, s, e, facts, depth, attribute_field=_NODE_ATTRIBUTE)
        elif number == _GRAPH_INITIALIZER:
            _tensor(buf, s, e, facts)
        elif number == _GRAPH_SPARSE_INITIALIZER:
            _sparse(buf, s, e, facts)
        elif number == _GRAPH_INPUT and main:
            name, spec = _value_info(buf, s, e)
            facts.inputs[name] = spec


def _function(buf: memoryview, start: int, end: int, facts: ModelFacts, depth: int) -> None:
    for number, wire, s, e, _ in _fields(buf, start, end):
        if wire != 2:
            continue
        if number == _FUNCTION_NODE:
            _node(buf, s, e, facts, depth, attribute_field=_NODE_ATTRIBUTE)
        elif number == _FUNCTION_ATTRIBUTE_PROTO:
            _attribute(buf, s, e, facts, depth)


def _node(buf: memoryview, start: int, end: int, facts: ModelFacts, depth: int, attribute_field: int) -> None:
    for number, wire, s, e, _ in _fields(buf, start, end):
        if wire == 2 and number == attribute_field:
            _attribute(buf, s, e, facts, depth)


def _attribute(buf: memoryview, start: int, end: int, facts: ModelFacts, depth: int) -> None:
    for number, wire, s, e, _ in _fields(buf, start, end):
        if wire != 2:
            continue
        if number in (_ATTR_T, _ATTR_TENSORS):
            _tensor(buf, s, e, facts)
        elif number in (_ATTR_G, _ATTR_GRAPHS):
            _graph(buf, s, e, facts, depth + 1, main=False)
        elif number in (_ATTR_SPARSE, _ATTR_SPARSES):
            _sparse(buf, s, e, facts)


def _sparse(buf: memoryview, start: int, end: int, facts: ModelFacts) -> None:
    for number, wire, s, e, _ in _fields(buf, start, end):
        if wire == 2 and number in (_SPARSE_VALUES, _SPARSE_INDICES):
            _tensor(buf, s, e, facts)


def _tensor(buf: memoryview, start: int, end: int, facts: ModelFacts) -> None:
    name = ""
    external = False
    for number, wire, s, e, value in _fields(buf, start, end):
        if number == _TENSOR_NAME and wire == 2:
            name = _text(buf, s, e)
        elif number == _TENSOR_EXTERNAL_DATA and wire == 2:
            external = True
        elif number == _TENSOR_DATA_LOCATION and wire == 0 and value == _EXTERNAL:
            external = True
    if external:
        facts.external.append(name or "<unnamed>")


def _value_info(buf: memoryview, start: int, end: int) -> tuple[str, tuple[int, tuple[Dim, ...] | None]]:
    name = ""
    elem, dims = 0, None
    for number, wire, s, e, _ in _fields(buf, start, end):
        if number == _VALUE_NAME and wire == 2:
            name = _text(buf, s, e)
        elif number == _VALUE_TYPE and wire == 2:
            for n, w, s2, e2, _ in _fields(buf, s, e):
                if n == _TYPE_TENSOR and w == 2:
                    elem, dims = _tensor_type(buf, s2, e2)
    return name, (elem, dims)


def _tensor_type(buf: memoryview, start: int, end: int) -> tuple[int, tuple[Dim, ...] | None]:
    elem, dims = 0, None
    for number, wire, s, e, value in _fields(buf, start, end):
        if number == _TENSOR_TYPE_ELEM and wire == 0:
            elem = value
        elif number == _TENSOR_TYPE_SHAPE and wire == 2:
            found: list[Dim] = []
            for n, w, s2, e2, _ in _fields(buf, s, e):
                if n == _SHAPE_DIM and w == 2:
                    found.append(_dim(buf, s2, e2))
            dims = tuple(found)
    return elem, dims


def _dim(buf: memoryview, start: int, end: int) -> Dim:
    dim: Dim = None
    for number, wire, s, e, value in _fields(buf, start, end):
        if number == _DIM_VALUE and wire == 0:
            dim = value - (1 << 64) if value >= 1 << 63 else value
        elif number == _DIM_PARAM and wire == 2:
            dim = _text(buf, s, e)
    return dim


def _text(buf: memoryview, start: int, end: int) -> str:
    return bytes(buf[start:end]).decode("utf-8", errors="replace")
