"""Write bundles: member ONNX bytes + a manifest, into one directory, atomically.

The bundle is assembled in a temporary directory beside the target and renamed into place, so a crash or
a failed gate never leaves half a bundle where a runtime might load it. Checksums are computed here, from
the exact bytes written.
"""

from __future__ import annotations

import os
import shutil
import stat
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from edge_runtime.bundle import MANIFEST_NAME, Manifest, MemberSpec, load_bundle, save_manifest, sha256_bytes
from edge_runtime.files import atomic_write, locked, make_dir
from exporters.errors import ExportError

__all__ = ["archive_bundle", "write_bundle"]


def write_bundle(
    out_dir: str | os.PathLike[str], manifest: Manifest, member_bytes: Sequence[bytes], *, overwrite: bool = True
) -> Path:
    """Write ``manifest`` and its members to ``out_dir`` (a directory), atomically.

    Each member's ``file`` and ``sha256`` are (re)set from ``member_bytes``: ``file`` defaults to
    ``<name>.onnx`` when empty. The result is loaded back and verified before it replaces ``out_dir``.

    Args:
        out_dir: target directory; replaced as a whole if it exists and ``overwrite`` is true.
        manifest: the manifest (member sha256 values may be placeholders).
        member_bytes: ONNX bytes in member order.
        overwrite: replace an existing ``out_dir``; otherwise raise.

    Returns:
        The bundle directory.

    Raises:
        ExportError: counts disagree, or ``out_dir`` exists and ``overwrite`` is false.
    """
    target = Path(out_dir)
    if len(member_bytes) != len(manifest.members):
        raise ExportError(f"{len(member_bytes)} member files for {len(manifest.members)} manifest members")
    if target.exists() and not overwrite:
        raise ExportError(f"{target} exists; choose another --out or remove it")
    members: list[MemberSpec] = []
    for spec, blob in zip(manifest.members, member_bytes):
        members.append(replace(spec, file=spec.file or f"{spec.name}.onnx", sha256=sha256_bytes(blob)))
    manifest = replace(manifest, members=tuple(members))
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_dirs(target)  # left by an export that was killed
    # Not mkdtemp: its 0700 would survive the rename and lock out every other user (make_dir follows the
    # umask). The PID in the name tells a later export whether the writer is still alive.
    staging = make_dir(target.parent, f".{target.name}.staging.{os.getpid()}.")
    try:
        for spec, blob in zip(members, member_bytes):
            path = staging / spec.file
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(blob)
        save_manifest(staging, manifest, lock=False)  # a private directory: nobody else writes it
        load_bundle(staging)  # the bundle must load before anyone else can see it
        if target.exists():
            os.chmod(staging, stat.S_IMODE(target.stat().st_mode))  # a re-export keeps the directory's mode
            trash = make_dir(target.parent, f".{target.name}.old.{os.getpid()}.")
            os.replace(target, trash / "old")
            os.replace(staging, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _remove_stale_dirs(target: Path) -> None:
    """Remove ``.<name>.staging.<pid>.*`` / ``.<name>.old.<pid>.*`` directories whose writer process is gone."""
    for kind in ("staging", "old"):
        prefix = f".{target.name}.{kind}."
        for path in target.parent.iterdir():
            pid = path.name[len(prefix) :].split(".", 1)[0]
            if path.name.startswith(prefix) and pid.isdigit() and not _alive(int(pid)):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, owned by someone else
        return True
    return True


def archive_bundle(bundle_dir: str | os.PathLike[str], archive: str | os.PathLike[str]) -> Path:
    """Pack a bundle directory into one ``.zip`` file (atomically), loadable by ``edge_runtime.load``.

    Raises:
        ExportError: ``bundle_dir`` is not a directory (e.g. already an archive), or the archive's folder
            does not exist.
        edge_runtime.errors.BundleError: the bundle fails to load, or the archive cannot be written.
    """
    source = Path(bundle_dir)
    bundle = load_bundle(source)
    if not source.is_dir():
        raise ExportError(f"{source} is not a bundle directory (already an archive?); pass the directory to pack")
    target = Path(archive)
    if not target.parent.exists():
        raise ExportError(f"{target.parent} does not exist; create it or choose another archive path")

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(MANIFEST_NAME, (source / MANIFEST_NAME).read_bytes())
            for spec, blob in zip(bundle.manifest.members, bundle.member_bytes):
                zf.writestr(spec.file, blob)  # the verified bytes, not a second read of the files

    with locked(target):  # the archive's manifest lock: no calibrate/profile rewrites it meanwhile
        atomic_write(target, write)  # mode: the umask for a new archive, the old mode for a rewrite
    load_bundle(target)
    return target
