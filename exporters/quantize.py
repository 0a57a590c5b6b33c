"""INT8 bundles: quantize every member of a float bundle with ONNX Runtime's tools, gated like any export.

:func:`quantize_bundle` takes any bundle — one candidate, a B-DISTIL ensemble (members with
``prev_logits`` and connection inputs), a ``combine="replace"`` cascade — and writes the same bundle with
INT8 members:

* **static** (default): ``onnxruntime.quantization.quantize_static`` in QDQ format (QuantizeLinear /
  DequantizeLinear pairs around each quantized operator, fused by ONNX Runtime into integer kernels at
  session creation). Activation ranges are calibrated on a few hundred samples run through the bundle's
  *own* preprocess (``task.preprocess``: what the runtime applies to a client's raw values), member by
  member: member k is calibrated on the inputs the float bundle feeds it (``x``, the previous member's
  ``logits`` as ``prev_logits``, and its connection tensors). Calibration: ``minmax``, ``percentile``
  (99.999th) or ``entropy`` (KL divergence of the histogram), onnxruntime's ``CalibrationMethod``. Note:
  ``quantize_static`` (onnxruntime 1.32) runs its entropy calibrator with 128 histogram bins and 128
  quantized bins, which leaves one candidate threshold, the full range: ``entropy`` then gives exactly the
  ``minmax`` ranges (measured: identical scales on all 45 tensors of the cluttered-MNIST teacher).
* **dynamic**: ``quantize_dynamic``: weights INT8, activation ranges computed per call (ONNX Runtime's
  integer ops). It needs no calibration data, but only ``MatMul`` and ``Conv`` have dynamic kernels: the
  ``Gemm`` layers torch's exporter writes for ``nn.Linear`` stay float.

The head stays float32 (``float_head``): the node that produces ``logits`` (a member's last layer, or the
``Add`` that sums ``prev_logits``), every node that consumes ``prev_logits``, and every node downstream of
``logits`` (softmax, log-softmax, entropy). Quantizing the head to 8 bits would round the logits to 256
levels over their range and the ``p * log p`` products with them: probabilities and entropy (hence the
calibrated exit) move, for no speed (the head is a few hundred operations of a 10-class output).

Activations default to uint8 with int8 weights (ORT's U8S8): on this project's CPU (AVX-512 VNNI) the
cluttered-MNIST ResNet teacher ran 3.7x faster than float at batch 1 where int8 activations (S8S8) gained
1.3x (``benchmarks/results/quantization_cluttered-mnist*.json``). On x86 CPUs
without VNNI, U8S8 kernels can saturate (ORT's quantization docs); quantize on the target device (the
gates run here) or pass ``activation_type="int8"``.

Gates, as for every export (:mod:`exporters.verify`), before anything is written:

1. ``onnx.checker`` (full check) on each quantized member and its I/O names unchanged;
2. the INT8 bundle is run by the runtime (:class:`edge_runtime.AnytimeRuntime`, in memory) and by the
   float bundle on the held-out data; per prefix (the anytime answer after each member) are reported:
   top-1 agreement, max ``|probs_int8 - probs_float|``, both accuracies;
3. every prefix's INT8 accuracy is at most ``max_loss`` points below the float prefix's (an anytime bundle
   answers with every prefix, so every prefix is gated).

A failure raises :class:`~exporters.errors.VerificationError` (one line) and writes nothing; a pass writes
the bundle atomically (:func:`exporters.bundle.write_bundle`: staged, loaded back, renamed). The manifest
keeps the float bundle's task, members' names, files and connections, records the settings and the gate
figures in ``quantization`` (:class:`edge_runtime.bundle.Quantization`) and in each member's
``info["int8"]``, and drops the float bundle's calibration and profiles (INT8 members have their own
latencies and entropies: run ``calibrate`` and ``profile`` on the result).

Needs onnx and onnxruntime only (``onnxruntime.quantization`` is part of the onnxruntime wheel): the
runtime install plus the ``wrap`` extra runs it; no torch.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import tempfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from edge_runtime._quantization import CALIBRATION_METHODS, INT8_TYPES, QUANTIZATION_METHODS
from edge_runtime.bundle import Bundle, Manifest, PathLike, Quantization, load_bundle
from edge_runtime.errors import EdgeRuntimeError, error_line
from edge_runtime.extras import install_hint
from edge_runtime.session import SessionConfig, create_session
from exporters.bundle import write_bundle
from exporters.errors import ConversionError, ExportError, VerificationError
from exporters.verify import check_graph

__all__ = ["PrefixGate", "QuantizeConfig", "QuantizeResult", "float_head_nodes", "member_feeds", "quantize_bundle"]

_PREV = "prev_logits"


@dataclass(frozen=True)
class QuantizeConfig:
    """How to quantize a bundle's members and how much accuracy the gate allows to lose."""

    method: str = "static"  # "static" (calibrated QDQ) or "dynamic" (weights only; ranges per call)
    per_channel: bool = False  # one weight scale per output channel (often more accurate for convolutions)
    calibration: str = "minmax"  # static: "minmax", "percentile" (99.999th) or "entropy"
    activation_type: str = "uint8"  # static: "uint8" (U8S8, fastest with VNNI) or "int8" (S8S8; see module doc)
    weight_type: str = "int8"  # "int8" or "uint8"
    calibration_samples: int = 256  # rows of the calibration data used (the first N; fewer if fewer given)
    max_loss: float = 0.5  # points of held-out accuracy any prefix may lose against the float bundle
    batch_size: int = 64  # rows per ONNX Runtime call while calibrating and gating
    float_head: bool = True  # keep the logits' producer, the prev_logits sum and softmax/entropy in float

    def __post_init__(self) -> None:
        if self.method not in QUANTIZATION_METHODS:
            raise ExportError(f"quantization method '{self.method}' is unknown; use one of {list(QUANTIZATION_METHODS)}")
        if self.calibration not in CALIBRATION_METHODS:
            raise ExportError(f"calibration '{self.calibration}' is unknown; use one of {list(CALIBRATION_METHODS)}")
        for name in ("activation_type", "weight_type"):
            if getattr(self, name) not in INT8_TYPES:
                raise ExportError(f"{name} '{getattr(self, name)}' is unknown; use one of {list(INT8_TYPES)}")
        if self.calibration_samples < 1:
            raise ExportError("calibration_samples must be >= 1 (a few hundred is usual)")
        if not math.isfinite(self.max_loss) or self.max_loss < 0:
            raise ExportError(f"max_loss {self.max_loss} must be a finite number of points >= 0")
        if self.batch_size < 1:
            raise ExportError("batch_size must be >= 1")


