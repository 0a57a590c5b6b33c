"""Open Inference Protocol (KServe V2) messages: decode a request into one checked batch, encode the answer.

Nothing here knows about HTTP; the app hands in bytes and gets bytes back, and every problem with a request
is a :class:`RequestError` whose message says how to fix it.

Inputs. The model takes one tensor (the bundle's ``task.input``), with ``-1`` for the batch dimension. A
request sends it with any numeric V2 datatype (UINT8..64, INT8..64, FP16, FP32, FP64) as JSON data, nested
or flat, row-major; the values must fit the datatype they claim, must be finite, and are converted to
float32 for the members. Triton's binary tensor extension is read too (an input whose ``parameters`` name a
``binary_data_size``, after a JSON header of ``Inference-Header-Content-Length`` bytes), the way
``tritonclient`` sends inputs by default. Answers are always JSON (a client that asked for binary outputs
reads JSON ``data`` when no ``binary_data_size`` is given). A request may hold at most ``max_rows`` samples
(the server's ``max_batch_rows``); more are refused with 413 before the data is decoded.

Outputs, per sample (``outputs`` in the request selects and orders them; all by default):

* ``probabilities`` FP32 [N, C], ``label`` INT64 [N], ``label_name`` BYTES [N];
* ``members_used`` INT32 [N], ``entropy`` FP32 [N], ``exit_reason`` BYTES [N].

Classification extension (as Triton's, listed in ``GET /v2``): a requested ``probabilities`` output with
``"parameters": {"classification": K}`` (tritonclient's ``class_count``) is answered as BYTES [N, min(K, C)]
strings ``"<probability>:<index>:<label>"``, the K most probable classes first, the probability printed
as C's ``%f`` (Triton's ``std::to_string``), ties in class order. Other outputs refuse the parameter.

Parameters (the V2 ``parameters`` object has no standard keys; this project's carry the ``anytime_``
prefix). In a request: ``anytime_budget_ms`` (milliseconds > 0, or ``"off"``) and
``anytime_entropy_threshold`` (nats >= 0, ``"calibrated"`` or ``"off"``), spelled as everywhere else in the
runtime; unset, the server's defaults apply. Any other ``anytime_`` key is refused so that a typo cannot
silently fall back to the default. In a response:
``anytime_member_count``, ``anytime_members_used``, ``anytime_exit_member``, ``anytime_exit_reason``,
``anytime_entropy``, ``anytime_elapsed_ms``, ``anytime_infer_ms``, ``anytime_queue_ms``,
``anytime_batch_size``, and the ``anytime_budget_ms`` / ``anytime_entropy_threshold`` that applied. A V2
parameter holds one scalar, so for a batch of N > 1 they summarise the batch: members used and entropy are
the batch's maximum (the least finished sample), the exit reason is the samples' common reason or
``"mixed"``, and the exit member is the last member any sample needed; the per-sample values are the
``members_used``, ``entropy`` and ``exit_reason`` outputs.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from edge_runtime.bundle import Manifest, TensorSpec
from edge_runtime.server._errors import BodyTooLargeError, RequestError

__all__ = [
    "InferRequest",
    "MODEL_VERSION",
    "OUTPUT_NAMES",
    "PARAM_BUDGET_MS",
    "PARAM_CLASSIFICATION",
    "PARAM_ENTROPY_THRESHOLD",
    "PARAM_PREFIX",
    "PLATFORM",
    "PredictionLike",
    "check_declared_rows",
    "declared_budget_ms",
    "decode_infer_document",
    "decode_infer_request",
    "encode_infer_response",
    "model_metadata",
    "response_outputs",
    "summarize",
    "top_classes",
]

MODEL_VERSION = "1"  # a server serves one bundle, exposed as version "1"
PLATFORM = "anytime-edge"
PARAM_PREFIX = "anytime_"
PARAM_BUDGET_MS = "anytime_budget_ms"
PARAM_ENTROPY_THRESHOLD = "anytime_entropy_threshold"
PARAM_CLASSIFICATION = "classification"  # Triton's classification extension, on a requested output
_REQUEST_PARAMS = (PARAM_BUDGET_MS, PARAM_ENTROPY_THRESHOLD)

# V2 datatype -> numpy dtype, for the datatypes an input may be sent as. Little-endian, as the binary
# extension specifies.
_NUMERIC: Mapping[str, np.dtype[Any]] = {
    name: np.dtype(dtype).newbyteorder("<")
    for name, dtype in {
        "UINT8": np.uint8,
        "UINT16": np.uint16,
        "UINT32": np.uint32,
        "UINT64": np.uint64,
        "INT8": np.int8,
        "INT16": np.int16,
        "INT32": np.int32,
        "INT64": np.int64,
        "FP16": np.float16,
        "FP32": np.float32,
        "FP64": np.float64,
    }.items()
}
_NON_NUMERIC = ("BOOL", "BYTES", "BF16")  # valid V2 datatypes that cannot carry this model's input
_MANIFEST_DTYPES = {"float32": "FP32"}
_FLOAT32_MAX = float(np.finfo(np.float32).max)

# name -> (datatype, shape after the batch dimension; "C" = number of classes)
_OUTPUTS: Mapping[str, tuple[str, tuple[str, ...]]] = {
    "probabilities": ("FP32", ("C",)),
    "label": ("INT64", ()),
    "label_name": ("BYTES", ()),
    "members_used": ("INT32", ()),
    "entropy": ("FP32", ()),
    "exit_reason": ("BYTES", ()),
}
OUTPUT_NAMES: tuple[str, ...] = tuple(_OUTPUTS)


class PredictionLike(Protocol):
    """What the server reads from one of the runtime's per-sample predictions (read only: Prediction is frozen)."""

    @property
    def label(self) -> int: ...
    @property
    def label_name(self) -> str: ...
    @property
    def probabilities(self) -> np.ndarray: ...
    @property
    def members_used(self) -> int: ...
    @property
    def exit_reason(self) -> str: ...
    @property
    def entropy(self) -> float: ...
    @property
    def elapsed_ms(self) -> float: ...


