"""Writing files safely: atomic replacement, ordinary file modes, stale temp files, one writer at a time.

:func:`atomic_write` is the project's one atomic file write: bundle manifests and archives, teacher
checkpoints and logit caches (``distill``), reports and benchmark JSON all go through it (every package
may import ``edge_runtime``). A whole bundle directory is swapped by :func:`exporters.bundle.write_bundle`.

* **Atomic**: a file is written to a hidden temp file beside its target (``.<name>.<random>.tmp``), flushed
  to disk and renamed over the target, so a reader sees the old or the new file, never half of one, even
  when the writer is killed (SIGKILL) mid-write.
* **Modes follow the umask**: ``tempfile.mkstemp``/``mkdtemp`` create 0600/0700 files, and the rename keeps
  that mode, so bundles came out owner-only and a service account could not load them. Temp files here
  are created with mode 0666 (0777 for directories) and the process umask applied, like any plain write;
  a file that already exists keeps its mode when rewritten.
* **Stale temp files**: a writer killed inside the write window leaves its temp file behind. Under the
  lock, no live writer owns one, so the next write removes them.
* **One writer at a time**: updates of a manifest read the old manifest, change it and write it back. Two
  processes doing that at once lose one update. :class:`FileLock` is an exclusive advisory lock on a small
  file beside the target (``fcntl.flock`` on POSIX, ``msvcrt.locking`` on Windows); the reading happens
  under it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import time
from pathlib import Path
from typing import Callable, Iterator, Union

from edge_runtime.errors import BundleError

__all__ = ["FileLock", "atomic_write", "locked", "make_dir", "remove_stale_temps", "temp_name"]

PathLike = Union[str, "os.PathLike[str]"]

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]  # callers check for None
try:  # Windows
    import msvcrt
except ImportError:
    msvcrt = None  # type: ignore[assignment]  # callers check for None


def temp_name(target: Path) -> Path:
    """A fresh hidden temp path beside ``target``: ``.<name>.<random>.tmp`` (what :func:`remove_stale_temps` removes)."""
    return target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")


def atomic_write(target: PathLike, data: bytes | Callable[[Path], None]) -> None:
    """Replace ``target`` with ``data`` atomically; the mode follows the umask, or stays the existing file's.

    Args:
        target: the file to write.
        data: the new bytes, or a function that writes the temp file at the path it is given (e.g. a zip
            writer); the temp file already exists, empty, with the final mode.

    Raises:
        BundleError: the directory cannot be written (one line naming the fix).
    """
    target = Path(target)
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise _unwritable(target, exc) from None
    tmp = temp_name(target)
    try:
        try:
            # 0o666 with the umask applied by the kernel: what a plain open(..., "w") gives.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except OSError as exc:
            raise _unwritable(target, exc) from None
        with os.fdopen(fd, "wb") as f:
            if mode is not None and hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), mode)
            if callable(data):
                f.close()
                data(tmp)
                with open(tmp, "rb+") as again:
                    os.fsync(again.fileno())
            else:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        if mode is not None and not hasattr(os, "fchmod"):  # pragma: no cover - Windows
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def make_dir(parent: Path, prefix: str) -> Path:
    """Create a fresh directory ``<parent>/<prefix><random>`` whose mode follows the umask (unlike ``mkdtemp``'s 0700)."""
    for _ in range(100):
        path = parent / f"{prefix}{secrets.token_hex(6)}"
        try:
            os.mkdir(path, 0o777)
            return path
        except FileExistsError:
            continue
    raise BundleError(f"cannot create a temporary directory in {parent}; remove stale '{prefix}*' entries")  # pragma: no cover


def remove_stale_temps(target: Path) -> list[Path]:
    """Remove ``.<target name>.*.tmp`` files beside ``target`` (left by writers that died); call under the lock.

    Returns:
        The paths removed.
    """
    removed = []
    for path in target.parent.glob(f".{_glob_escape(target.name)}.*.tmp"):
        with contextlib.suppress(OSError):
            if path.is_file() and not path.is_symlink():
                path.unlink()
                removed.append(path)
    return removed


class FileLock:
    """An exclusive lock held on ``.<name>.lock`` beside ``target`` while the ``with`` block runs.

    The lock file stays (removing it would let two processes lock two different files). Other processes
    wait up to ``timeout_s``, polling; then :class:`~edge_runtime.errors.BundleError` says who to wait for.
    On a platform with neither ``fcntl`` nor ``msvcrt`` the block runs unlocked and a warning says so.

    Args:
        target: the file whose updates the lock serialises (e.g. a bundle's ``manifest.json``).
        timeout_s: how long to wait for another writer before giving up.
    """

    def __init__(self, target: PathLike, timeout_s: float = 120.0) -> None:
        self.target = Path(target)
        self.path = self.target.with_name(f".{self.target.name}.lock")
        self.timeout_s = timeout_s
        self._fd: int | None = None

    def __enter__(self) -> "FileLock":
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o666)
        except PermissionError as exc:
            # Another user's lock file (mode 0644 under umask 022): flock needs no write access to it.
            try:
                fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            except OSError:
                raise _unwritable(self.target, exc) from None
        except OSError as exc:
            raise _unwritable(self.target, exc) from None
        deadline = time.monotonic() + self.timeout_s
        try:
            while not _try_lock(fd):
                if time.monotonic() > deadline:
                    raise BundleError(
                        f"another process has been updating {self.target} for over {self.timeout_s:g} s "
                        f"(it holds {self.path.name}); retry when it has finished"
                    )
                time.sleep(0.05)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            _unlock(fd)
            os.close(fd)


def _try_lock(fd: int) -> bool:
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return False
            raise
    if msvcrt is not None:  # pragma: no cover - Windows
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    import warnings  # pragma: no cover - neither POSIX nor Windows

    warnings.warn("no file locking on this platform: concurrent manifest updates may lose one", stacklevel=3)
    return True


def _unlock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
    elif msvcrt is not None:  # pragma: no cover - Windows
        with contextlib.suppress(OSError):
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


def _unwritable(target: Path, exc: OSError) -> BundleError:
    return BundleError(
        f"cannot write beside {target} ({exc.strerror or exc}); give this user write access to "
        f"{target.parent} or work on a copy of the bundle"
    )


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


@contextlib.contextmanager
def locked(target: PathLike, timeout_s: float = 120.0) -> Iterator[None]:
    """``with locked(path):`` is ``with FileLock(path):``, removing stale temp files of ``path`` on entry."""
    with FileLock(target, timeout_s):
        remove_stale_temps(Path(target))
        yield