@dataclass(frozen=True)
class PrefixGate:
    """The float and INT8 bundles compared after member k (the anytime answer of members 1..k)."""

    member: str  # member k's name
    float_accuracy: float  # held-out accuracy of the float prefix (fraction)
    int8_accuracy: float  # ... of the INT8 prefix
    agreement: float  # fraction of held-out rows where both give the same top-1 label
    max_prob_diff: float  # max |probs_int8 - probs_float| over rows and classes

    @property
    def loss_points(self) -> float:
        """Accuracy points lost by INT8 (negative: gained)."""
        return 100 * (self.float_accuracy - self.int8_accuracy)

    def to_dict(self) -> dict[str, Any]:
        return {
            "member": self.member,
            "float_accuracy": self.float_accuracy,
            "int8_accuracy": self.int8_accuracy,
            "agreement": self.agreement,
            "max_prob_diff": self.max_prob_diff,
        }


@dataclass(frozen=True)
class QuantizeResult:
    """What :func:`quantize_bundle` wrote and measured."""

    path: Path  # the INT8 bundle directory
    manifest: Manifest  # as written (checksums set)
    prefixes: tuple[PrefixGate, ...]  # one per member, in order
    num_heldout: int  # held-out rows the gates ran on
    float_bytes: tuple[int, ...]  # each float member file's size
    int8_bytes: tuple[int, ...]  # each INT8 member file's size
    seconds: float  # wall time of quantization and gates

    def describe(self) -> list[str]:
        """Lines for a CLI: the settings, then one line per prefix."""
        q = self.manifest.quantization
        lines = [f"{self.manifest.name}: {q.describe() if q else 'int8'}; {self.seconds:.1f} s"]
        for gate, fb, qb in zip(self.prefixes, self.float_bytes, self.int8_bytes):
            lines.append(
                f"  {gate.member}: held-out accuracy float {100 * gate.float_accuracy:.2f}% / int8 {100 * gate.int8_accuracy:.2f}% "
                f"on {self.num_heldout} samples, top-1 agreement {100 * gate.agreement:.2f}%, max |dprob| {gate.max_prob_diff:.3g}, "
                f"{fb / 1024:.1f} -> {qb / 1024:.1f} KiB"
            )
        return lines