@dataclass(frozen=True)
class InferRequest:
    """A decoded, checked V2 inference request."""

    x: np.ndarray  # float32, shape [N, *task.input.shape[1:]], finite
    id: str | None = None  # the request's id, echoed in the answer
    budget_ms: float | str | None = None  # anytime_budget_ms if the request set it: ms or "off"
    entropy_threshold: float | str | None = None  # anytime_entropy_threshold: nats, "calibrated" or "off"
    outputs: tuple[str, ...] = OUTPUT_NAMES  # the outputs to answer with, in order
    classification: int | None = None  # top-K classes asked of 'probabilities' (classification extension)


def model_metadata(name: str, manifest: Manifest) -> dict[str, Any]:
    """The V2 model metadata object: input and output tensors with -1 for the batch dimension."""
    spec = manifest.task.input
    classes = manifest.task.num_classes
    outputs = [
        {"name": out, "datatype": datatype, "shape": [-1, *(classes if d == "C" else int(d) for d in dims)]}
        for out, (datatype, dims) in _OUTPUTS.items()
    ]
    return {
        "name": name,
        "versions": [MODEL_VERSION],
        "platform": PLATFORM,
        "inputs": [{"name": spec.name, "datatype": _MANIFEST_DTYPES[spec.dtype], "shape": list(spec.shape)}],
        "outputs": outputs,
    }


# What a request declares, found without parsing it (a few microseconds on a small body, ~1 ms on 4 MB):
# JSON escapes every quote inside a string, so '"key":' outside a string can only be a key.
_BUDGET_KEY = re.compile(rb'"anytime_budget_ms"\s*:\s*(-?[0-9][0-9.eE+-]*|"off")')
_SHAPE_KEY = re.compile(rb'"shape"\s*:\s*\[\s*([0-9]{1,18})\b')


