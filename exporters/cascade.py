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
  preprocess (the runtime applies one preprocess to a request and hands the same ``x`` to every member);
* every member's graph takes its input under the same name (the runtime feeds one name).

Member files are copied byte for byte; each input's checksum is verified when it is loaded and the
cascade's are recomputed from the copied bytes (:func:`exporters.bundle.write_bundle`, which also writes
atomically and loads the result back). Calibration and profiles of the inputs are not carried over: a
cascade's thresholds and prefix latencies are its own, so run ``calibrate`` and ``profile`` on it.

Only ``edge_runtime``, numpy and the standard library are imported: this runs on a runtime-only install.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from edge_runtime.bundle import Bundle, Manifest, MemberSpec, PathLike, load_bundle
from exporters.bundle import archive_bundle, write_bundle
from exporters.errors import ExportError

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
        A :class:`CascadeResult`; its ``warnings`` say when the stored profiles show the members are not
        ordered cheapest first (the cascade is still written: the order is the caller's choice).

    Raises:
        ExportError: fewer than two bundles, a bundle with more than one member, or tasks that differ.
        ManifestError, ChecksumError: an input cannot be loaded or a member file is missing or changed.
    """
    if len(bundles) < 2:
        raise ExportError(f"a cascade needs at least two bundles, got {len(bundles)}; list them cheapest first")
    loaded = [load_bundle(b) for b in bundles]
    labels = [str(b.source) for b in loaded]
    first = loaded[0].manifest
    for bundle, label in zip(loaded, labels):
        _check_input(bundle.manifest, label, first, labels[0])
    members = _member_specs(loaded)
    manifest = Manifest(
        name=name,
        task=first.task,
        members=members,
        combine="replace",
        metadata={
            "method": "cascade",
            "cascade_of": [
                {"bundle": b.manifest.name, "source": label, "member": b.manifest.members[0].name,
                 "metadata": dict(b.manifest.metadata)}
                for b, label in zip(loaded, labels)
            ],
        },
    )
    target = write_bundle(out_dir, manifest, [b.member_bytes[0] for b in loaded], overwrite=overwrite)
    packed = archive_bundle(target, archive) if archive is not None else None
    written = load_bundle(target).manifest
    latencies = _stored_latencies(loaded)
    warnings: list[str] = []
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
    if task.preprocess != ref.preprocess:
        raise ExportError(
            f"{label} preprocesses inputs as {_describe(task.preprocess.to_dict())}, {first_label} as "
            f"{_describe(ref.preprocess.to_dict())}; the runtime applies one preprocess to every member: export them "
            "with the same preprocess (for a wrapped model trained on standardised inputs `anytime-edge export "
            "MODEL --data DATA --preprocess data`, for one taking raw values `--preprocess none` everywhere)"
        )
    if task.input.name != ref.input.name:
        raise ExportError(
            f"{label}'s graph takes its input as '{task.input.name}', {first_label}'s as '{ref.input.name}'; the runtime "
            "feeds one input name to every member: rename the graph input of one model and export it again"
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
    from edge_runtime.device import fingerprint  # reads /proc and ORT's version: only when profiles exist

    here = fingerprint()
    for key in ([here] if here in common else []) + sorted(common - {here}):
        values = [b.manifest.member_latency_ms(key, _LATENCY_QUANTILE) for b in loaded]
        if all(v is not None for v in values):
            return tuple(v[0] for v in values)  # type: ignore[index]
    return None
