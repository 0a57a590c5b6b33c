"""Where a bundle's bytes come from: a directory or a ``.zip``, read as untrusted input within limits.

Both kinds of source obey the same rules, so ``run``, ``inspect``, ``serve``, ``calibrate`` and ``profile``
get them alike:

* every file read (``manifest.json`` and each member) must resolve inside the bundle: a name that is
  absolute or holds ``..`` is refused, and so is a symlink whose target lies outside the bundle directory;
  only regular files are read (a FIFO would block the reader forever);
* sizes are capped (:class:`LoadLimits`): from the file size or the zip header *before* reading, and again
  while reading or inflating, since a zip header can lie;
* every failure is a :class:`~edge_runtime.errors.BundleError` with one line naming the file and the fix:
  permissions, damaged or encrypted archives, unknown compression methods, CRC errors.

Archives made the usual way (``zip -r bundle.zip bundle``) hold the bundle in one top-level folder; that
folder is used as the root. OS metadata entries (``__MACOSX/``, ``.DS_Store``, ``Thumbs.db``) are ignored.
"""

from __future__ import annotations

import os
import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from edge_runtime.errors import BundleError, ChecksumError, ManifestError, error_line

__all__ = ["BundleSource", "LoadLimits", "check_member_file", "open_source"]

MANIFEST_NAME = "manifest.json"
_MiB = 1 << 20
_CHUNK = 1 << 20
_OS_METADATA = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})
_SUPPORTED_METHODS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA})
try:
    import lzma

    _LZMA_ERRORS: tuple[type[BaseException], ...] = (lzma.LZMAError,)
except ImportError:  # pragma: no cover - Python built without lzma
    _LZMA_ERRORS = ()
# What zipfile raises on damaged input: bad headers, CRC errors (BadZipFile), decompressor errors, short
# reads (EOFError), struct unpacking of truncated headers, out-of-range offsets (ValueError/OverflowError),
# bz2's OSError on a bad stream, NotImplementedError/RuntimeError on unsupported or encrypted entries.
_ZIP_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    EOFError,
    struct.error,
    ValueError,
    OverflowError,
    NotImplementedError,
    RuntimeError,
    IndexError,
    KeyError,
    OSError,
    *_LZMA_ERRORS,
)


