"""Gated export of torch members into a bundle: the API the rest of the toolkit calls.

:func:`export_ensemble` exports every member with its head (:mod:`exporters.onnx`), runs the gates of
:mod:`exporters.verify` on every prefix of the ensemble — member k's ONNX outputs, computed by chaining
members 1..k in ONNX Runtime exactly as the device will, against the torch prefix 1..k — and only then
writes the bundle, atomically (:func:`exporters.bundle.write_bundle`). A failed gate raises and writes
nothing; an existing bundle at ``out_dir`` stays as it was.

:func:`export_model` is the one-member case (a teacher or a compressed student).

Connections are described per member as the 0-based indices of the earlier members whose ``features``
it takes, in the order its ``forward(x, *connections)`` receives them. Member ``k`` taking member ``j``'s
features gets a graph input ``features_from_<j>``, recorded in the manifest as
``Connection(input="features_from_<j>", member=j, output="features")``; member ``j`` then outputs
``features``.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edge_runtime.bundle import Connection, Manifest, MemberSpec, TaskSpec, load_bundle
from edge_runtime.errors import EdgeRuntimeError, error_line
from edge_runtime.session import create_session
from exporters.bundle import write_bundle
from exporters.errors import ConversionError, ExportError, VerificationError
from exporters.onnx import OPSET, MemberHead, export_member, output_names
from exporters.verify import GateReport, Tolerance, accuracy, check_accuracy, check_graph, check_heldout, check_parity

# isort: split
import torch  # after exporters.onnx, which turns a missing torch into an install hint
from torch import nn

__all__ = [
    "ExportResult",
    "MemberExport",
    "compressed_size",
    "connection_input_name",
    "export_ensemble",
    "export_model",
]

ArrayLike = Any  # numpy array or torch tensor


def connection_input_name(member: int) -> str:
    """Graph input name under which a member receives the features of earlier member ``member`` (0-based)."""
    return f"features_from_{member}"


def compressed_size(blob: bytes) -> int:
    """Bytes of ``blob`` deflated at zlib's default level: what a ``.zip`` bundle stores for that file."""
    return len(zlib.compress(blob, 6))