_YIELDING_BYTES = 256 * 1024  # JSON bodies (and answers) larger than this are handled in slices (see below)
_ROWS_AT_ONCE = 4096  # list items converted (or encoded) per call


def _float(text: str) -> float:
    return float(text)


def _int(text: str) -> int:
    return int(text)


def declared_budget_ms(header: bytes) -> float | str | None:
    """The ``anytime_budget_ms`` a request body declares, read without parsing it; None if not found once.

    Only a hint for refusing early under overload (the request is decoded and checked in full if it is
    admitted): a key spelled twice, or a value that is not a positive number or ``"off"``, gives None.
    """
    found = _BUDGET_KEY.findall(header)
    if len(found) != 1:
        return None
    if found[0] == b'"off"':
        return "off"
    try:
        value = float(found[0])
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def check_declared_rows(header: bytes, spec: TensorSpec, max_rows: int) -> None:
    """Refuse a batch larger than ``max_rows`` from the ``shape`` it declares, before its data is parsed.

    Parsing a 4 MB body takes the event loop's interpreter lock for a quarter second on a 2-core box; a
    request that will be refused anyway should not cost that. Applies only when the body has exactly one
    ``"shape"`` key (the one input); otherwise the full decode checks the batch.

    Raises:
        BodyTooLargeError: the declared batch exceeds ``max_rows`` (413).
    """
    found = _SHAPE_KEY.findall(header)
    if len(found) == 1 and header.count(b'"shape"') == 1 and int(found[0]) > max_rows:
        raise BodyTooLargeError(
            f"input '{spec.name}' has {int(found[0])} samples; this server takes at most {max_rows} per request: "
            "split the batch, or raise --max-batch"
        )


def decode_infer_request(
    body: bytes, spec: TensorSpec, json_length: int | None = None, max_rows: int | None = None
) -> InferRequest:
    """Parse and check a V2 inference request against the model's input.

    Args:
        body: the HTTP request body.
        spec: the model's input tensor (name, shape with -1 for the batch, dtype).
        json_length: the ``Inference-Header-Content-Length`` header, when the body carries binary tensors
            after a JSON header of that many bytes; None for a plain JSON body.
        max_rows: the most samples a request may hold (checked from its shape, before its data); None = any.

    Returns:
        The request with its input as a finite float32 batch.

    Raises:
        RequestError: the body is not JSON, or a name, shape, datatype, value or parameter is wrong.
        BodyTooLargeError: the batch has more than ``max_rows`` samples.
    """
    if json_length is not None and not 0 < json_length <= len(body):
        raise RequestError(
            f"Inference-Header-Content-Length {json_length} does not fit a body of {len(body)} bytes; "
            "set it to the length of the JSON header"
        )
    header = body if json_length is None else body[:json_length]
    binary = b"" if json_length is None else body[json_length:]
    try:
        # A large body is parsed with Python-level number hooks: ~25% slower, but the interpreter lock can
        # change hands between numbers, so the event loop is not stopped for the whole parse (~90 ms for
        # 2 MB of floats on a 2-core box; the longest pause of another thread fell from ~90 to ~35 ms).
        doc = json.loads(header, parse_float=_float, parse_int=_int) if len(header) > _YIELDING_BYTES else json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(f"the body is not valid JSON ({exc}); send a V2 inference request object") from None
    except RecursionError:
        raise RequestError("the body nests JSON too deeply; send data as a flat list with its shape") from None
    return decode_infer_document(doc, spec, binary, json_length is not None, max_rows)


