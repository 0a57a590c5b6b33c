"""Property tests: whatever bytes arrive as a bundle, loading gives a verified bundle or a BundleError.

Generated inputs (Hypothesis): arbitrary JSON as manifest.json, valid manifests with random fields replaced,
deleted or added, manifest bytes with random edits, and zip archives with random byte edits, truncations
and made-up entries (paths climbing out, nested folders, OS metadata, other compression methods). For each,
``load_bundle`` and the ``inspect`` description must either succeed or raise
:class:`~edge_runtime.errors.BundleError`; any other exception is a bug (it would print a traceback).

Run with ``--hypothesis-show-statistics`` to see how many examples each property tried.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_runtime.bundle import MANIFEST_NAME, LoadLimits, load_bundle
from edge_runtime.cli.inspect import describe_bundle
from edge_runtime.errors import BundleError
from onnx_members import make_bundle

FUZZ = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
# Small caps keep each example cheap and exercise the size checks too.
LIMITS = LoadLimits(max_manifest_bytes=1 << 16, max_member_bytes=1 << 16, max_bundle_bytes=1 << 17)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("fuzz")
    bundle = make_bundle(root / "bundle", num_members=2, calibration=0.5)
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    manifest["profiles"] = {
        "dev": {
            "members": [
                {"name": "member_1", "latency_ms": {"p50": 1.0, "p99": 2.0}},
                {"name": "member_2", "latency_ms": {"p50": 1.0, "p99": 2.0}},
            ]
        }
    }
    (bundle / MANIFEST_NAME).write_text(json.dumps(manifest))
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for name in (MANIFEST_NAME, "member_1.onnx", "member_2.onnx"):
            z.write(bundle / name, name)
    work = root / "work"
    shutil.copytree(bundle, work)
    return {
        "bundle": bundle,
        "work": work,
        "manifest": manifest,
        "zip": archive.getvalue(),
        "zip_path": root / "fuzz.zip",
        "members": {n: (bundle / n).read_bytes() for n in ("member_1.onnx", "member_2.onnx")},
    }


def _load_or_bundle_error(path: Path) -> bool:
    """True if the bundle loaded (and describes itself), False on BundleError; anything else propagates."""
    try:
        load_bundle(path, LIMITS)
        describe_bundle(str(path))
        return True
    except BundleError as exc:
        assert "\n" not in str(exc), str(exc)
        return False


def _write_manifest(base: dict[str, Any], raw: bytes) -> Path:
    (base["work"] / MANIFEST_NAME).write_bytes(raw)
    return base["work"]


@FUZZ
@given(value=json_values)
def test_any_json_as_manifest_loads_or_is_a_bundle_error(base: dict[str, Any], value: Any) -> None:
    assert not _load_or_bundle_error(_write_manifest(base, json.dumps(value).encode()))


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, prefix + (i,))
    return out


def _mutate(manifest: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    m = json.loads(json.dumps(manifest))
    for _ in range(data.draw(st.integers(1, 3))):
        paths = [p for p in _paths(m) if p]
        path = data.draw(st.sampled_from(paths))
        parent = m
        for key in path[:-1]:
            parent = parent[key]
        action = data.draw(st.sampled_from(["replace", "delete", "add", "number"]))
        if action == "replace":
            parent[path[-1]] = data.draw(json_values)
        elif action == "number":
            parent[path[-1]] = data.draw(st.sampled_from([math.inf, -math.inf, math.nan, -1, 0, 2**63, 10**30, 1e308, True, 0.5]))
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[data.draw(st.text(max_size=6))] = data.draw(json_values)
        else:
            parent.append(data.draw(json_values))
    return m


@FUZZ
@given(data=st.data())
def test_mutated_manifests_load_or_are_a_bundle_error(base: dict[str, Any], data: st.DataObject) -> None:
    _load_or_bundle_error(_write_manifest(base, json.dumps(_mutate(base["manifest"], data)).encode()))


@FUZZ
@given(data=st.data())
def test_manifest_bytes_with_random_edits_load_or_are_a_bundle_error(base: dict[str, Any], data: st.DataObject) -> None:
    raw = bytearray(json.dumps(base["manifest"]).encode())
    for _ in range(data.draw(st.integers(1, 4))):
        if not raw:
            break
        pos = data.draw(st.integers(0, len(raw) - 1))
        edit = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if edit == "flip":
            raw[pos] = data.draw(st.integers(0, 255))
        elif edit == "insert":
            raw[pos:pos] = data.draw(
                st.binary(min_size=1, max_size=8) | st.sampled_from([b"[" * 200, b"1e999", b"NaN", b"\xff\xfe"])
            )
        elif edit == "delete":
            del raw[pos : pos + data.draw(st.integers(1, 8))]
        else:
            del raw[pos:]
    _load_or_bundle_error(_write_manifest(base, bytes(raw)))


@FUZZ
@given(data=st.data())
def test_zip_archives_with_random_byte_edits_load_or_are_a_bundle_error(base: dict[str, Any], data: st.DataObject) -> None:
    raw = bytearray(base["zip"])
    for _ in range(data.draw(st.integers(1, 4))):
        if len(raw) < 2:
            break
        # Headers are where damage matters: favour the first and last 200 bytes (local header, central directory).
        region = data.draw(st.sampled_from(["head", "tail", "anywhere"]))
        lo, hi = {"head": (0, 200), "tail": (len(raw) - 200, len(raw) - 1), "anywhere": (0, len(raw) - 1)}[region]
        pos = data.draw(st.integers(max(lo, 0), max(min(hi, len(raw) - 1), 0)))
        edit = data.draw(st.sampled_from(["flip", "byte", "truncate", "insert"]))
        if edit == "flip":
            raw[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif edit == "byte":
            raw[pos] = data.draw(st.integers(0, 255))
        elif edit == "truncate":
            del raw[pos:]
        else:
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
    base["zip_path"].write_bytes(bytes(raw))
    _load_or_bundle_error(base["zip_path"])


entry_names = st.sampled_from(
    [
        MANIFEST_NAME,
        "member_1.onnx",
        "member_2.onnx",
        "b/manifest.json",
        "b/member_1.onnx",
        "b/member_2.onnx",
        "__MACOSX/b/._manifest.json",
        ".DS_Store",
        "b/.DS_Store",
        "../member_1.onnx",
        "/abs",
        "b/",
        "c/x",
        "",
    ]
)


@FUZZ
@given(data=st.data())
def test_made_up_archives_load_or_are_a_bundle_error(base: dict[str, Any], data: st.DataObject) -> None:
    manifest_bytes = json.dumps(_mutate(base["manifest"], data) if data.draw(st.booleans()) else base["manifest"]).encode()
    contents = {MANIFEST_NAME: manifest_bytes, **base["members"]}
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w") as z:
        warnings.simplefilter("ignore", UserWarning)  # duplicate names are part of the attack
        for _ in range(data.draw(st.integers(0, 6))):
            name = data.draw(entry_names)
            if not name:
                continue
            body = data.draw(st.sampled_from([contents.get(name.split("/")[-1], b""), b"", manifest_bytes, b"\0" * 70000]))
            method = data.draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]))
            z.writestr(zipfile.ZipInfo(name), body, compress_type=method)
    base["zip_path"].write_bytes(buf.getvalue())
    _load_or_bundle_error(base["zip_path"])


def test_the_unmutated_inputs_load(base: dict[str, Any]) -> None:
    """The properties above start from inputs that load, so a mutation is what makes them fail."""
    _write_manifest(base, json.dumps(base["manifest"]).encode())
    assert _load_or_bundle_error(base["work"])
    base["zip_path"].write_bytes(base["zip"])
    assert _load_or_bundle_error(base["zip_path"])