def _onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:
        raise ExportError(f"quantizing a bundle needs the onnx package: {install_hint('wrap')}") from exc
    return onnx


def _ort_quantization() -> Any:
    _onnx()  # onnxruntime.quantization imports onnx: name the extra before its own ImportError does
    try:
        from onnxruntime import quantization
    except ImportError as exc:
        raise ExportError(f"onnxruntime.quantization cannot be imported ({error_line(exc)}); {install_hint('wrap')}") from exc
    return quantization


def float_head_nodes(graph: Any) -> list[str]:
    """Names of the nodes :func:`quantize_bundle` keeps float: the producer of ``logits``, the consumers of
    ``prev_logits``, and everything downstream of ``logits`` (softmax, log-softmax, the entropy).

    Args:
        graph: an ``onnx.GraphProto`` whose nodes all have names.
    """
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    keep: dict[str, None] = {}  # ordered set
    for node in graph.node:
        if "logits" in node.output or _PREV in node.input:
            keep[node.name] = None
    stack = ["logits"]
    seen: set[str] = set()
    while stack:
        tensor = stack.pop()
        if tensor in seen:
            continue
        seen.add(tensor)
        for node in consumers.get(tensor, ()):
            keep[node.name] = None
            stack.extend(node.output)
    return list(keep)


def _name_nodes(model: Any) -> None:
    """Give every unnamed node a unique name (ORT's nodes_to_exclude selects nodes by name)."""
    used = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)


def _reader(q: Any, feeds: Sequence[Mapping[str, np.ndarray]]) -> Any:
    """An onnxruntime CalibrationDataReader over precomputed feeds (one dict per batch)."""

    class Reader(q.CalibrationDataReader):  # type: ignore[misc]  # onnxruntime.quantization is untyped: a base class of type Any
        def __init__(self) -> None:
            self._it: Iterator[Mapping[str, np.ndarray]] = iter(list(feeds))

        def get_next(self) -> Mapping[str, np.ndarray] | None:
            return next(self._it, None)

    return Reader()


