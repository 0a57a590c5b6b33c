"""Compose one-member bundles into an anytime cascade (``combine="replace"``), with no re-export.

A cascade runs independent models in order, cheapest first (e.g. a low-rank student, then the teacher):
member k's answer *replaces* member k-1's instead of being added to it, so no member takes
``prev_logits`` and every one-member bundle's graph joins unchanged, whichever exporter wrote it
(``export_model``, the low-rank/channel/teacher exports, :mod:`exporters.wrap` for a user's ``.onnx`` or
``.pt2``). The runtime's entropy exit and latency budgets, ``calibrate``, ``profile``, ``select`` and the
server then treat it like any anytime bundle (Viola-Jones style cascades of classifiers; "Big/Little" and
"IDK" cascades of independent networks use the same stop-when-confident rule).

Rules checked before anything is written, each refused in one line that names the fix:

* every input is a bundle with exactly one member (a multi-member bundle already combines its members);
* every input has the same task: labels (names and order), client input shape and dtype, and the same
  preprocess layout.

The runtime applies one preprocess (the first bundle's) to a request and feeds the result to every
member under one input name. A member whose bundle scales/offsets inputs differently (e.g. a user's
``.onnx`` teacher wrapped to take raw values, beside students that take standardised ones), or whose graph
names its input differently, is *adapted*: one Identity, or a Mul and an Add folding
``own_preprocess(first_preprocess⁻¹(x))`` into one affine map, is put in front of its graph, and the
adapted graph is checked against the original on random inputs before anything is written. That needs the
onnx package (the ``wrap`` extra); without it such inputs are refused with the fix.

Otherwise member files are copied byte for byte; each input's checksum is verified when it is loaded and
the cascade's are recomputed from the written bytes (:func:`exporters.bundle.write_bundle`, which also writes
atomically and loads the result back). Calibration and profiles of the inputs are not carried over: a
cascade's thresholds and prefix latencies are its own, so run ``calibrate`` and ``profile`` on it.

Only ``edge_runtime``, numpy and the standard library are imported: this runs on a runtime-only install.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from edge_runtime.bundle import Bundle, Manifest, MemberSpec, PathLike, TaskSpec, load_bundle
from edge_runtime.extras import install_hint
from exporters.bundle import archive_bundle, write_bundle
from exporters.errors import ExportError, VerificationError

__all__ = ["CascadeResult", "compose_cascade"]

_LATENCY_QUANTILE = "p50"  # which stored latency orders the members when checking "cheapest first"


@dataclass(frozen=True)
class CascadeResult:
    """What :func:`compose_cascade` wrote."""

    path: Path  # the cascade bundle directory
    manifest: Manifest  # its manifest (combine="replace", members in the order given)
    archive: Path | None  # the .zip, when one was asked for
    member_p50_ms: tuple[float, ...] | None  # each input's stored batch-1 p50 on one common device, if any
    warnings: tuple[str, ...]  # e.g. members not ordered cheapest first by their stored profiles


def compose_cascade(
    bundles: Sequence[PathLike | Bundle],
    out_dir: PathLike,
    *,
    name: str = "cascade",
    archive: PathLike | None = None,
    overwrite: bool = True,
) -> CascadeResult:
    """Write a ``combine="replace"`` bundle whose members are the given one-member bundles, in order.

    Args:
        bundles: two or more one-member bundles (directories, ``.zip`` files or loaded bundles), in
            evaluation order: the cheapest first, the most accurate last.
        out_dir: the cascade bundle directory (written atomically; replaced if it exists and
            ``overwrite``).
        name: the cascade's bundle name.
        archive: also pack the bundle into this ``.zip``.
        overwrite: replace an existing ``out_dir``.

    Returns:
        A :class:`CascadeResult`; its ``warnings`` name each member adapted to the first bundle's
        preprocess or input name, and say when the stored profiles show the members are not ordered
        cheapest first (the cascade is still written: the order is the caller's choice).

    Raises:
        ExportError: fewer than two bundles, a bundle with more than one member, tasks that differ, or a
            member that needs adapting without onnx installed.
        VerificationError: an adapted member does not answer as its original.
        ManifestError, ChecksumError: an input cannot be loaded or a member file is missing or changed.
    """
    if len(bundles) < 2:
        raise ExportError(f"a cascade needs at least two bundles, got {len(bundles)}; list them cheapest first")
    loaded = [load_bundle(b) for b in bundles]
    labels = [str(b.source) for b in loaded]
    first = loaded[0].manifest
    for bundle, label in zip(loaded, labels):
        _check_input(bundle.manifest, label, first, labels[0])
    blobs, adapted = [], []
    for bundle, label in zip(loaded, labels):
        blob, how = _adapted_member(bundle, label, first.task)
        blobs.append(blob)
        adapted.append(how)
    members = tuple(
        replace(spec, info={**dict(spec.info), "cascade_adapted": how}) if how else spec
        for spec, how in zip(_member_specs(loaded), adapted)
    )
    manifest = Manifest(
        name=name,
        task=first.task,
        members=members,
        combine="replace",
        metadata={
            "method": "cascade",
            "cascade_of": [
                {
                    "bundle": b.manifest.name,
                    "source": label,
                    "member": b.manifest.members[0].name,
                    "metadata": dict(b.manifest.metadata),
                }
                for b, label in zip(loaded, labels)
            ],
        },
    )
    target = write_bundle(out_dir, manifest, blobs, overwrite=overwrite)
    packed = archive_bundle(target, archive) if archive is not None else None
    written = load_bundle(target).manifest
    latencies = _stored_latencies(loaded)
    warnings = [f"{m.name}: {how} (checked against the original graph)" for m, how in zip(members, adapted) if how]
    if latencies is not None and any(b < a for a, b in zip(latencies, latencies[1:])):
        order = ", ".join(f"{m.name} {t:.3f} ms" for m, t in zip(members, latencies))
        warnings.append(
            f"members are not ordered cheapest first by their stored {_LATENCY_QUANTILE} latencies ({order}); "
            "a cascade pays off when cheap members answer the easy inputs: list the bundles cheapest first"
        )
    return CascadeResult(path=target, manifest=written, archive=packed, member_p50_ms=latencies, warnings=tuple(warnings))


def _check_input(manifest: Manifest, label: str, first: Manifest, first_label: str) -> None:
    """One line naming the fix when ``manifest`` cannot join a cascade that starts with ``first``."""
    if manifest.num_members != 1:
        raise ExportError(
            f"{label} has {manifest.num_members} members; a cascade composes one-member bundles: export each "
            "model on its own (`anytime-edge export`), or use an anytime bundle as it is"
        )
    task, ref = manifest.task, first.task
    if task.labels != ref.labels:
        raise ExportError(
            f"{label} classifies {list(task.labels)}, {first_label} {list(ref.labels)}; a cascade's members must share "
            "the labels in the same order: export them on the same data set"
        )
    if task.input.shape != ref.input.shape or task.input.dtype != ref.input.dtype:
        raise ExportError(
            f"{label} takes {task.input.dtype} {list(task.input.shape)}, {first_label} {ref.input.dtype} "
            f"{list(ref.input.shape)}; a cascade's members must take the same client input: export them for one task"
        )
    if task.preprocess.layout != ref.preprocess.layout:
        raise ExportError(
            f"{label} takes client inputs in layout {task.preprocess.layout}, {first_label} in {ref.preprocess.layout}; "
            "the runtime feeds every member one layout: export them with the same layout"
        )


def _adapted_member(bundle: Bundle, label: str, ref: TaskSpec) -> tuple[bytes, str]:
    """Member bytes that take the runtime's ``x`` for task ``ref``, and how they were adapted ("" = not)."""
    blob, task = bundle.member_bytes[0], bundle.manifest.task
    renamed = task.input.name != ref.input.name
    affine = task.preprocess != ref.preprocess
    if not (renamed or affine):
        return blob, ""
    what = [f"input '{task.input.name}' fed as '{ref.input.name}'"] if renamed else []
    if affine:
        what.append(
            f"its preprocess ({_describe(task.preprocess.to_dict())}) folded in after the cascade's "
            f"({_describe(ref.preprocess.to_dict())})"
        )
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError:
        raise ExportError(
            f"{label} needs adapting to join this cascade ({'; '.join(what)}), which needs the onnx package: "
            f"{install_hint('wrap')}, or export every model with the same preprocess and input name"
        ) from None
    model_shape = ref.model_input_shape[1:]
    model = onnx.load_from_string(blob)
    graph = model.graph
    old, new = task.input.name, ref.input.name
    used = {o for n in graph.node for o in n.output} | {i.name for i in graph.initializer}
    prefix = "cascade/"
    if renamed and new in used or any(name.startswith(prefix) for name in used):
        raise ExportError(f"{label}'s graph already uses the name '{new}' or '{prefix}...'; rename its input and export it again")
    (graph_input,) = [i for i in graph.input if i.name == old]
    graph_input.name = new
    if affine:
        # x_own = P_own(P_ref^-1(x)) = x * a + b, per channel where the preprocesses are (members' axis 1).
        s_ref, o_ref = (v.astype(np.float64) for v in ref.preprocess.arrays(model_shape))
        s_own, o_own = (v.astype(np.float64) for v in task.preprocess.arrays(model_shape))
        a, b = s_own / s_ref, o_own - o_ref * s_own / s_ref
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.asarray(a, np.float32), prefix + "scale"),
                numpy_helper.from_array(np.asarray(b, np.float32), prefix + "offset"),
            ]
        )
        nodes = [
            helper.make_node("Mul", [new, prefix + "scale"], [prefix + "scaled"], name=prefix + "mul"),
            helper.make_node("Add", [prefix + "scaled", prefix + "offset"], [old], name=prefix + "add"),
        ]
    else:
        nodes = [helper.make_node("Identity", [new], [old], name=prefix + "rename")]
    for node in reversed(nodes):
        graph.node.insert(0, node)
    adapted = model.SerializeToString()
    _check_adapted(blob, task, adapted, ref, label)
    return adapted, "; ".join(what)


