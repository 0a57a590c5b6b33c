"""The bundle: one directory (or one ``.zip`` of it) holding ``manifest.json`` and the ONNX members.

A bundle is what a factory PC receives. The manifest says what the task is, which members to evaluate in
which order, which tensors one member hands to a later one, the calibrated exit threshold and the latency
profiles measured on devices. Every member file carries a sha256 that is checked before ONNX Runtime sees
a byte of it.

The graph contract every member obeys (the exporters produce it, the runtime relies on it):

* input ``x``: the preprocessed task input, ``float32``, shape ``task.model_input_shape`` (-1 = batch):
  ``task.preprocess.apply`` of the client's raw batch of shape ``task.input.shape`` (the two shapes
  differ only when the preprocess changes the layout, e.g. channels-last client images);
* input ``prev_logits`` (every member but the first, when ``combine`` is ``"sum"`` or ``"mean"``): the
  ``logits`` output of the member before it. With ``combine="replace"`` (a cascade of independent models,
  e.g. a small student then the teacher) no member takes ``prev_logits``: member k's answer replaces the
  one before it, so any one-member bundle's graph can join a cascade unchanged;
* one input per :class:`Connection`, fed from an output of an earlier member;
* outputs ``logits`` (the *combined* logits of members 1..k, already summed or averaged in the graph;
  member k's own logits for ``"replace"``),
  ``probs`` (softmax of ``logits``) and ``entropy`` (natural-log entropy of ``probs``, shape ``[-1]``),
  plus whatever extra outputs later members' connections name.

So the runtime never combines, normalises or scores in Python: member k's outputs are the anytime answer
after k members.

Loading never unpickles anything: the manifest is JSON and the members are ONNX protobufs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import zipfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np

from edge_runtime._manifest_json import decode_manifest
from edge_runtime._member_checks import check_member_graph, check_sample_size
from edge_runtime._quantization import Quantization
from edge_runtime._sources import LoadLimits, check_member_file, open_source
from edge_runtime.errors import BundleError, ChecksumError, ManifestError, error_line
from edge_runtime.files import atomic_write, locked

__all__ = [
    "BUNDLE_FORMAT",
    "Bundle",
    "CHAINED_RULES",
    "COMBINE_RULES",
    "Calibration",
    "Connection",
    "LoadLimits",
    "MANIFEST_NAME",
    "MANIFEST_VERSION",
    "Manifest",
    "MemberSpec",
    "Preprocess",
    "Quantization",
    "SUPPORTED_VERSIONS",
    "TaskSpec",
    "TensorSpec",
    "connection_inputs",
    "load_bundle",
    "save_manifest",
    "sha256_bytes",
    "update_manifest",
]

BUNDLE_FORMAT = "anytime-edge-bundle"
# Version 2 (this writer): task.preprocess may hold per-channel vectors and a layout. Version 1 (scalar
# scale/offset, no layout) still loads and means what it always meant.
MANIFEST_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)
MANIFEST_NAME = "manifest.json"
# How member k's logits relate to members 1..k-1 (the graphs do it; see the module docstring).
COMBINE_RULES = ("sum", "mean", "replace")
# The rules whose members k > 1 take the previous member's logits as the input ``prev_logits``.
CHAINED_RULES = ("sum", "mean")
DTYPES = ("float32",)
# Output names every member graph must produce (see the module docstring).
REQUIRED_OUTPUTS = ("logits", "probs", "entropy")

PathLike = Union[str, "os.PathLike[str]"]


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def _require(mapping: Mapping[str, Any], key: str, where: str) -> Any:
    if not isinstance(mapping, Mapping):
        raise ManifestError(f"{where} must be a JSON object; rebuild the bundle with the exporters")
    if key not in mapping:
        raise ManifestError(f"{where} lacks '{key}'; rebuild the bundle with the exporters")
    return mapping[key]


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of the task's input."""

    name: str  # graph input name the runtime feeds
    shape: tuple[int, ...]  # -1 marks the batch dimension
    dtype: str = "float32"  # numpy dtype name the members take

    def __post_init__(self) -> None:
        if not self.shape or self.shape[0] != -1:
            raise ManifestError(f"input '{self.name}' shape {list(self.shape)} must start with -1 (the batch)")
        if any(d <= 0 for d in self.shape[1:]):
            raise ManifestError(f"input '{self.name}' shape {list(self.shape)} has a non-positive dimension")
        if self.dtype not in DTYPES:
            raise ManifestError(f"input dtype '{self.dtype}' is not supported; use one of {list(DTYPES)}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TensorSpec":
        where = "task.input"
        return cls(
            name=str(_require(d, "name", where)),
            shape=tuple(int(s) for s in _require(d, "shape", where)),
            dtype=str(d.get("dtype", "float32")),
        )


Vector = Union[float, tuple[float, ...]]
LAYOUTS = ("nhwc",)  # raw client layouts the preprocess transposes from (None: the members' own layout)
_NHWC_TO_NCHW = (0, 3, 1, 2)
_NCHW_TO_NHWC = (0, 2, 3, 1)


def _as_vector(value: Any, name: str) -> Vector:
    """A JSON number or list of numbers as a float or a tuple of floats (one per channel/feature)."""
    if isinstance(value, (list, tuple, np.ndarray)):
        values = tuple(float(v) for v in np.asarray(value, dtype=np.float64).reshape(-1))
        if not values:
            raise ManifestError(f"preprocess {name} is an empty list; give one value per channel (or one number)")
        return values
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ManifestError(f"preprocess {name} must be a number or a list of numbers, not {value!r}")
    return float(value)


@dataclass(frozen=True)
class Preprocess:
    """Map from the raw input a client sends to what the members take.

    ``model_x = to_members_layout(raw) * scale + offset``, where

    * ``layout`` is ``None`` (the client sends the members' layout) or ``"nhwc"`` (the client sends
      channels-last images ``(N, H, W, C)``; they are transposed to the members' ``(N, C, H, W)``);
    * ``scale`` and ``offset`` are each one number (the same for every value) or a vector with one entry
      per index of the members' axis 1: per feature for tabular ``(N, F)`` inputs, per channel for signals
      ``(N, C, L)`` and images ``(N, C, H, W)``, broadcast over the remaining axes.

    :meth:`apply` computes the map, :meth:`invert` its exact inverse (model input -> raw client values),
    :meth:`model_shape`/:meth:`raw_shape` convert sample shapes between the two sides.
    """

    scale: Vector = 1.0  # e.g. 1/255 for uint8 images, or 1/std per channel
    offset: Vector = 0.0  # added after scaling, e.g. -mean/std per channel
    layout: str | None = None  # None or "nhwc": the client's layout when it differs from the members'

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", _as_vector(self.scale, "scale"))
        object.__setattr__(self, "offset", _as_vector(self.offset, "offset"))
        scale, offset = np.asarray(self.scale, dtype=np.float64), np.asarray(self.offset, dtype=np.float64)
        if not (np.all(np.isfinite(scale)) and np.all(np.isfinite(offset))) or np.any(scale == 0):
            raise ManifestError("preprocess scale must be finite and non-zero, offset finite")
        if scale.size > 1 and offset.size > 1 and scale.size != offset.size:
            raise ManifestError(f"preprocess scale has {scale.size} values, offset {offset.size}; give one per channel")
        if self.layout is not None and self.layout not in LAYOUTS:
            raise ManifestError(f"preprocess layout '{self.layout}' is unknown; use null or one of {list(LAYOUTS)}")

    @property
    def is_identity(self) -> bool:
        """True when the map leaves the input unchanged (the runtime then skips it)."""
        return self.layout is None and self.is_affine_identity

    @property
    def is_affine_identity(self) -> bool:
        """True when scale is all ones and offset all zeros (a layout change may remain)."""
        return bool(np.all(np.asarray(self.scale) == 1.0) and np.all(np.asarray(self.offset) == 0.0))

    @property
    def is_scalar(self) -> bool:
        """True for one scale and one offset for every value and no layout change (a version-1 preprocess)."""
        return isinstance(self.scale, float) and isinstance(self.offset, float) and self.layout is None

    @property
    def channels(self) -> int | None:
        """The length of the scale/offset vectors, or None when both are single numbers."""
        sizes = [len(v) for v in (self.scale, self.offset) if isinstance(v, tuple)]
        return sizes[0] if sizes else None

    @property
    def transpose_axes(self) -> tuple[int, ...] | None:
        """Axis order taking a client batch to the members' layout (``numpy.transpose``), or None."""
        return _NHWC_TO_NCHW if self.layout == "nhwc" else None

    def model_shape(self, raw_shape: Sequence[int]) -> tuple[int, ...]:
        """The members' sample shape for a client sample shape (no batch axis): ``(H, W, C) -> (C, H, W)``."""
        shape = tuple(int(d) for d in raw_shape)
        if self.layout == "nhwc":
            if len(shape) != 3:
                raise ManifestError(f"preprocess layout 'nhwc' needs (H, W, C) samples, not {list(shape)}")
            return (shape[2], shape[0], shape[1])
        return shape

    def raw_shape(self, model_shape: Sequence[int]) -> tuple[int, ...]:
        """The client's sample shape for a members' sample shape (no batch axis): ``(C, H, W) -> (H, W, C)``."""
        shape = tuple(int(d) for d in model_shape)
        if self.layout == "nhwc":
            if len(shape) != 3:
                raise ManifestError(f"preprocess layout 'nhwc' needs (C, H, W) member inputs, not {list(shape)}")
            return (shape[1], shape[2], shape[0])
        return shape

    def arrays(self, model_shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """``scale`` and ``offset`` as float32 arrays that broadcast against a batch ``(N, *model_shape)``.

        A vector becomes shape ``(C, 1, ..., 1)`` (C = ``model_shape[0]``); a number a 0-d array.

        Raises:
            ManifestError: a vector's length differs from ``model_shape[0]``.
        """
        shape = tuple(int(d) for d in model_shape)
        out = []
        for name, value in (("scale", self.scale), ("offset", self.offset)):
            arr = np.asarray(value, dtype=np.float32)
            if arr.ndim:
                if not shape or arr.size != shape[0]:
                    raise ManifestError(
                        f"preprocess {name} has {arr.size} values but the members' inputs {list(shape)} have "
                        f"{shape[0] if shape else 0} channels/features on axis 1; give one value per channel"
                    )
                arr = arr.reshape((arr.size,) + (1,) * (len(shape) - 1))
            out.append(arr)
        return out[0], out[1]

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Raw client batch ``(N, *raw_shape)`` -> members' float32 batch ``(N, *model_shape)`` (C-contiguous)."""
        arr = np.asarray(x, dtype=np.float32)
        if self.transpose_axes is not None:
            arr = arr.transpose(self.transpose_axes)
        scale, offset = self.arrays(arr.shape[1:])
        return np.ascontiguousarray(arr * scale + offset, dtype=np.float32)

    def invert(self, x: np.ndarray) -> np.ndarray:
        """Members' batch ``(N, *model_shape)`` -> the raw client values ``(N, *raw_shape)`` (float32)."""
        arr = np.asarray(x, dtype=np.float64)
        scale, offset = self.arrays(arr.shape[1:])
        raw = (arr - offset.astype(np.float64)) / scale.astype(np.float64)
        if self.layout == "nhwc":
            raw = raw.transpose(_NCHW_TO_NHWC)
        return np.ascontiguousarray(raw, dtype=np.float32)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: numbers or lists for scale/offset, and ``layout`` (null when None)."""

        def jsonable(v: Vector) -> float | list[float]:
            return list(v) if isinstance(v, tuple) else v

        return {"scale": jsonable(self.scale), "offset": jsonable(self.offset), "layout": self.layout}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "Preprocess":
        """Parse ``task.preprocess`` (missing keys: identity)."""
        if d is None:
            return cls()
        if not isinstance(d, Mapping):
            raise ManifestError("task.preprocess must be a JSON object; rebuild the bundle with the exporters")
        layout = d.get("layout")
        if layout is not None and not isinstance(layout, str):
            raise ManifestError(f"preprocess layout must be a string or null, not {layout!r}")
        return cls(scale=d.get("scale", 1.0), offset=d.get("offset", 0.0), layout=layout)


@dataclass(frozen=True)
class TaskSpec:
    """What the bundle classifies.

    ``input.shape`` is the *client's* shape: what ``run``, :meth:`AnytimeRuntime.predict` and the server
    accept (raw values, -1 = batch). The members' graph input ``x`` takes ``preprocess.apply(raw)``, of
    shape :attr:`model_input_shape`; the two differ only when ``preprocess.layout`` transposes (e.g. a
    client's ``(-1, H, W, C)`` for members taking ``(-1, C, H, W)``). Version-1 bundles have no layout, so
    there both shapes are the same, as they always were.
    """

    labels: tuple[str, ...]  # class labels, index = class id
    input: TensorSpec  # the one input tensor, in the client's (raw) shape
    preprocess: Preprocess = field(default_factory=Preprocess)

    def __post_init__(self) -> None:
        if len(self.labels) < 2:
            raise ManifestError("task.labels must name at least two classes")
        self.preprocess.arrays(self.preprocess.model_shape(self.input.shape[1:]))  # raises on a mismatch

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def model_input_shape(self) -> tuple[int, ...]:
        """Shape of the members' input ``x`` (-1 = batch): the client shape after the preprocess layout."""
        return (-1, *self.preprocess.model_shape(self.input.shape[1:]))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TaskSpec":
        return cls(
            labels=tuple(str(label) for label in _require(d, "labels", "task")),
            input=TensorSpec.from_dict(_require(d, "input", "task")),
            preprocess=Preprocess.from_dict(d.get("preprocess")),
        )


@dataclass(frozen=True)
class Connection:
    """A tensor an earlier member hands to this one (B-DISTIL's intermediate connections)."""

    input: str  # this member's graph input name
    member: int  # index of the earlier member that produces it
    output: str  # that member's graph output name

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Connection":
        where = "a member connection"
        return cls(
            input=str(_require(d, "input", where)),
            member=int(_require(d, "member", where)),
            output=str(_require(d, "output", where)),
        )


@dataclass(frozen=True)
class MemberSpec:
    """One ONNX member, evaluated in manifest order."""

    name: str  # unique within the bundle
    file: str  # path relative to the bundle root
    sha256: str  # hex digest of the file
    outputs: tuple[str, ...] = REQUIRED_OUTPUTS  # graph outputs (the required three plus features)
    connections: tuple[Connection, ...] = ()  # extra inputs fed from earlier members
    params: int = 0  # parameter count, for reports
    info: Mapping[str, Any] = field(default_factory=dict)  # free provenance: method, width, accuracy...

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MemberSpec":
        where = "a member"
        return cls(
            name=str(_require(d, "name", where)),
            file=str(_require(d, "file", where)),
            sha256=str(_require(d, "sha256", where)),
            outputs=tuple(str(o) for o in d.get("outputs", REQUIRED_OUTPUTS)),
            connections=tuple(Connection.from_dict(c) for c in d.get("connections", ())),
            params=int(d.get("params", 0)),
            info=dict(d.get("info", {})),
        )


@dataclass(frozen=True)
class Calibration:
    """The entropy exit threshold chosen on held-out data, and the trade-off it was chosen from."""

    entropy_threshold: float  # stop once the running ensemble's entropy <= this (nats)
    target: str  # how it was chosen, e.g. "accuracy within 0.5 point of the full ensemble"
    accuracy: float  # validation accuracy at this threshold
    mean_members: float  # mean members evaluated at this threshold
    curve: tuple[Mapping[str, float], ...] = ()  # {"threshold", "accuracy", "mean_members"} points

    def __post_init__(self) -> None:
        if not math.isfinite(self.entropy_threshold) or self.entropy_threshold < 0:
            raise ManifestError("calibration.entropy_threshold must be a finite number >= 0")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Calibration":
        where = "calibration"
        return cls(
            entropy_threshold=float(_require(d, "entropy_threshold", where)),
            target=str(d.get("target", "")),
            accuracy=float(d.get("accuracy", float("nan"))),
            mean_members=float(d.get("mean_members", float("nan"))),
            curve=tuple(dict(p) for p in d.get("curve", ())),
        )


@dataclass(frozen=True)
class Manifest:
    """The parsed ``manifest.json``. Build one with the constructor or :meth:`from_dict`."""

    name: str  # a human name for the bundle
    task: TaskSpec
    members: tuple[MemberSpec, ...]  # in evaluation order
    combine: str = "sum"  # how member logits combine inside the graphs: "sum", "mean" or "replace" (a cascade)
    calibration: Calibration | None = None
    # Latency/memory profiles keyed by device fingerprint (see edge_runtime.device). Each value holds at
    # least {"members": [{"name": str, "latency_ms": {"p50": float, "p90": float, "p99": float}}]}.
    profiles: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)  # provenance: data set, teacher, tool version
    version: int = MANIFEST_VERSION
    quantization: Quantization | None = None  # how an INT8 bundle was made (anytime-edge quantize); None: float

    def __post_init__(self) -> None:
        if self.version not in SUPPORTED_VERSIONS:
            raise ManifestError(
                f"manifest version {self.version} is not supported by this runtime (reads {list(SUPPORTED_VERSIONS)}); "
                "re-export the bundle or upgrade anytime-edge"
            )
        if self.version < 2 and not self.task.preprocess.is_scalar:
            raise ManifestError(
                "a version-1 manifest holds per-channel or layout preprocessing, which needs version 2; "
                "set version to 2 or re-export the bundle"
            )
        if not self.members:
            raise ManifestError("the manifest lists no members; export at least one model into the bundle")
        if self.combine not in COMBINE_RULES:
            raise ManifestError(f"combine '{self.combine}' is unknown; use one of {list(COMBINE_RULES)}")
        names = [m.name for m in self.members]
        if len(set(names)) != len(names):
            raise ManifestError(f"member names repeat: {names}; give each member a unique name")
        for k, member in enumerate(self.members):
            missing = [o for o in REQUIRED_OUTPUTS if o not in member.outputs]
            if missing:
                raise ManifestError(f"member '{member.name}' lacks outputs {missing}; re-export it")
            for conn in member.connections:
                if not 0 <= conn.member < k:
                    raise ManifestError(
                        f"member '{member.name}' takes '{conn.input}' from member {conn.member}, "
                        "which does not run before it; connections may only point to earlier members"
                    )
                if conn.output not in self.members[conn.member].outputs:
                    raise ManifestError(
                        f"member '{member.name}' takes '{conn.output}' from '{self.members[conn.member].name}', "
                        "which has no such output; re-export the ensemble"
                    )

    @property
    def num_members(self) -> int:
        return len(self.members)

    @property
    def chains_logits(self) -> bool:
        """True when members k > 1 take ``prev_logits`` (``"sum"``/``"mean"``); False for ``"replace"``."""
        return self.combine in CHAINED_RULES

    def member_latency_ms(self, fingerprint: str, quantile: str = "p99") -> list[float] | None:
        """Per-member latency at ``quantile`` from the profile of this device, or None if there is none."""
        profile = self.profiles.get(fingerprint)
        if not profile:
            return None
        rows = {row.get("name"): row for row in profile.get("members", ())}
        try:
            return [float(rows[m.name]["latency_ms"][quantile]) for m in self.members]
        except (KeyError, TypeError, ValueError):
            return None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Manifest":
        """Parse and validate a manifest dict; raises :class:`ManifestError` naming the fix."""
        if not isinstance(d, Mapping):
            raise ManifestError("manifest.json must hold a JSON object; rebuild the bundle with the exporters")
        if d.get("format") != BUNDLE_FORMAT:
            raise ManifestError(f"manifest.json is not an {BUNDLE_FORMAT} manifest (format={d.get('format')!r})")
        version = d.get("version")
        if not isinstance(version, int):
            raise ManifestError("manifest.json has no integer 'version'; rebuild the bundle with the exporters")
        try:
            calibration = d.get("calibration")
            quantization = d.get("quantization")
            return cls(
                name=str(d.get("name", "bundle")),
                task=TaskSpec.from_dict(_require(d, "task", "manifest")),
                members=tuple(MemberSpec.from_dict(m) for m in _require(d, "members", "manifest")),
                combine=str(d.get("combine", "sum")),
                calibration=Calibration.from_dict(calibration) if calibration else None,
                profiles=dict(d.get("profiles", {})),
                metadata=dict(d.get("metadata", {})),
                version=version,
                quantization=Quantization.from_dict(quantization) if quantization is not None else None,
            )
        except (TypeError, ValueError) as exc:
            raise ManifestError(f"manifest.json has a malformed field ({exc}); rebuild the bundle") from exc

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form written to ``manifest.json``."""
        d = asdict(self)
        d = {"format": BUNDLE_FORMAT, **d}
        d["task"]["input"]["shape"] = list(self.task.input.shape)
        if self.quantization is None:
            del d["quantization"]  # float bundles keep the manifest they always had
        else:
            d["quantization"] = self.quantization.to_dict()
        plain: dict[str, Any] = json.loads(json.dumps(d))  # tuples -> lists, a deep copy
        return plain


@dataclass(frozen=True)
class Bundle:
    """A loaded, verified bundle: the manifest plus every member's bytes (checksums already checked)."""

    source: Path  # the directory or .zip it came from
    manifest: Manifest
    member_bytes: tuple[bytes, ...]  # ONNX protobufs, in member order

    def with_manifest(self, manifest: Manifest) -> "Bundle":
        return replace(self, manifest=manifest)


def load_bundle(path: PathLike | Bundle, limits: LoadLimits | None = None) -> Bundle:
    """Read a bundle directory or ``.zip`` as untrusted input, validate the manifest, verify every member.

    Directory and archive go through the same checks (see ``edge_runtime._sources``): every file must
    resolve inside the bundle, sizes are capped by ``limits`` (from headers and while reading), and every
    parse failure becomes one line. Each member must match its sha256, be self-contained (no ONNX external
    data: ONNX Runtime would read such files from the working directory, and no checksum covers them) and
    take the manifest's input shape, which is checked before anything is allocated for it.

    Args:
        path: the bundle directory, a ``.zip`` of it (its contents, or one top-level folder holding them),
            or an already loaded :class:`Bundle`.
        limits: size caps; the defaults of :class:`LoadLimits` when None.

    Returns:
        The verified bundle, with member bytes held in memory.

    Raises:
        ManifestError: the manifest is missing, malformed or of an unknown version.
        ChecksumError: a member file is missing or was changed after export.
        ModelLoadError: a member is not well-formed ONNX, uses external data, or takes another input shape.
        BundleError: a file is unreadable, too large, outside the bundle, or the archive is damaged.
    """
    if isinstance(path, Bundle):
        return path
    limits = limits or LoadLimits()
    source = Path(path)
    with open_source(source, limits) as src:
        where = src.manifest_label
        data = decode_manifest(src.read_manifest(), where, limits.max_json_depth)
        manifest = _manifest_from_dict(data, where)
        check_sample_size(manifest, where, limits)
        blobs = []
        total = 0
        for member in manifest.members:
            check_member_file(member.file, member.name)
            blob = src.read_member(member.file, member.name, min(limits.max_member_bytes, limits.max_bundle_bytes - total))
            total += len(blob)
            if sha256_bytes(blob) != member.sha256:
                raise ChecksumError(
                    f"member '{member.name}' ({member.file}) does not match its sha256: the file was changed or "
                    "damaged after export; copy the bundle again"
                )
            check_member_graph(member, blob, manifest.task)
            blobs.append(blob)
    return Bundle(source=source, manifest=manifest, member_bytes=tuple(blobs))


def _manifest_from_dict(data: Mapping[str, Any], where: str) -> Manifest:
    try:
        return Manifest.from_dict(data)
    except ManifestError as exc:
        raise ManifestError(f"{where}: {exc}") from None
    # decode_manifest checked the JSON types; what remains is a value the dataclasses cannot convert.
    except (TypeError, ValueError, AttributeError, OverflowError, KeyError, IndexError, RecursionError) as exc:
        raise ManifestError(f"{where} has a malformed field ({error_line(exc)}); rebuild the bundle") from None


def save_manifest(path: PathLike, manifest: Manifest, *, lock: bool = True) -> None:
    """Replace the manifest of a bundle directory or ``.zip`` atomically.

    The new manifest is written beside the old one and renamed over it, so a reader sees either the old
    or the new manifest, never half of one. The file keeps its mode (a new one follows the umask). To
    change the manifest that is there, use :func:`update_manifest`, which reads it under the same lock.

    Args:
        path: the bundle directory or ``.zip``.
        manifest: the manifest to write.
        lock: hold the bundle's manifest lock while writing (False only for a private staging directory).

    Raises:
        BundleError: the bundle cannot be read, or its directory cannot be written.
    """
    source = Path(path)
    if not lock:
        _write_manifest(source, manifest)
        return
    with locked(_lock_target(source)):
        _write_manifest(source, manifest)


def update_manifest(path: PathLike, change: Callable[[Bundle], Manifest], limits: LoadLimits | None = None) -> Manifest:
    """Read, change and rewrite a bundle's manifest under its lock, so concurrent updates are never lost.

    ``calibrate`` and ``profile`` both read-modify-write ``manifest.json``; two of them at once used to lose
    one result. Here the bundle is loaded (and verified) *after* the lock is taken (``.manifest.json.lock``
    beside the manifest, or ``.<name>.zip.lock`` beside an archive), ``change`` builds the new manifest
    from it, and the write is atomic; stale temp files of a writer that died are removed first.

    Args:
        path: the bundle directory or ``.zip``.
        change: given the freshly loaded bundle, returns the manifest to write.
        limits: size caps for the load.

    Returns:
        The manifest as written.

    Raises:
        BundleError: the bundle cannot be read, verified or written, or another writer holds the lock too long.
    """
    source = Path(path)
    with locked(_lock_target(source)):
        manifest = change(load_bundle(source, limits))
        _write_manifest(source, manifest)
    return manifest


def _lock_target(source: Path) -> Path:
    try:
        is_dir = source.is_dir()
    except OSError:
        is_dir = False
    return source / MANIFEST_NAME if is_dir else source


def _write_manifest(source: Path, manifest: Manifest) -> None:
    text = (json.dumps(manifest.to_dict(), indent=2, sort_keys=False) + "\n").encode("utf-8")
    try:
        is_dir, is_file = source.is_dir(), source.is_file()
    except OSError as exc:
        raise BundleError(f"cannot reach {source} ({exc}); check the path and permissions") from None
    if is_dir:
        atomic_write(source / MANIFEST_NAME, text)
        return
    if not is_file:
        raise ManifestError(f"{source} is not a bundle directory or .zip; cannot save its manifest")
    bundle = load_bundle(source)  # the members to carry over, verified (and within the limits)
    with open_source(source, LoadLimits()) as src:
        prefix = src.archive_prefix

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as new:
            new.writestr(prefix + MANIFEST_NAME, text)
            for spec, blob in zip(bundle.manifest.members, bundle.member_bytes):
                new.writestr(prefix + spec.file, blob)

    atomic_write(source, write)


def connection_inputs(members: Sequence[MemberSpec]) -> set[tuple[int, str]]:
    """(member index, output name) pairs some later member consumes: what the runtime must keep."""
    return {(c.member, c.output) for m in members for c in m.connections}