@dataclass(frozen=True)
class MemberExport:
    """One exported member: its sizes, cost of export and what the gates measured."""

    name: str  # member name in the manifest
    bytes: int  # size of the ONNX file
    bytes_zip: int  # deflated size (unstructured sparsity shows here, not in latency)
    params: int  # parameters of the torch member
    nonzero_params: int  # parameters that are not exactly zero
    export_seconds: float  # wall time of torch.onnx.export for this member
    gates: GateReport  # parity and accuracy of the prefix ending at this member


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_ensemble` wrote and measured."""

    path: Path  # the bundle directory
    manifest: Manifest  # as written (with checksums)
    members: tuple[MemberExport, ...]  # in member order

    @property
    def reports(self) -> tuple[GateReport, ...]:
        return tuple(m.gates for m in self.members)

    def describe(self) -> list[str]:
        """One line per member for a CLI or the demo."""
        return [
            f"{m.gates.describe()}, {m.bytes} B ({m.bytes_zip} B deflated), exported in {m.export_seconds:.2f} s"
            for m in self.members
        ]


def _as_tensor(x: ArrayLike) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(torch.float32).cpu()
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x, dtype=np.float32)))


def _as_labels(y: ArrayLike) -> np.ndarray:
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    labels = np.asarray(y).reshape(-1)
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ExportError(f"held-out labels have dtype {labels.dtype}; pass integer class ids")
    return labels.astype(np.int64)


def _normalise_connections(connections: Sequence[Sequence[int]] | None, n: int) -> tuple[tuple[int, ...], ...]:
    if connections is None:
        return tuple(() for _ in range(n))
    if len(connections) != n:
        raise ExportError(f"connections lists {len(connections)} entries for {n} members; give one tuple per member")
    result = []
    for k, sources in enumerate(connections):
        sources = tuple(int(j) for j in sources)
        if k == 0 and sources:
            raise ExportError(f"the first member (0) connects to {list(sources)}; it runs first, so give it ()")
        if any(not 0 <= j < k for j in sources):
            raise ExportError(f"member {k} connects to {list(sources)}; only earlier members (0..{k - 1}) can feed it")
        if len(set(sources)) != len(sources):
            raise ExportError(f"member {k} lists a connection twice: {list(sources)}")
        result.append(sources)
    return tuple(result)


def _check_json(value: Any, what: str) -> None:
    """Fail before the slow export, not while writing the manifest after it."""
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise ExportError(f"{what} is not JSON-serialisable ({exc}); pass plain numbers, strings, lists and dicts") from exc


def _device_of(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def _torch_chain(
    heads: Sequence[MemberHead], connections: Sequence[tuple[int, ...]], x: torch.Tensor
) -> list[dict[str, torch.Tensor]]:
    """Run the torch heads one after another on ``x``: member k's outputs are the torch prefix 1..k."""
    outs: list[dict[str, torch.Tensor]] = []
    for k, head in enumerate(heads):
        device = _device_of(head)
        extra = ([outs[-1]["logits"]] if k else []) + [outs[j]["features"] for j in connections[k]]
        try:
            with torch.no_grad():
                values = head(x.to(device), *(e.to(device) for e in extra))
        except ExportError:
            raise
        except Exception as exc:  # whatever the member's forward raises
            first = error_line(exc)[:200]
            raise ConversionError(
                f"member {k + 1} fails in torch on held-out inputs: {first}; check its input shape and connections"
            ) from exc
        outs.append({name: v.detach().float().cpu() for name, v in zip(output_names(head), values)})
    return outs


def _batches(n: int, batch_size: int) -> list[slice]:
    # A first batch of one row proves the graph did not specialise the batch dimension it was traced at.
    cuts = [0, 1] + list(range(1 + batch_size, n, batch_size)) + [n]
    return [slice(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


def export_ensemble(
    members: Sequence[nn.Module],
    task: TaskSpec,
    out_dir: str | os.PathLike[str],
    *,
    heldout: tuple[ArrayLike, ArrayLike],
    connections: Sequence[Sequence[int]] | None = None,
    combine: str = "sum",
    name: str = "ensemble",
    member_names: Sequence[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    member_info: Sequence[Mapping[str, Any]] | None = None,
    tolerance: Tolerance = Tolerance(),
    batch_size: int = 512,
    overwrite: bool = True,
) -> ExportResult:
    """Export torch members as an anytime bundle, gating every prefix before anything is written.

    Args:
        members: torch members in evaluation order; ``forward(x, *connections) -> (logits, features)``
            (a member nothing connects to may return logits alone).
        task: labels, input spec and preprocessing; the graphs take the task's input name.
        out_dir: the bundle directory to (re)place.
        heldout: ``(x, y)``: preprocessed inputs of the task's shape and integer labels, used for parity
            and accuracy gates (>= 1000 samples make the 0.1-point accuracy gate meaningful: below that
            one flipped prediction already exceeds it).
        connections: per member, the 0-based indices of earlier members whose features it takes, in
            forward order; None = no connections.
        combine: "sum" or "mean" of member logits, computed inside the graphs.
        name: the bundle's name.
        member_names: unique names; default ``member_1..member_n``.
        metadata: provenance stored in the manifest (data set, teacher, ...); the exporter adds its own.
        member_info: per member, provenance merged into the manifest's ``info`` (method, width, ...).
        tolerance: parity and accuracy tolerances (see :mod:`exporters.verify`).
        batch_size: held-out rows per torch/ONNX Runtime call during the gates.
        overwrite: replace an existing bundle at ``out_dir`` (only after every gate passed).

    Returns:
        The bundle path, the written manifest and per-member sizes and gate reports.

    Raises:
        ConversionError: a member breaks the member contract or torch.onnx.export failed.
        VerificationError: a member failed a gate; nothing was written.
        ExportError: bad arguments (held-out data, connections, names).
    """
    n = len(members)
    if n == 0:
        raise ExportError("no members to export; pass at least one model")
    if batch_size < 1:
        raise ExportError("batch_size must be >= 1")
    names = list(member_names) if member_names is not None else [f"member_{k + 1}" for k in range(n)]
    if len(names) != n or len(set(names)) != n or not all(names):
        raise ExportError(f"member_names {names} must give {n} unique, non-empty names")
    infos = [dict(i) for i in member_info] if member_info is not None else [{} for _ in range(n)]
    if len(infos) != n:
        raise ExportError(f"member_info lists {len(infos)} entries for {n} members; give one mapping per member")
    sources = _normalise_connections(connections, n)
    _check_json(dict(metadata or {}), "metadata")
    for k, info in enumerate(infos):
        _check_json(info, f"member_info[{k}]")
    x = _as_tensor(heldout[0])
    y = _as_labels(heldout[1])
    check_heldout(task, x.numpy(), y)

    consumed = {j for s in sources for j in s}
    heads = [
        MemberHead(
            m,
            position=k + 1,
            combine=combine,
            num_connections=len(sources[k]),
            emit_features=k in consumed,
            num_classes=task.num_classes,
        )
        for k, m in enumerate(members)
    ]
    training = [[(mod, mod.training) for mod in m.modules()] for m in members]
    for m in members:
        m.eval()
    try:
        return _export_and_gate(
            heads,
            names,
            infos,
            sources,
            task,
            x,
            y,
            out_dir,
            combine=combine,
            name=name,
            metadata=metadata,
            tolerance=tolerance,
            batch_size=batch_size,
            overwrite=overwrite,
        )
    finally:
        for flags in training:
            for mod, flag in flags:
                mod.training = flag


def _export_and_gate(
    heads: Sequence[MemberHead],
    names: Sequence[str],
    infos: Sequence[dict[str, Any]],
    sources: Sequence[tuple[int, ...]],
    task: TaskSpec,
    x: torch.Tensor,
    y: np.ndarray,
    out_dir: str | os.PathLike[str],
    *,
    combine: str,
    name: str,
    metadata: Mapping[str, Any] | None,
    tolerance: Tolerance,
    batch_size: int,
    overwrite: bool,
) -> ExportResult:
    # Export: the examples are the first two held-out rows and the torch chain's outputs on them.
    example = _torch_chain(heads, sources, x[:2])
    blobs: list[bytes] = []
    seconds: list[float] = []
    graph_inputs: list[list[str]] = []
    for k, head in enumerate(heads):
        conn_names = [connection_input_name(j) for j in sources[k]]
        extra = ([example[k - 1]["logits"]] if k else []) + [example[j]["features"] for j in sources[k]]
        start = time.perf_counter()
        blobs.append(export_member(head, x[:2], extra, input_name=task.input.name, connection_names=conn_names))
        seconds.append(time.perf_counter() - start)
        graph_inputs.append([task.input.name] + (["prev_logits"] if k else []) + conn_names)
        # Gate 1 before anything runs the graph.
        check_graph(blobs[k], name=names[k], inputs=graph_inputs[k], outputs=output_names(head))

    try:
        sessions = [create_session(blob, name=names[k]) for k, blob in enumerate(blobs)]
    except EdgeRuntimeError as exc:
        raise VerificationError(f"ONNX Runtime refused an exported member: {exc}") from exc

    # Run torch and ONNX Runtime chains side by side; each chain feeds itself (ORT gets ORT's logits).
    wanted = ("logits", "probs", "entropy")
    torch_out: list[dict[str, list[np.ndarray]]] = [{o: [] for o in wanted} for _ in heads]
    ort_out: list[dict[str, list[np.ndarray]]] = [{o: [] for o in wanted} for _ in heads]
    for rows in _batches(x.shape[0], batch_size):
        reference = _torch_chain(heads, sources, x[rows])
        chain: list[dict[str, np.ndarray]] = []
        for k, (head, session) in enumerate(zip(heads, sessions)):
            feed = {task.input.name: x[rows].numpy()}
            if k:
                feed["prev_logits"] = chain[k - 1]["logits"]
            for j in sources[k]:
                feed[connection_input_name(j)] = chain[j]["features"]
            try:
                values = session.run(None, feed)
            except Exception as exc:  # ORT raises its own exception types
                raise VerificationError(
                    f"member '{names[k]}' fails in ONNX Runtime on a batch of {rows.stop - rows.start}: {error_line(exc)[:200]}"
                ) from exc
            chain.append(dict(zip(output_names(head), values)))
            for o in wanted:
                torch_out[k][o].append(reference[k][o].numpy())
                ort_out[k][o].append(chain[k][o])

    exported: list[MemberExport] = []
    for k, head in enumerate(heads):
        want = {o: np.concatenate(torch_out[k][o]) for o in wanted}
        got = {o: np.concatenate(ort_out[k][o]) for o in wanted}
        diffs = check_parity(want, got, name=names[k], tolerance=tolerance)
        report = GateReport(
            member=names[k],
            max_abs_diff=diffs,
            torch_accuracy=accuracy(want["logits"], y),
            onnx_accuracy=accuracy(got["logits"], y),
            num_heldout=int(y.shape[0]),
        )
        check_accuracy(report.torch_accuracy, report.onnx_accuracy, name=names[k], tolerance=tolerance)
        params = sum(p.numel() for p in head.member.parameters())
        nonzero = sum(int(torch.count_nonzero(p)) for p in head.member.parameters())
        exported.append(
            MemberExport(
                name=names[k],
                bytes=len(blobs[k]),
                bytes_zip=compressed_size(blobs[k]),
                params=params,
                nonzero_params=nonzero,
                export_seconds=seconds[k],
                gates=report,
            )
        )

    specs = tuple(
        MemberSpec(
            name=names[k],
            file=f"{names[k]}.onnx",
            sha256="",  # write_bundle sets it from the bytes it writes
            outputs=tuple(output_names(head)),
            connections=tuple(Connection(input=connection_input_name(j), member=j, output="features") for j in sources[k]),
            params=exported[k].params,
            info={
                **infos[k],
                "bytes": exported[k].bytes,
                "bytes_zip": exported[k].bytes_zip,
                "nonzero_params": exported[k].nonzero_params,
                "gates": exported[k].gates.to_dict(),
            },
        )
        for k, head in enumerate(heads)
    )
    provenance = {
        "exporter": {
            "opset": OPSET,
            "torch": torch.__version__,
            "tolerance": {"rtol": tolerance.rtol, "atol": tolerance.atol, "accuracy_gap": tolerance.accuracy_gap},
        }
    }
    manifest = Manifest(
        name=name,
        task=task,
        members=specs,
        combine=combine,
        metadata={**provenance, **dict(metadata or {})},
    )
    path = write_bundle(out_dir, manifest, blobs, overwrite=overwrite)
    return ExportResult(path=path, manifest=load_bundle(path).manifest, members=tuple(exported))


def export_model(
    model: nn.Module,
    task: TaskSpec,
    out_dir: str | os.PathLike[str],
    *,
    heldout: tuple[ArrayLike, ArrayLike],
    name: str = "model",
    member_name: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    info: Mapping[str, Any] | None = None,
    tolerance: Tolerance = Tolerance(),
    overwrite: bool = True,
) -> ExportResult:
    """Export one model (a teacher or a compressed student) as a gated one-member bundle.

    Args:
        model: returns logits or ``(logits, features)`` for inputs of the task's shape.
        task: labels, input spec and preprocessing.
        out_dir: the bundle directory to (re)place.
        heldout: ``(x, y)`` preprocessed inputs and integer labels for the gates.
        name: the bundle's name.
        member_name: the member's name; default ``name``.
        metadata: provenance stored in the manifest.
        info: provenance stored in the member's ``info`` (method, sparsity, rank, ...).
        tolerance: parity and accuracy tolerances.
        overwrite: replace an existing bundle at ``out_dir``.

    Returns:
        See :func:`export_ensemble`.

    Raises:
        ConversionError, VerificationError, ExportError: see :func:`export_ensemble`.
    """
    return export_ensemble(
        [model],
        task,
        out_dir,
        heldout=heldout,
        name=name,
        member_names=[member_name or name],
        metadata=metadata,
        member_info=[dict(info or {})],
        tolerance=tolerance,
        overwrite=overwrite,
    )