def decode_infer_document(
    doc: Any, spec: TensorSpec, binary: bytes = b"", binary_allowed: bool = False, max_rows: int | None = None
) -> InferRequest:
    """Check a parsed V2 inference request (the JSON object) against the model's input.

    The part of :func:`decode_infer_request` after JSON parsing, for a transport that parsed the body
    itself (the KServe adapter, :mod:`edge_runtime.kserve`).

    Args:
        doc: the request object: ``id``, ``parameters``, ``inputs`` (data as lists), ``outputs``.
        spec: the model's input tensor (name, shape with -1 for the batch, dtype).
        binary: the bytes after the JSON header, for an input whose parameters name a ``binary_data_size``.
        binary_allowed: whether an input may name a ``binary_data_size`` (and read ``binary``).
        max_rows: the most samples a request may hold; None = any.

    Returns:
        The request with its input as a finite float32 batch.

    Raises:
        RequestError: a name, shape, datatype, value or parameter is wrong.
        BodyTooLargeError: the batch has more than ``max_rows`` samples.
    """
    if not isinstance(doc, dict):
        raise RequestError("the body must be a JSON object with an 'inputs' list")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise RequestError("'id' must be a string")
    budget_ms, threshold = _decode_parameters(doc.get("parameters"))
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RequestError(f"'inputs' must be a non-empty list; this model takes one input '{spec.name}'")
    if len(inputs) != 1:
        names = [i.get("name") if isinstance(i, dict) else i for i in inputs]
        raise RequestError(f"got {len(inputs)} inputs {names}; this model takes exactly one, '{spec.name}'")
    outputs, classification = _decode_outputs(doc.get("outputs"))
    x = _decode_tensor(inputs[0], spec, binary, binary_allowed, max_rows)
    return InferRequest(
        x=x, id=request_id, budget_ms=budget_ms, entropy_threshold=threshold, outputs=outputs, classification=classification
    )


def _decode_parameters(params: Any) -> tuple[float | str | None, float | str | None]:
    if params is None:
        return None, None
    if not isinstance(params, dict):
        raise RequestError("'parameters' must be a JSON object")
    unknown = sorted(k for k in params if isinstance(k, str) and k.startswith(PARAM_PREFIX) and k not in _REQUEST_PARAMS)
    if unknown:
        raise RequestError(f"unknown parameter(s) {unknown}; this server reads {list(_REQUEST_PARAMS)}")
    budget = _control(params, PARAM_BUDGET_MS, 'milliseconds > 0 or "off"', lambda v: v > 0, ("off",))
    threshold = _control(
        params, PARAM_ENTROPY_THRESHOLD, 'nats >= 0, "calibrated" or "off"', lambda v: v >= 0, ("off", "calibrated")
    )
    return budget, threshold


def _control(
    params: Mapping[str, Any], key: str, what: str, ok: Callable[[float], bool], words: tuple[str, ...]
) -> float | str | None:
    if key not in params:
        return None
    value = params[key]
    if isinstance(value, str) and value in words:
        return value
    # bool is an int in Python; a JSON true is not a budget.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        raise RequestError(f"parameter '{key}' must be {what}, not {value!r}")
    return float(value)


def _decode_outputs(outputs: Any) -> tuple[tuple[str, ...], int | None]:
    if outputs is None:
        return OUTPUT_NAMES, None
    if not isinstance(outputs, list):
        raise RequestError("'outputs' must be a list of {\"name\": ...} objects")
    names: list[str] = []
    classification = None
    for out in outputs:
        name = out.get("name") if isinstance(out, dict) else None
        if not isinstance(name, str) or name not in _OUTPUTS:
            raise RequestError(f"requested output {name!r} is not an output of this model; choose from {list(OUTPUT_NAMES)}")
        if name in names:
            raise RequestError(f"output '{name}' is requested twice; name each output once")
        names.append(name)
        params = out.get("parameters") or {}
        if not isinstance(params, dict):
            raise RequestError(f"the parameters of output '{name}' must be a JSON object")
        if PARAM_CLASSIFICATION in params:
            classification = _decode_classification(name, params[PARAM_CLASSIFICATION])
    return (tuple(names) if names else OUTPUT_NAMES), classification