def _check_adapted(original: bytes, own: TaskSpec, adapted: bytes, ref: TaskSpec, label: str) -> None:
    """The adapted graph on ``ref``'s preprocess must answer as the original on its own (random raw inputs)."""
    from edge_runtime.session import SessionConfig, create_session

    raw = np.random.default_rng(0).normal(0.0, 1.0, (8, *ref.input.shape[1:])).astype(np.float32)
    outs = []
    for blob, task in ((original, own), (adapted, ref)):
        session = create_session(blob, SessionConfig(), name=label)
        outs.append(session.run(["probs"], {task.input.name: task.preprocess.apply(raw)})[0])
    gap = float(np.max(np.abs(outs[0] - outs[1])))
    if not gap <= 1e-4:
        raise VerificationError(
            f"{label} adapted to the cascade's input differs from the original by {gap:.3g} in probability; "
            "export every model with the same preprocess instead"
        )


def _describe(preprocess: dict[str, object]) -> str:
    def short(v: object) -> str:
        if isinstance(v, list):
            return "[" + ", ".join(f"{x:.4g}" for x in v[:3]) + (", ...]" if len(v) > 3 else "]")
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    return f"scale {short(preprocess['scale'])}, offset {short(preprocess['offset'])}, layout {preprocess['layout']}"