def member_feeds(bundle: Bundle, x: np.ndarray, batch_size: int) -> list[list[dict[str, np.ndarray]]]:
    """Per member, per batch: the feed the runtime gives that member when the float bundle runs on ``x``.

    Args:
        bundle: a loaded float bundle.
        x: inputs ``(N, *task.model_input_shape[1:])`` in the members' space (after the task's preprocess).
        batch_size: rows per batch.

    Returns:
        ``feeds[k][b]``: member k's inputs (``x``, ``prev_logits``, connection tensors) for batch b.

    Raises:
        ExportError: a float member fails on ``x``.
    """
    manifest = bundle.manifest
    sessions = [create_session(blob, SessionConfig(), name=m.name) for m, blob in zip(manifest.members, bundle.member_bytes)]
    x_name = manifest.task.input.name
    feeds: list[list[dict[str, np.ndarray]]] = [[] for _ in manifest.members]
    for start in range(0, x.shape[0], batch_size):
        chunk = x[start : start + batch_size]
        outputs: list[dict[str, np.ndarray]] = []
        for k, (member, session) in enumerate(zip(manifest.members, sessions)):
            feed = {x_name: chunk}
            if k > 0 and manifest.chains_logits:
                feed[_PREV] = outputs[k - 1]["logits"]
            for conn in member.connections:
                feed[conn.input] = outputs[conn.member][conn.output]
            try:
                values = session.run(list(member.outputs), feed)
            except Exception as exc:
                raise ExportError(f"the float member '{member.name}' fails on the calibration data: {error_line(exc)}") from exc
            outputs.append(dict(zip(member.outputs, values)))
            feeds[k].append(feed)
    return feeds


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime.quantization prints progress and logs root-logger warnings; keep the CLI's output ours."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


def _quantize_member(
    onnx: Any, q: Any, blob: bytes, feeds: Sequence[Mapping[str, np.ndarray]], cfg: QuantizeConfig, name: str, workdir: Path
) -> tuple[bytes, list[str]]:
    """One member's INT8 bytes and the nodes kept float."""
    model = onnx.load_model_from_string(blob)
    _name_nodes(model)
    excluded = float_head_nodes(model.graph) if cfg.float_head else []
    src, dst = workdir / f"{name}.float.onnx", workdir / f"{name}.int8.onnx"
    onnx.save_model(model, str(src))
    types = {"int8": q.QuantType.QInt8, "uint8": q.QuantType.QUInt8}
    try:
        with _quiet():
            if cfg.method == "static":
                methods = {
                    "minmax": q.CalibrationMethod.MinMax,
                    "percentile": q.CalibrationMethod.Percentile,
                    "entropy": q.CalibrationMethod.Entropy,
                }
                q.quantize_static(
                    str(src),
                    str(dst),
                    _reader(q, feeds),
                    quant_format=q.QuantFormat.QDQ,
                    activation_type=types[cfg.activation_type],
                    weight_type=types[cfg.weight_type],
                    per_channel=cfg.per_channel,
                    nodes_to_exclude=excluded,
                    calibrate_method=methods[cfg.calibration],
                )
            else:
                q.quantize_dynamic(
                    str(src), str(dst), weight_type=types[cfg.weight_type], per_channel=cfg.per_channel, nodes_to_exclude=excluded
                )
    except Exception as exc:
        raise ConversionError(f"onnxruntime.quantization failed on member '{name}': {error_line(exc)}") from exc
    return dst.read_bytes(), excluded


def _graph_io(onnx: Any, blob: bytes) -> tuple[list[str], list[str]]:
    graph = onnx.load_model_from_string(blob).graph
    initializers = {i.name for i in graph.initializer}
    return [i.name for i in graph.input if i.name not in initializers], [o.name for o in graph.output]