def _decode_classification(name: str, count: Any) -> int:
    if name != "probabilities":
        raise RequestError(
            f"output parameter 'classification' applies to 'probabilities' only, not '{name}'; "
            "ask for the top classes of 'probabilities'"
        )
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise RequestError(f"output parameter 'classification' must be a number of classes >= 1, not {count!r}")
    return count


def _decode_tensor(tensor: Any, spec: TensorSpec, binary: bytes, binary_allowed: bool, max_rows: int | None) -> np.ndarray:
    if not isinstance(tensor, dict):
        raise RequestError("each input must be an object with name, shape, datatype and data")
    wanted = f"shape {list(spec.shape)}, datatype {_MANIFEST_DTYPES[spec.dtype]}"
    name = tensor.get("name")
    if name != spec.name:
        raise RequestError(f"input {name!r} is not an input of this model; it takes '{spec.name}' ({wanted})")
    shape = _decode_shape(tensor.get("shape"), spec)
    if max_rows is not None and shape[0] > max_rows:
        raise BodyTooLargeError(
            f"input '{spec.name}' has {shape[0]} samples; this server takes at most {max_rows} per request: "
            "split the batch, or raise --max-batch"
        )
    datatype = tensor.get("datatype")
    if datatype in _NON_NUMERIC:
        raise RequestError(f"input '{spec.name}' cannot be {datatype}; send numbers as FP32 (or FP16/FP64/INT*/UINT*)")
    if not isinstance(datatype, str) or datatype not in _NUMERIC:  # a list here is unhashable: not a 500
        raise RequestError(f"input '{spec.name}' has unknown datatype {datatype!r}; use a V2 datatype such as FP32")
    count = math.prod(shape)
    params = tensor.get("parameters") or {}
    if not isinstance(params, dict):
        raise RequestError(f"the parameters of input '{spec.name}' must be a JSON object")
    if "binary_data_size" in params:
        if not binary_allowed or "data" in tensor:
            raise RequestError(
                f"input '{spec.name}' names a binary_data_size; send the binary after a JSON header of "
                "Inference-Header-Content-Length bytes, and no 'data'"
            )
        values = _from_binary(binary, params["binary_data_size"], datatype, count, spec.name)
    else:
        if binary:
            raise RequestError(
                f"the body carries {len(binary)} bytes after the JSON header but no input names a binary_data_size"
            )
        values = _from_json(tensor.get("data"), datatype, shape, spec.name)
    return _to_float32(values.reshape(shape), datatype, spec.name)


def _decode_shape(shape: Any, spec: TensorSpec) -> tuple[int, ...]:
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise RequestError(
            f"input '{spec.name}' needs 'shape', a list of integers such as [1, {', '.join(map(str, spec.shape[1:]))}]"
        )
    expected = list(spec.shape)
    if len(shape) != len(expected) or shape[1:] != expected[1:]:
        hint = " (prepend the batch dimension)" if shape == expected[1:] else ""
        raise RequestError(
            f"input '{spec.name}' has shape {shape}, the model takes {expected}; send shape [N, "
            f"{', '.join(map(str, expected[1:]))}]{hint}"
        )
    if shape[0] < 1:
        raise RequestError(f"input '{spec.name}' has batch size {shape[0]}; send at least one sample")
    return tuple(shape)


