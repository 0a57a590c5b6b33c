"""Decoding ``manifest.json`` from untrusted bytes: valid UTF-8 JSON, bounded nesting, the right JSON types.

:meth:`edge_runtime.bundle.Manifest.from_dict` turns a dict into the manifest's dataclasses and checks
values; it assumes each field already has the right JSON type. This module makes that so, naming the field
that is wrong (``task.preprocess must be an object, not a string``) before any ``int()``/``.get()`` call could
raise ``OverflowError`` (``Infinity`` where an integer belongs) or ``AttributeError`` (a string where an
object belongs). Unknown keys are allowed (newer writers may add fields); absent keys are left to
``from_dict``, which says which one is missing.
"""

from __future__ import annotations

import json
import math
from typing import Any

from edge_runtime.errors import ManifestError, error_line

__all__ = ["decode_manifest"]

# A type spec: a JSON kind ("object", "array", "string", "integer", "number", "finite", "boolean",
# "null"), alternatives joined by "|", a dict (an object whose listed keys have those specs; "*" = every
# value), or a one-element list (an array whose items have that spec).
_LATENCY = {"*": "finite|null"}
_SPEC: dict[str, Any] = {
    "name": "string",
    "combine": "string",
    "version": "integer",
    "task": {
        "labels": ["string"],
        "input": {"name": "string", "shape": ["integer"], "dtype": "string"},
        "preprocess": "object|null",
    },
    "members": [
        {
            "name": "string",
            "file": "string",
            "sha256": "string",
            "outputs": ["string"],
            "connections": [{"input": "string", "member": "integer", "output": "string"}],
            "params": "integer",
            "info": "object",
        }
    ],
    "calibration": "object|null",
    "profiles": {"*": {"members": [{"name": "string", "latency_ms": _LATENCY}], "device": "object|null"}},
    "metadata": "object",
    "quantization": "object|null",
}
_CALIBRATION = {
    "entropy_threshold": "finite",
    "target": "string",
    "accuracy": "number",
    "mean_members": "number",
    "curve": ["object"],
}
_QUANTIZATION = {
    "method": "string",
    "weight_type": "string",
    "activation_type": "string|null",
    "per_channel": "boolean",
    "calibration": "string|null",
    "calibration_samples": "integer",
    "float_head": "boolean",
    "tool": "string",
    "source": "object",
    "gates": "object",
}


def decode_manifest(raw: bytes, where: str, max_depth: int) -> dict[str, Any]:
    """Decode ``raw`` into a manifest dict whose known fields have the right JSON types.

    Args:
        raw: the bytes of ``manifest.json``.
        where: how messages name the file (e.g. ``bundle/manifest.json``).
        max_depth: the deepest nesting of objects/arrays allowed.

    Raises:
        ManifestError: not UTF-8, not JSON, nested too deeply, or a field of the wrong type (one line).
    """
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{where} is not UTF-8 text ({exc.reason} at byte {exc.start}); rebuild the bundle") from None
    try:
        data = json.loads(text)
    except RecursionError:
        raise ManifestError(f"{where} nests JSON too deeply to parse; rebuild the bundle") from None
    except ValueError as exc:  # JSONDecodeError, and integers with more digits than Python converts
        raise ManifestError(f"{where} is not valid JSON ({error_line(exc)}); rebuild the bundle") from None
    _check_depth(data, where, max_depth)
    if not isinstance(data, dict):
        raise ManifestError(f"{where} must hold a JSON object, not {_kind(data)}; rebuild the bundle with the exporters")
    _check(data, _SPEC, "", where)
    if isinstance(data.get("calibration"), dict):
        _check(data["calibration"], _CALIBRATION, "calibration", where)
    if isinstance(data.get("quantization"), dict):
        _check(data["quantization"], _QUANTIZATION, "quantization", where)
    return data


def _check_depth(data: Any, where: str, max_depth: int) -> None:
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > max_depth:
                raise ManifestError(f"{where} nests JSON deeper than {max_depth} levels; rebuild the bundle")
            children = value.values() if isinstance(value, dict) else value
            stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))


def _check(value: Any, spec: Any, path: str, where: str) -> None:
    if isinstance(spec, str):
        kinds = spec.split("|")
        if not any(_is(value, kind) for kind in kinds):
            shown = "a non-finite number" if isinstance(value, float) and not math.isfinite(value) else _kind(value)
            wanted = " or ".join("a finite number" if k == "finite" else _article(k) for k in kinds)
            raise ManifestError(f"{where}: {path or 'the top level'} must be {wanted}, not {shown}; rebuild the bundle")
        return
    if isinstance(spec, list):
        _check(value, "array", path, where)
        for i, item in enumerate(value):
            _check(item, spec[0], f"{path}[{i}]", where)
        return
    _check(value, "object", path, where)
    for key, sub in spec.items():
        if key == "*":
            for k, item in value.items():
                _check(item, sub, _join(path, k), where)
        elif key in value:
            _check(value[key], sub, _join(path, key), where)


def _is(value: Any, kind: str) -> bool:
    if kind == "object":
        return isinstance(value, dict)
    if kind == "array":
        return isinstance(value, list)
    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "finite":
        return _is(value, "number") and math.isfinite(value)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "null":
        return value is None
    raise AssertionError(kind)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number" if math.isfinite(value) else "a non-finite number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _article(kind: str) -> str:
    return kind if kind == "null" else ("an " if kind[0] in "aeiou" else "a ") + kind


def _join(path: str, key: str) -> str:
    key = key if len(key) <= 40 else key[:37] + "..."
    return f"{path}.{key}" if path else key
