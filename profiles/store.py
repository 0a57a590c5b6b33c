"""Profiles inside bundles: ``manifest.profiles[<device fingerprint>]``, written atomically.

A bundle carries one profile per device it was measured on, keyed by
:func:`edge_runtime.device.fingerprint`. The runtime's latency-budget policy reads
``manifest.member_latency_ms(fingerprint(), quantile)``; when the bundle has no profile for the device
it runs on, it falls back to the latencies it observes.

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
from edge_runtime.device import fingerprint as device_fingerprint
from profiles.errors import ProfileError
from profiles.measure import PROFILE_VERSION, QUANTILES

__all__ = ["find_profile", "store_profile", "validate_profile"]


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

    Other devices' profiles are kept; this device's is replaced. The manifest is read, verified and
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
    key = str(profile.get("fingerprint") or "")
    if not key:
        raise ProfileError("the profile has no device fingerprint; profile the bundle again")

    def add(loaded: Bundle) -> Manifest:  # runs under the manifest lock, on the manifest as it is now
        validate_profile(profile, loaded.manifest)
        return replace(loaded.manifest, profiles={**loaded.manifest.profiles, key: dict(profile)})

    return update_manifest(bundle, add)


def find_profile(bundle: str | os.PathLike[str] | Bundle | Manifest, fingerprint: str | None = None) -> dict[str, Any] | None:
    """The stored profile for ``fingerprint`` (this device by default) if it is usable, else None.

    A profile that does not match the bundle's members (e.g. the bundle was re-exported) counts as none.
    """
    manifest = bundle if isinstance(bundle, Manifest) else load_bundle(bundle).manifest
    profile = manifest.profiles.get(fingerprint or device_fingerprint())
    if not profile:
        return None
    try:
        validate_profile(profile, manifest)
    except ProfileError:
        return None
    return dict(profile)