def _from_json(data: Any, datatype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    if not isinstance(data, list):
        raise RequestError(f"input '{name}' needs 'data', a list of numbers (nested or flat, row-major)")
    try:
        # in slices of rows, for the same reason as the number hooks: one np.asarray of a big list holds the lock
        values = (
            np.asarray(data)
            if len(data) <= _ROWS_AT_ONCE
            else np.concatenate([np.asarray(data[i : i + _ROWS_AT_ONCE]) for i in range(0, len(data), _ROWS_AT_ONCE)])
        )
    except (ValueError, TypeError, OverflowError):
        raise RequestError(
            f"input '{name}' data is ragged or holds huge numbers; nest lists to match shape {list(shape)}"
        ) from None
    if values.dtype.kind not in "iuf":
        raise RequestError(f"input '{name}' data holds non-numbers ({values.dtype.kind!r} values); send numbers only")
    if values.shape != shape and not (values.ndim == 1 and values.size == math.prod(shape)):
        raise RequestError(
            f"input '{name}' data has {values.size} values in shape {list(values.shape)}, but shape says "
            f"{list(shape)} ({math.prod(shape)} values); send the data nested as the shape or flat"
        )
    if datatype.startswith(("INT", "UINT")):
        if values.dtype.kind == "f" and not (np.isfinite(values).all() and (values == np.round(values)).all()):
            raise RequestError(f"input '{name}' is {datatype} but holds non-integer values; send integers or use FP32")
        info = np.iinfo(_NUMERIC[datatype])
        if values.size and (values.min() < info.min or values.max() > info.max):
            raise RequestError(f"input '{name}' holds values outside {datatype}'s range [{info.min}, {info.max}]")
        return values
    finite = np.isfinite(values)
    if not finite.all():
        raise RequestError(
            f"input '{name}' holds NaN or infinity at flat index {int(np.argmin(finite.ravel()))}; send finite numbers"
        )
    limit = float(np.finfo(_NUMERIC[datatype]).max)
    if values.size and float(np.abs(values).max()) > limit:
        raise RequestError(f"input '{name}' holds values beyond {datatype}'s range (|x| <= {limit:.4g})")
    return values


def _from_binary(binary: bytes, size: Any, datatype: str, count: int, name: str) -> np.ndarray:
    dtype = _NUMERIC[datatype]
    if isinstance(size, bool) or not isinstance(size, int) or size != count * dtype.itemsize:
        raise RequestError(
            f"input '{name}' binary_data_size is {size!r}; {count} {datatype} values take {count * dtype.itemsize} bytes"
        )
    if len(binary) != size:
        raise RequestError(f"the body carries {len(binary)} binary bytes after the JSON header; input '{name}' says {size}")
    values = np.frombuffer(binary, dtype=dtype)
    if values.dtype.kind == "f":
        finite = np.isfinite(values)
        if not finite.all():
            raise RequestError(
                f"input '{name}' holds NaN or infinity at flat index {int(np.argmin(finite))}; send finite numbers"
            )
    return values


def _to_float32(values: np.ndarray, datatype: str, name: str) -> np.ndarray:
    if values.size and float(np.abs(values).max(initial=0)) > _FLOAT32_MAX:
        raise RequestError(f"input '{name}' holds values beyond float32's range (|x| <= {_FLOAT32_MAX:.4g}); rescale the input")
    return np.ascontiguousarray(values, dtype=np.float32)


def summarize(predictions: Sequence[PredictionLike], manifest: Manifest) -> dict[str, Any]:
    """The per-request ``anytime_*`` response parameters that describe the predictions (see module doc)."""
    reasons = {p.exit_reason for p in predictions}
    used = max(p.members_used for p in predictions)
    return {
        "anytime_member_count": manifest.num_members,
        "anytime_members_used": int(used),
        "anytime_exit_member": manifest.members[used - 1].name if 1 <= used <= manifest.num_members else "",
        "anytime_exit_reason": reasons.pop() if len(reasons) == 1 else "mixed",
        "anytime_entropy": float(max(p.entropy for p in predictions)),
        "anytime_infer_ms": float(max(p.elapsed_ms for p in predictions)),
        "anytime_batch_size": len(predictions),
    }


def encode_infer_response(
    model_name: str,
    request: InferRequest,
    request_id: str,
    predictions: Sequence[PredictionLike],
    parameters: Mapping[str, Any],
    labels: Sequence[str] = (),
) -> bytes:
    """The V2 inference response body (UTF-8 JSON) with the outputs ``request`` asked for.

    ``labels`` names the classes for the classification extension's strings (left out when empty).

    Raises:
        ValueError: a prediction holds NaN or infinity (a broken bundle); JSON cannot carry it.
    """
    outputs = response_outputs(request, predictions, labels)
    doc = {
        "model_name": model_name,
        "model_version": MODEL_VERSION,
        "id": request_id,
        "parameters": dict(parameters),
        "outputs": outputs,
    }
    n = len(predictions)
    if n * len(outputs) <= _ROWS_AT_ONCE:
        return json.dumps(doc, allow_nan=False, separators=(",", ":")).encode("utf-8")
    # A large answer is written output by output and slice by slice (the same bytes): one json.dumps of it
    # all would hold the interpreter lock, and so the event loop, for its whole length.
    head = {k: v for k, v in doc.items() if k != "outputs"}
    parts = [_dumps(head)[:-1], ',"outputs":[']
    for i, out in enumerate(outputs):
        meta = {k: v for k, v in out.items() if k != "data"}
        parts += ["," if i else "", _dumps(meta)[:-1], ',"data":[']
        data = out["data"]
        parts.append(",".join(_dumps(data[j : j + _ROWS_AT_ONCE])[1:-1] for j in range(0, len(data), _ROWS_AT_ONCE)))
        parts.append("]}")
    parts.append("]}")
    return "".join(parts).encode("utf-8")


def response_outputs(
    request: InferRequest, predictions: Sequence[PredictionLike], labels: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """The V2 output tensors ``request`` asked for, in its order: ``{"name", "datatype", "shape", "data"}``.

    ``data`` is a flat row-major list; ``labels`` names the classes in the classification extension's
    strings. Shared by the HTTP server's JSON answer and the KServe adapter's ``InferResponse``.
    """
    n = len(predictions)
    columns: dict[str, Any] = {
        "probabilities": lambda: np.stack([p.probabilities for p in predictions]).astype(np.float32),
        "label": lambda: [int(p.label) for p in predictions],
        "label_name": lambda: [str(p.label_name) for p in predictions],
        "members_used": lambda: [int(p.members_used) for p in predictions],
        "entropy": lambda: np.asarray([p.entropy for p in predictions], dtype=np.float32),
        "exit_reason": lambda: [str(p.exit_reason) for p in predictions],
    }
    outputs = []
    for name in request.outputs:
        data = columns[name]()
        datatype = _OUTPUTS[name][0]
        if name == "probabilities" and request.classification is not None:
            data, datatype = top_classes(data, request.classification, labels), "BYTES"
        if isinstance(data, np.ndarray):
            shape, data = list(data.shape), data.ravel().tolist()
        else:
            shape = [n]
        outputs.append({"name": name, "datatype": datatype, "shape": shape, "data": data})
    return outputs


def _dumps(value: Any) -> str:
    return json.dumps(value, allow_nan=False, separators=(",", ":"))


def top_classes(probs: np.ndarray, k: int, labels: Sequence[str] = ()) -> np.ndarray:
    """Triton's classification strings: the ``k`` highest values of each row, highest first.

    Args:
        probs: [N, C] scores (here probabilities).
        k: classes per row; more than C gives C.
        labels: C class names; when empty the strings carry no label.

    Returns:
        [N, min(k, C)] object array of ``"<value>:<index>[:<label>]"``, the value printed as C's ``%f``
        (``std::to_string``, as Triton prints it); equal values keep class order.
    """
    k = min(k, probs.shape[1])
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    out = np.empty(order.shape, dtype=object)
    for i, row in enumerate(order):
        for j, c in enumerate(row.tolist()):
            text = "%f:%d" % (float(probs[i, c]), c)
            out[i, j] = f"{text}:{labels[c]}" if labels else text
    return out
