"""Profiles inside bundles: ``manifest.profiles[<device fingerprint>]``, written atomically.

A bundle carries one profile per device it was measured on, keyed by
:func:`edge_runtime.device.fingerprint`. The runtime's latency-budget policy reads
``manifest.member_latency_ms(find_profile_key(manifest.profiles), quantile)``; when the bundle has no
profile for the device it runs on, it falls back to the latencies it observes. Profiles of other devices
arrive as files (``anytime-edge profile BUNDLE --out device.json`` there) and are merged in by
:mod:`profiles.fleet`. A profile stored under the fingerprint scheme before ``v2-`` keys is still found
on the device that wrote it (see :mod:`edge_runtime.device`), and replaced when that device profiles again.

The profile JSON (version 1). Times are milliseconds, memory MiB, sizes bytes. A *latency record* is
``{"min", "p50", "p90", "p95", "p99", "max", "mean", "std", "queries"}``::

    {
      "profile_version": 1,
      "name": str,                      # bundle (or model) name
      "created_utc": ISO-8601 str,
      "fingerprint": str,               # the key it is stored under
      "device": {...},                  # edge_runtime.device.device_info(): CPU model, cores, OS, ORT
      "settings": {...},                # SessionConfig.describe() + cpu_affinity + thread env variables
      "measurement": {"mode", "min_queries", "min_seconds", "warmup_queries", "batch_sizes", "inputs"},
      "conditions": {"cpu_percent_system", "cpu_percent_process", "load_average"},  # during the run
      "model_size_bytes": int,          # all member files
      "memory_mb": {
        "method": str,                  # "fresh runtime process" (default) or "this process"
        "process_baseline": float,      # RSS before any session (Python, numpy, ORT imported)
        "rss_after_load": float,        # ... after every member's session was created
        "load": {"rss_sampled_peak_mb", "kernel_peak_mb", "kernel_peak_scope", "samples"},
        "run":  {"rss_sampled_peak_mb", "kernel_peak_mb", "kernel_peak_scope", "samples"}
      },
      "members": [                      # manifest order
        {"name", "file", "params", "size_bytes",
         "inputs": {input name: shape},
         "conditional_on": [member names],   # whose outputs it takes; its latency is given those ran
         "session_create_ms", "first_inference_ms", "rss_load_delta_mb",
         "latency_ms": <latency record at batch 1>,          # read by the runtime's budget policy
         "batches": {"<B>": {"latency_ms": <record>, "throughput_per_s"}}}
      ],
      "prefixes": [                     # members 1..k run in one pass: percentiles of the sum
        {"members": k, "latency_ms": <record at batch 1>, "batches": {"<B>": {...}}}
      ]
    }

``rss_sampled_peak_mb`` is the largest psutil RSS sample (taken between queries); ``kernel_peak_mb`` is
the kernel's high-water mark (VmHWM, the same counter ``ru_maxrss`` reads on Linux), with
``kernel_peak_scope`` ``phase`` when it was reset at the start of the phase and ``lifetime`` when it could
not be (see :mod:`profiles.memory`). The first member's ``rss_load_delta_mb`` includes ONNX Runtime's
one-off environment set-up (thread pools, allocators) that any process pays once.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any, Mapping

from edge_runtime.bundle import Bundle, Manifest, load_bundle, update_manifest
from edge_runtime.device import find_profile_key, legacy_fingerprint
from profiles.errors import ProfileError
from profiles.measure import PROFILE_VERSION, QUANTILES

__all__ = ["find_profile", "profile_key", "store_profile", "validate_profile", "with_profile"]


def validate_profile(profile: Mapping[str, Any], manifest: Manifest) -> None:
    """Check ``profile`` describes ``manifest``'s members, with every quantile the runtime may read.

    Raises:
        ProfileError: a member is missing or unknown, or a latency record lacks a quantile.
    """
    if profile.get("profile_version") != PROFILE_VERSION:
        raise ProfileError(
            f"profile version {profile.get('profile_version')!r} is not {PROFILE_VERSION}; profile the bundle again"
        )
    rows = profile.get("members")
    if not isinstance(rows, list):
        raise ProfileError("the profile has no 'members' list; profile the bundle again")
    names = [row.get("name") for row in rows]
    expected = [m.name for m in manifest.members]
    if names != expected:
        raise ProfileError(f"the profile covers members {names}, the bundle has {expected}; profile this bundle")
    for row in rows:
        latency = row.get("latency_ms", {})
        missing = [q for q in QUANTILES if not isinstance(latency.get(q), (int, float))]
        if missing:
            raise ProfileError(f"member '{row['name']}' latency lacks {missing}; profile the bundle again")


def store_profile(bundle: str | os.PathLike[str], profile: Mapping[str, Any]) -> Manifest:
    """Put ``profile`` into the bundle under its fingerprint and rewrite the manifest atomically.

    Other devices' profiles are kept; this device's is replaced, and so is its profile under the old
    fingerprint scheme (the key :func:`~edge_runtime.device.legacy_fingerprint` gives for the profile's
    ``device`` record). The manifest is read, verified and
    rewritten under the bundle's manifest lock (:func:`edge_runtime.bundle.update_manifest`), so a
    calibration or profile stored by another process meanwhile is kept.

    Args:
        bundle: the bundle directory or ``.zip`` (a path: the manifest is rewritten in place).
        profile: a profile from :func:`profiles.measure.profile_bundle`.

    Returns:
        The manifest as written.

    Raises:
        ProfileError: the profile does not describe this bundle's members.
        edge_runtime.errors.BundleError: the bundle is invalid.
    """
    profile_key(profile)  # refused before the lock is taken

    def add(loaded: Bundle) -> Manifest:  # runs under the manifest lock, on the manifest as it is now
        validate_profile(profile, loaded.manifest)
        return replace(loaded.manifest, profiles=with_profile(loaded.manifest.profiles, profile))

    return update_manifest(bundle, add)


def profile_key(profile: Mapping[str, Any]) -> str:
    """The fingerprint ``profile`` is stored under.

    Raises:
        ProfileError: the profile names no fingerprint.
    """
    key = profile.get("fingerprint")
    if not isinstance(key, str) or not key:
        raise ProfileError("the profile has no device fingerprint; profile the bundle again")
    return key


def with_profile(profiles: Mapping[str, Any], profile: Mapping[str, Any]) -> dict[str, Any]:
    """``profiles`` with ``profile`` under its fingerprint, less the same device's profile under its old key."""
    key = profile_key(profile)
    device = profile.get("device")
    old = legacy_fingerprint(device) if isinstance(device, Mapping) else None
    kept = {k: v for k, v in profiles.items() if k != old or k == key}
    return {**kept, key: dict(profile)}


def find_profile(bundle: str | os.PathLike[str] | Bundle | Manifest, fingerprint: str | None = None) -> dict[str, Any] | None:
    """The stored profile for ``fingerprint`` (this device by default) if it is usable, else None.

    This device's profile is the one under its current fingerprint, else under its old one (see
    :func:`edge_runtime.device.find_profile_key`). A profile that does not match the bundle's members
    (e.g. the bundle was re-exported) counts as none.
    """
    manifest = bundle if isinstance(bundle, Manifest) else load_bundle(bundle).manifest
    key = fingerprint or find_profile_key(manifest.profiles)
    profile = manifest.profiles.get(key) if key else None
    if not profile:
        return None
    try:
        validate_profile(profile, manifest)
    except ProfileError:
        return None
    return dict(profile)