def _member_specs(loaded: Sequence[Bundle]) -> tuple[MemberSpec, ...]:
    """One spec per input: named after its bundle (unique), its own file name, provenance in ``info``."""
    specs: list[MemberSpec] = []
    used: set[str] = set()
    for k, bundle in enumerate(loaded):
        member = bundle.manifest.members[0]
        base = _safe(bundle.manifest.name) or _safe(member.name) or "member"
        name = base if base not in used else f"{base}_{k + 1}"
        while name in used:
            name += "_"
        used.add(name)
        info = {**dict(member.info), "cascade_source": {"bundle": bundle.manifest.name, "member": member.name}}
        specs.append(replace(member, name=name, file=f"{name}.onnx", sha256="", connections=(), info=info))
    return tuple(specs)


def _safe(text: str) -> str:
    """A file-name-safe version of a bundle or member name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("._")


def _stored_latencies(loaded: Sequence[Bundle]) -> tuple[float, ...] | None:
    """Each input's stored batch-1 p50 (ms) from one device every input was profiled on; this device's
    profile is preferred. None when no device profiled them all."""
    common = set.intersection(*(set(b.manifest.profiles) for b in loaded))
    if not common:
        return None
    from edge_runtime.device import find_profile_key  # reads /proc and ORT's version: only when profiles exist

    here = find_profile_key(dict.fromkeys(common))
    for key in ([here] if here is not None else []) + sorted(common - {here}):
        values = [b.manifest.member_latency_ms(key, _LATENCY_QUANTILE) for b in loaded]
        if all(v is not None for v in values):
            return tuple(v[0] for v in values)  # type: ignore[index]  # all not None (checked above)
    return None