def _check_rows(x: np.ndarray, sample_shape: tuple[int, ...], what: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise ExportError(f"{what} inputs have dtype {arr.dtype}; pass numeric raw inputs as clients send them")
    if arr.ndim != len(sample_shape) + 1 or tuple(arr.shape[1:]) != sample_shape:
        raise ExportError(
            f"{what} inputs have shape {list(arr.shape)}, the bundle takes (N, {', '.join(map(str, sample_shape))}) "
            "raw inputs (as clients send them, before the bundle's preprocess)"
        )
    if arr.shape[0] < 2:
        raise ExportError(f"{what} data needs >= 2 samples, got {arr.shape[0]}")
    arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        raise ExportError(f"{what} inputs hold NaN/inf; clean the data first")
    return arr


def _evaluate(bundle: Bundle, x_raw: np.ndarray, batch_size: int) -> np.ndarray:
    """probs (K, N, C) after each prefix, computed by the runtime exactly as a device would."""
    from edge_runtime.ensemble import AnytimeRuntime

    runtime = AnytimeRuntime(bundle, warmup=0, entropy_threshold="off")
    try:
        return runtime.evaluate_prefixes(x_raw, batch_size=batch_size).probs
    finally:
        runtime.close()


def quantize_bundle(
    bundle: PathLike | Bundle,
    out_dir: str | os.PathLike[str],
    *,
    calibration: Any,
    heldout: tuple[Any, Any],
    config: QuantizeConfig = QuantizeConfig(),
    name: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = True,
) -> QuantizeResult:
    """Quantize every member of a float bundle to INT8, gate the result against it, write it atomically.

    Args:
        bundle: the float bundle (directory, ``.zip`` or a loaded :class:`~edge_runtime.bundle.Bundle`).
        out_dir: the INT8 bundle directory to write (replaced only after every gate passed).
        calibration: raw inputs ``(N, *task.input.shape[1:])`` as clients send them (the bundle's preprocess
            is applied here); the first ``config.calibration_samples`` rows are used. Unused by ``dynamic``
            except for their shape check.
        heldout: ``(x, y)``: raw inputs as above and integer labels, for the gates (keep them apart from
            ``calibration``).
        config: see :class:`QuantizeConfig`.
        name: the INT8 bundle's name (default: the float bundle's name + ``-int8``).
        metadata: merged into the float bundle's metadata.
        overwrite: replace an existing ``out_dir``.

    Returns:
        Where it was written, the manifest, and the per-prefix gate figures.

    Raises:
        ExportError: onnx missing, the bundle is already quantized, or the data does not fit the bundle.
        ConversionError: onnxruntime.quantization failed on a member.
        VerificationError: a gate failed (checker, runtime, accuracy loss over ``config.max_loss``);
            nothing was written.
    """
    import time

    started = time.perf_counter()
    onnx = _onnx()
    q = _ort_quantization()
    source = load_bundle(bundle)
    manifest = source.manifest
    if manifest.quantization is not None:
        raise ExportError(
            f"bundle '{manifest.name}' is already quantized ({manifest.quantization.method}); quantize its float bundle"
        )
    task = manifest.task
    sample = tuple(task.input.shape[1:])
    x_cal = _check_rows(calibration, sample, "calibration")[: config.calibration_samples]
    x_held = _check_rows(heldout[0], sample, "held-out")
    y = np.asarray(heldout[1]).reshape(-1)
    if y.dtype.kind not in "iu" or y.shape[0] != x_held.shape[0]:
        raise ExportError(f"held-out labels must be integer class ids, one per input (got {y.shape[0]} of dtype {y.dtype})")
    if y.min() < 0 or y.max() >= task.num_classes:
        raise ExportError(f"held-out labels must lie in [0, {task.num_classes - 1}]")

    if config.method == "static":
        feeds = member_feeds(source, task.preprocess.apply(x_cal), config.batch_size)
    else:  # dynamic quantization computes ranges per call: no calibration run
        feeds = [[] for _ in manifest.members]
    blobs: list[bytes] = []
    excluded: list[list[str]] = []
    with tempfile.TemporaryDirectory(prefix="anytime-edge-quantize-") as tmp:
        for k, (member, blob) in enumerate(zip(manifest.members, source.member_bytes)):
            qblob, kept = _quantize_member(onnx, q, blob, feeds[k], config, f"member{k}", Path(tmp))
            inputs, outputs = _graph_io(onnx, blob)
            check_graph(qblob, name=member.name, inputs=inputs, outputs=outputs)  # gate 1
            blobs.append(qblob)
            excluded.append(kept)

    # Gate 2: the runtime runs both bundles on the held-out data.
    probe = replace(manifest, calibration=None, profiles={})
    int8_bundle = Bundle(source=Path(out_dir), manifest=probe, member_bytes=tuple(blobs))
    try:
        p_float = _evaluate(source, x_held, config.batch_size)
        p_int8 = _evaluate(int8_bundle, x_held, config.batch_size)
    except EdgeRuntimeError as exc:
        raise VerificationError(f"the runtime cannot run the INT8 bundle: {exc}") from exc
    gates = []
    for k, member in enumerate(manifest.members):
        top_f, top_q = p_float[k].argmax(axis=1), p_int8[k].argmax(axis=1)
        gates.append(
            PrefixGate(
                member=member.name,
                float_accuracy=float(np.mean(top_f == y)),
                int8_accuracy=float(np.mean(top_q == y)),
                agreement=float(np.mean(top_f == top_q)),
                max_prob_diff=float(np.max(np.abs(p_int8[k].astype(np.float64) - p_float[k]))),
            )
        )
        if not np.all(np.isfinite(p_int8[k])):
            raise VerificationError(f"INT8 member '{member.name}' gives NaN/inf probabilities on held-out data; nothing written")
    # Gate 3: accuracy, every prefix. A tiny slack absorbs rounding of the means, never a misprediction.
    for gate in gates:
        if gate.loss_points > config.max_loss + 1e-9:
            raise VerificationError(
                f"INT8 prefix ending at '{gate.member}' scores {100 * gate.int8_accuracy:.2f}% against the float "
                f"{100 * gate.float_accuracy:.2f}% on {y.shape[0]} held-out samples ({gate.loss_points:.2f} points lost, "
                f"--max-loss {config.max_loss:g}); nothing written: try --per-channel, another --calibration, or "
                f"{'static' if config.method == 'dynamic' else 'int8 activations'}"
            )

    import onnxruntime

    record = Quantization(
        method=config.method,
        weight_type=config.weight_type,
        activation_type=config.activation_type if config.method == "static" else None,
        per_channel=config.per_channel,
        calibration=config.calibration if config.method == "static" else None,
        calibration_samples=int(x_cal.shape[0]) if config.method == "static" else 0,
        float_head=config.float_head,
        tool=f"onnxruntime.quantization {onnxruntime.__version__}",
        source={"name": manifest.name, "members": {m.name: m.sha256 for m in manifest.members}},
        gates={"num_heldout": int(y.shape[0]), "max_loss_points": config.max_loss, "prefixes": [g.to_dict() for g in gates]},
    )
    members = []
    for member, blob, gate, kept in zip(manifest.members, blobs, gates, excluded):
        info = {k: v for k, v in member.info.items() if k not in ("gates", "bytes", "bytes_zip")}
        info.update(
            {
                "bytes": len(blob),
                "bytes_zip": len(zlib.compress(blob, 6)),
                "int8": {
                    "float_bytes": member.info.get("bytes"),
                    "float_nodes": kept,
                    **gate.to_dict(),
                    "num_heldout": int(y.shape[0]),
                },
            }
        )
        members.append(replace(member, sha256="", info=info))
    out_manifest = Manifest(
        name=name or f"{manifest.name}-int8",
        task=task,
        members=tuple(members),
        combine=manifest.combine,
        calibration=None,
        profiles={},
        metadata={**dict(manifest.metadata), **dict(metadata or {})},
        quantization=record,
    )
    path = write_bundle(out_dir, out_manifest, blobs, overwrite=overwrite)
    return QuantizeResult(
        path=path,
        manifest=load_bundle(path).manifest,
        prefixes=tuple(gates),
        num_heldout=int(y.shape[0]),
        float_bytes=tuple(len(b) for b in source.member_bytes),
        int8_bytes=tuple(len(b) for b in blobs),
        seconds=round(time.perf_counter() - started, 2),
    )