@dataclass(frozen=True)
class LoadLimits:
    """Caps on what loading one bundle may read: an untrusted bundle must not exhaust memory or time.

    The defaults fit any bundle the exporters make for a modest CPU with a wide margin; raise them for
    an unusually large member.
    """

    max_manifest_bytes: int = 16 * _MiB  # manifest.json (calibration curves and profiles are a few KiB)
    max_member_bytes: int = 1024 * _MiB  # one member .onnx (protobuf itself stops at 2 GiB)
    max_bundle_bytes: int = 4096 * _MiB  # all members together
    max_sample_elements: int = 1 << 26  # elements of one input sample, prod(task.input.shape[1:]) (256 MiB float32)
    max_json_depth: int = 64  # nesting of JSON objects/arrays in manifest.json

    def __post_init__(self) -> None:
        for name in ("max_manifest_bytes", "max_member_bytes", "max_bundle_bytes", "max_sample_elements", "max_json_depth"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BundleError(f"LoadLimits.{name} must be a positive integer, not {value!r}")


def check_member_file(name: str, member: str) -> str:
    """Check a member's ``file`` is a plain relative path inside the bundle; return it.

    Raises:
        ManifestError: the name is empty, absolute, uses backslashes or NUL, or climbs out with ``..``.
    """
    bad = (
        not name
        or "\0" in name
        or "\\" in name
        or name.startswith("/")
        or (len(name) > 1 and name[1] == ":")
        or any(part in ("..", "") for part in name.split("/"))
    )
    if bad or PurePosixPath(name).is_absolute():
        raise ManifestError(
            f"member '{member}' file {name!r} is not a relative path inside the bundle ('/'-separated, no '..'); "
            "rebuild the bundle with the exporters"
        )
    return name


class BundleSource:
    """An open bundle directory or archive; use as a context manager (archives hold a file open)."""

    def __init__(self, path: Path, limits: LoadLimits) -> None:
        self.path = path
        self.limits = limits

    @property
    def manifest_label(self) -> str:
        """How messages name the manifest, e.g. ``bundle/manifest.json`` or ``b.zip:bundle/manifest.json``."""
        raise NotImplementedError

    @property
    def archive_prefix(self) -> str:
        """The folder inside an archive that holds the bundle ('' for a flat archive or a directory)."""
        return ""

    def read_manifest(self) -> bytes:
        raise NotImplementedError

    def read_member(self, name: str, member: str, cap: int) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "BundleSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_source(path: Path, limits: LoadLimits) -> BundleSource:
    """Open the bundle at ``path`` (a directory or an archive).

    Raises:
        BundleError: the path does not exist, cannot be read, or is not a usable bundle (one line).
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ManifestError(f"bundle {path} does not exist; check the path") from None
    except OSError as exc:
        raise _unreadable(path, path, exc) from None
    if stat.S_ISDIR(st.st_mode):
        return _DirSource(path, limits)
    if stat.S_ISREG(st.st_mode):
        return _ZipSource(path, limits)
    raise ManifestError(f"{path} is neither a bundle directory nor a .zip bundle")


class _DirSource(BundleSource):
    def __init__(self, path: Path, limits: LoadLimits) -> None:
        super().__init__(path, limits)
        try:
            self.root = path.resolve(strict=True)
        except OSError as exc:
            raise _unreadable(path, path, exc) from None

    @property
    def manifest_label(self) -> str:
        return str(self.path / MANIFEST_NAME)

    def read_manifest(self) -> bytes:
        return self._read(MANIFEST_NAME, "manifest", self.limits.max_manifest_bytes)

    def read_member(self, name: str, member: str, cap: int) -> bytes:
        return self._read(name, f"member '{member}'", cap)

    def _read(self, name: str, what: str, cap: int) -> bytes:
        shown = self.path / name
        try:
            resolved = (self.root / name).resolve()
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
            raise BundleError(f"{shown} cannot be resolved ({exc}); copy the bundle again") from None
        if self.root not in resolved.parents:
            raise BundleError(
                f"{what} file {shown} resolves outside the bundle (to {resolved}); every bundle file must lie "
                "inside the bundle directory: copy the real file in place of the link"
            )
        try:
            fd = os.open(resolved, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        except FileNotFoundError:
            if name == MANIFEST_NAME:
                raise ManifestError(
                    f"{self.path} has no {MANIFEST_NAME}; point at a bundle directory made by the exporters"
                ) from None
            raise ChecksumError(f"{what} file '{name}' is missing from {self.path}; copy the whole bundle") from None
        except OSError as exc:
            raise _unreadable(self.path, shown, exc) from None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise BundleError(f"{what} file {shown} is not a regular file; copy the bundle again")
            if st.st_size > cap:
                raise _too_big(what, str(shown), st.st_size, cap)
            try:
                data = f.read(cap + 1)
            except OSError as exc:
                raise _unreadable(self.path, shown, exc) from None
        if len(data) > cap:
            raise _too_big(what, str(shown), cap, cap, exact=False)
        return data


class _ZipSource(BundleSource):
    def __init__(self, path: Path, limits: LoadLimits) -> None:
        super().__init__(path, limits)
        try:
            self.archive = zipfile.ZipFile(path)
        except PermissionError as exc:
            raise _unreadable(path, path, exc) from None
        except _ZIP_ERRORS as exc:
            if path.suffix.lower() != ".zip" and isinstance(exc, zipfile.BadZipFile):
                raise ManifestError(f"{path} is neither a bundle directory nor a .zip bundle") from None
            raise BundleError(f"{path} is not a readable zip archive ({error_line(exc)}); copy the bundle again") from None
        try:
            self.entries = {info.filename: info for info in self.archive.infolist()}
            self.prefix = self._find_root()
        except BaseException:
            self.archive.close()
            raise

    @property
    def manifest_label(self) -> str:
        return f"{self.path}:{self.prefix}{MANIFEST_NAME}"

    @property
    def archive_prefix(self) -> str:
        return self.prefix

    def _find_root(self) -> str:
        if MANIFEST_NAME in self.entries:
            return ""
        content = [n for n in self.entries if not _os_metadata(n)]
        tops = {n.split("/", 1)[0] for n in content}
        if len(tops) == 1:
            top = next(iter(tops))
            if f"{top}/{MANIFEST_NAME}" in self.entries:
                return f"{top}/"
        nested = sorted(n for n in content if n.endswith(f"/{MANIFEST_NAME}"))
        if nested:
            raise ManifestError(
                f"{self.path.name} holds {nested[0]}, not {MANIFEST_NAME} at its root (nor in its only top-level folder); "
                "zip the bundle's contents (cd bundle && zip -r ../bundle.zip .) or use `anytime-edge export --zip`"
            )
        raise ManifestError(
            f"{self.path.name} holds no {MANIFEST_NAME}; it is not a bundle archive "
            "(zip a bundle directory's contents, or use `anytime-edge export --zip`)"
        )

    def read_manifest(self) -> bytes:
        return self._read(MANIFEST_NAME, "manifest", self.limits.max_manifest_bytes)

    def read_member(self, name: str, member: str, cap: int) -> bytes:
        return self._read(name, f"member '{member}'", cap)

    def _read(self, name: str, what: str, cap: int) -> bytes:
        entry = self.prefix + name
        shown = f"{self.path.name}:{entry}"
        info = self.entries.get(entry)
        if info is None or info.is_dir():
            raise ChecksumError(f"{what} file '{entry}' is missing from {self.path.name}; rebuild the archive")
        if info.flag_bits & 0x1:
            raise BundleError(f"{shown} is encrypted; zip the bundle without a password")
        if info.compress_type not in _SUPPORTED_METHODS:
            raise BundleError(
                f"{shown} uses zip compression method {info.compress_type}, which this runtime does not read; "
                "re-zip the bundle with deflate (`anytime-edge export --zip` or `zip -r`)"
            )
        if info.file_size > cap:
            raise _too_big(what, shown, info.file_size, cap)
        out = bytearray()
        try:
            with self.archive.open(info) as f:
                while chunk := f.read(_CHUNK):
                    out += chunk
                    if len(out) > cap:  # the header lied: stop inflating
                        raise _too_big(what, shown, cap, cap, exact=False)
        except BundleError:
            raise
        except PermissionError as exc:
            raise _unreadable(self.path, self.path, exc) from None
        except _ZIP_ERRORS as exc:
            raise BundleError(f"{shown} is damaged ({error_line(exc)}); copy the bundle again") from None
        return bytes(out)

    def close(self) -> None:
        self.archive.close()


def _os_metadata(name: str) -> bool:
    parts = name.split("/")
    return parts[0] == "__MACOSX" or parts[-1] in _OS_METADATA or (parts[-1] == "" and len(parts) == 1)


def _too_big(what: str, shown: str, size: int, cap: int, exact: bool = True) -> BundleError:
    return BundleError(
        f"{what} file {shown} holds {'' if exact else 'over '}{size:,} bytes, over the {cap:,}-byte limit; "
        "if the bundle is genuine, raise the limit (edge_runtime.LoadLimits)"
    )


def _unreadable(bundle: Path, path: Path, exc: OSError) -> BundleError:
    reason = exc.strerror or type(exc).__name__
    if isinstance(exc, PermissionError):
        return BundleError(
            f"cannot read {path} ({reason}); give this user read access (chmod -R a+rX {bundle}) or run as the bundle's owner"
        )
    return BundleError(f"cannot read {path} ({reason}); check the path and copy the bundle again")
