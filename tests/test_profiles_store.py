"""Profiles stored in bundles: keyed by device, read back by the runtime's budget policy, atomic."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import jsonschema
import pytest

from edge_runtime.bundle import MANIFEST_NAME, load_bundle, save_manifest
from edge_runtime.device import fingerprint
from exporters.bundle import archive_bundle
from onnx_members import make_bundle
from profiles import MeasureConfig, ProfileError, find_profile, profile_bundle, store_profile

FAST = MeasureConfig(min_queries=20, min_seconds=0.0, warmup_queries=2, batch=2, pool=4, memory_probe=False)


def test_stored_profile_feeds_the_runtime_budget_policy(connected_bundle: Path) -> None:
    profile = profile_bundle(connected_bundle, FAST)
    store_profile(connected_bundle, profile)
    manifest = load_bundle(connected_bundle).manifest
    for quantile in ("p50", "p90", "p99", "max"):
        expected = [m["latency_ms"][quantile] for m in profile["members"]]
        assert manifest.member_latency_ms(fingerprint(), quantile) == expected
    assert find_profile(connected_bundle) == profile


def test_other_devices_profiles_are_kept(tiny_bundle: Path) -> None:
    other = profile_bundle(tiny_bundle, FAST) | {"fingerprint": "another-device"}
    store_profile(tiny_bundle, other)
    store_profile(tiny_bundle, profile_bundle(tiny_bundle, FAST))
    profiles = load_bundle(tiny_bundle).manifest.profiles
    assert set(profiles) == {"another-device", fingerprint()}
    assert find_profile(tiny_bundle, "another-device") == other
    assert find_profile(tiny_bundle, "never-measured") is None


def test_profile_of_another_bundle_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    three = make_bundle(tmp_path / "three", num_members=3)
    two = make_bundle(tmp_path / "two", num_members=2)
    before = (two / MANIFEST_NAME).read_bytes()
    with pytest.raises(ProfileError, match="covers members"):
        store_profile(two, profile_bundle(three, FAST))
    assert (two / MANIFEST_NAME).read_bytes() == before


def test_profile_missing_a_quantile_is_refused(tiny_bundle: Path) -> None:
    profile = profile_bundle(tiny_bundle, FAST)
    del profile["members"][1]["latency_ms"]["p95"]
    with pytest.raises(ProfileError, match="p95"):
        store_profile(tiny_bundle, profile)


def test_stale_profile_counts_as_none(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b", num_members=3)
    store_profile(bundle, profile_bundle(bundle, FAST))
    manifest = load_bundle(bundle).manifest
    shorter = make_bundle(tmp_path / "b2", num_members=2)
    save_manifest(shorter, replace(load_bundle(shorter).manifest, profiles=manifest.profiles))
    assert find_profile(shorter) is None


def test_profiled_manifest_matches_the_schema(connected_bundle: Path) -> None:
    store_profile(connected_bundle, profile_bundle(connected_bundle, FAST))
    schema = json.loads((Path(__file__).parents[1] / "edge_runtime" / "manifest.schema.json").read_text())
    jsonschema.validate(json.loads((connected_bundle / MANIFEST_NAME).read_text()), schema)


def test_zip_bundle_takes_a_profile(tiny_bundle: Path, tmp_path: Path) -> None:
    archive = archive_bundle(tiny_bundle, tmp_path / "b.zip")
    store_profile(archive, profile_bundle(archive, FAST))
    assert load_bundle(archive).manifest.member_latency_ms(fingerprint(), "p50") is not None
