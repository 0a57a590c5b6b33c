"""The bundle format: round trip, checksums, validation messages, atomic manifest updates."""

from __future__ import annotations

import json
import zipfile
from dataclasses import replace
from pathlib import Path

import jsonschema
import pytest

from edge_runtime.bundle import MANIFEST_NAME, Calibration, Manifest, load_bundle, save_manifest
from edge_runtime.errors import ChecksumError, ManifestError
from exporters.bundle import archive_bundle


def test_round_trip_keeps_the_manifest(connected_bundle: Path) -> None:
    bundle = load_bundle(connected_bundle)
    assert bundle.manifest.num_members == 3
    assert bundle.manifest.members[1].connections[0].member == 0
    again = Manifest.from_dict(bundle.manifest.to_dict())
    assert again == bundle.manifest


def test_tampered_member_is_rejected(tiny_bundle: Path) -> None:
    path = tiny_bundle / "member_2.onnx"
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ChecksumError, match="member_2"):
        load_bundle(tiny_bundle)


def test_missing_member_is_rejected(tiny_bundle: Path) -> None:
    (tiny_bundle / "member_3.onnx").unlink()
    with pytest.raises(ChecksumError, match="missing"):
        load_bundle(tiny_bundle)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(version=99), "version 99"),
        (lambda d: d.update(format="other"), "not an anytime-edge-bundle"),
        (lambda d: d.update(members=[]), "no members"),
        (lambda d: d["members"][1].update(connections=[{"input": "a", "member": 2, "output": "features"}]), "earlier"),
        (lambda d: d["task"]["input"].update(shape=[1, 4, 4]), "batch"),
        (lambda d: d.pop("task"), "lacks 'task'"),
    ],
)
def test_bad_manifest_says_what_is_wrong(tiny_bundle: Path, edit, message: str) -> None:
    path = tiny_bundle / MANIFEST_NAME
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=message):
        load_bundle(tiny_bundle)


def test_manifest_that_is_not_json(tiny_bundle: Path) -> None:
    (tiny_bundle / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_bundle(tiny_bundle)


def test_archive_loads_and_saves_manifest(tiny_bundle: Path, tmp_path: Path) -> None:
    archive = archive_bundle(tiny_bundle, tmp_path / "b.zip")
    bundle = load_bundle(archive)
    updated = replace(bundle.manifest, calibration=Calibration(0.25, "test", 0.9, 1.5))
    save_manifest(archive, updated)
    assert load_bundle(archive).manifest.calibration.entropy_threshold == 0.25
    with zipfile.ZipFile(archive) as zf:
        assert sorted(zf.namelist()) == sorted([MANIFEST_NAME, "member_1.onnx", "member_2.onnx", "member_3.onnx"])


def test_manifest_matches_json_schema(connected_bundle: Path) -> None:
    schema = json.loads((Path(__file__).parents[1] / "edge_runtime" / "manifest.schema.json").read_text())
    jsonschema.validate(json.loads((connected_bundle / MANIFEST_NAME).read_text()), schema)
