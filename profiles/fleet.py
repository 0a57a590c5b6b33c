"""Profiles from many devices: measure on each, carry the file, merge them into one bundle.

A factory PC that may not (or cannot) write into the bundle writes its profile to a file
(``anytime-edge profile BUNDLE --out device.json``); the files from the fleet are merged into the bundle's
manifest, one profile per device fingerprint (``anytime-edge profile merge BUNDLE device*.json``). The file
is the profile JSON of :mod:`profiles.store`, plus ``"bundle": {"name", "members": [{"name", "sha256"}]}``
naming the member files it was measured on, so a profile of another build of the bundle (same member
names, other weights) is refused instead of merged; the ``bundle`` record is not stored in the manifest.

Merging reads, checks and rewrites the manifest under the bundle's lock (the one ``calibrate`` and
``profile`` take, :func:`edge_runtime.bundle.update_manifest`): all files are checked first, and one bad
file leaves the bundle as it was.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from edge_runtime.bundle import Bundle, Manifest, update_manifest
from edge_runtime.files import atomic_write
from profiles.errors import ProfileError
from profiles.store import profile_key, validate_profile, with_profile

__all__ = ["MAX_PROFILE_BYTES", "merge_profiles", "read_profile_file", "write_profile_file"]

MAX_PROFILE_BYTES = 16 * 2**20  # a profile of a 100-member bundle is ~1 MB; larger files are refused unread


def _bundle_record(manifest: Manifest) -> dict[str, Any]:
    return {"name": manifest.name, "members": [{"name": m.name, "sha256": m.sha256} for m in manifest.members]}


def write_profile_file(path: str | os.PathLike[str], profile: Mapping[str, Any], manifest: Manifest) -> Path:
    """Write ``profile`` (measured on ``manifest``'s bundle) to ``path`` as JSON, atomically.

    Returns:
        The path written.

    Raises:
        ProfileError: the profile does not describe the bundle's members, or names no fingerprint.
        edge_runtime.errors.BundleError: the file's directory cannot be written.
    """
    profile_key(profile)
    validate_profile(profile, manifest)
    target = Path(path)
    doc = {**dict(profile), "bundle": _bundle_record(manifest)}
    atomic_write(target, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode("utf-8"))
    return target


def read_profile_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A profile file as written by :func:`write_profile_file` (or a profile JSON without ``bundle``).

    Raises:
        ProfileError: the file is missing, too large, not JSON, or not a profile (one line naming the fix).
    """
    source = Path(path)
    try:
        size = source.stat().st_size
        if size > MAX_PROFILE_BYTES:
            raise ProfileError(
                f"{source} is {size} bytes, over the {MAX_PROFILE_BYTES} of a profile; pass the .json "
                "that `anytime-edge profile BUNDLE --out` wrote"
            )
        doc = json.loads(source.read_bytes())
    except OSError as exc:
        raise ProfileError(f"cannot read profile {source} ({exc.strerror or exc}); check the path") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ProfileError(f"{source} is not JSON ({exc}); pass the file `anytime-edge profile BUNDLE --out` wrote") from None
    if not isinstance(doc, dict) or "members" not in doc:
        raise ProfileError(f"{source} is not a profile (no 'members'); pass the file `anytime-edge profile BUNDLE --out` wrote")
    return doc


def _check_against(profile: Mapping[str, Any], manifest: Manifest, label: str) -> dict[str, Any]:
    """The profile to store (without its ``bundle`` record), after checking it describes this bundle."""
    try:
        key = profile_key(profile)
        validate_profile(profile, manifest)
    except ProfileError as exc:
        raise ProfileError(f"{label}: {exc}") from None
    record = profile.get("bundle")
    if record is not None:
        ours = _bundle_record(manifest)["members"]
        theirs = record.get("members") if isinstance(record, dict) else None
        if theirs != ours:
            raise ProfileError(
                f"{label} was measured on other member files than this bundle's (sha256 differs); "
                f"profile this bundle on device {key} again"
            )
    return {k: v for k, v in profile.items() if k != "bundle"}


def merge_profiles(bundle: str | os.PathLike[str], profiles: Mapping[str, Mapping[str, Any]]) -> Manifest:
    """Store each profile in the bundle under its device fingerprint, all or none.

    A device's existing profile is replaced (as are its profiles under the old fingerprint scheme);
    other devices' are kept.

    Args:
        bundle: the bundle directory or ``.zip`` (rewritten in place).
        profiles: ``{label: profile}``, the label (e.g. the file name) naming each in error messages.

    Returns:
        The manifest as written.

    Raises:
        ProfileError: a profile does not describe this bundle, or two name the same device.
        edge_runtime.errors.BundleError: the bundle is invalid or cannot be written.
    """
    if not profiles:
        raise ProfileError("no profiles to merge; pass the .json files `anytime-edge profile BUNDLE --out` wrote")
    seen: dict[str, str] = {}
    for label, profile in profiles.items():
        try:
            key = profile_key(profile)
        except ProfileError as exc:
            raise ProfileError(f"{label}: {exc}") from None
        if key in seen:
            raise ProfileError(f"{seen[key]} and {label} both profile device {key}; merge one of them")
        seen[key] = label

    def add(loaded: Bundle) -> Manifest:  # under the manifest lock, on the manifest as it is now
        checked: Sequence[dict[str, Any]] = [_check_against(p, loaded.manifest, label) for label, p in profiles.items()]
        stored: Mapping[str, Any] = loaded.manifest.profiles
        for profile in checked:
            stored = with_profile(stored, profile)
        return replace(loaded.manifest, profiles=dict(stored))

    return update_manifest(bundle, add)
