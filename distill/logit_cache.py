"""Teacher logits computed once per (teacher, inputs) and kept on disk, memory-mapped.

Every student and every B-DISTIL round distils from the same frozen teacher on the same splits, so the
teacher's forward pass over train/val/test is the same work each time; on a teacher of a few ms per
image it dominates short student runs. :class:`LogitCache` keeps each result as an ``.npy`` file:

    ROOT/<teacher id>/<inputs id>.npy   float32 logits, shape (N, classes), opened with mmap_mode="r"
    ROOT/<teacher id>/<inputs id>.json  {"shape", "sha256"} of the .npy bytes, written after the .npy

``teacher id`` is given by the caller (a hash of the teacher's file and of how inputs reach it);
``inputs id`` is a SHA-256 of the input array's shape, dtype and bytes, so a cached entry can only ever
be read back for exactly the inputs it was computed on. Both files are written with
:func:`edge_runtime.files.atomic_write` (temp file, fsync, rename; modes follow the umask); a missing,
truncated, mismatched or corrupted entry (the checksum of the ``.npy`` bytes disagrees) is recomputed
and rewritten. Files are read with ``allow_pickle=False``.

:func:`attach` links a cache to a teacher module without storing it on the module, so copies of the
teacher (a low-rank student starts as one) never inherit its cached logits.
"""

from __future__ import annotations

import hashlib
import json
import os
import weakref
from pathlib import Path
from typing import Callable

import numpy as np

from edge_runtime.errors import BundleError
from edge_runtime.files import atomic_write

__all__ = ["LogitCache", "attach", "cache_for", "inputs_id"]

_ATTACHED: "weakref.WeakKeyDictionary[object, LogitCache]" = weakref.WeakKeyDictionary()


def inputs_id(x: np.ndarray) -> str:
    """SHA-256 (first 24 hex digits) of an array's shape, dtype and bytes."""
    h = hashlib.sha256(f"{x.shape}|{x.dtype.str}|".encode())
    h.update(memoryview(np.ascontiguousarray(x)).cast("B"))
    return h.hexdigest()[:24]


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class LogitCache:
    """On-disk logits of one teacher, keyed by the exact inputs.

    Args:
        root: the cache directory (e.g. ``runs/teacher_logits``).
        teacher_id: identifies the teacher and how inputs reach it (file hash + preprocessing).
    """

    def __init__(self, root: str | os.PathLike[str], teacher_id: str) -> None:
        self.dir = Path(root) / teacher_id
        self.hits = 0
        self.misses = 0

    def _paths(self, key: str) -> tuple[Path, Path]:
        return self.dir / f"{key}.npy", self.dir / f"{key}.json"

    def lookup(self, x: np.ndarray) -> np.ndarray | None:
        """The cached logits of ``x`` (read-only, memory-mapped), or None when absent or damaged."""
        data, meta = self._paths(inputs_id(x))
        try:
            info = json.loads(meta.read_text())
            if info.get("sha256") != _file_sha256(data):
                return None
            logits = np.load(data, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, json.JSONDecodeError, AttributeError):
            return None
        if logits.dtype != np.float32 or logits.ndim != 2 or logits.shape[0] != len(x) or list(logits.shape) != info.get("shape"):
            return None
        return logits

    def store(self, x: np.ndarray, logits: np.ndarray) -> None:
        """Write ``logits`` (N, classes) computed on ``x`` atomically (data first, then its checksum)."""
        data, meta = self._paths(inputs_id(x))
        self.dir.mkdir(parents=True, exist_ok=True)
        array = np.ascontiguousarray(logits, dtype=np.float32)

        def write_npy(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to a name
                np.save(f, array, allow_pickle=False)

        atomic_write(data, write_npy)
        record = {"shape": list(array.shape), "sha256": _file_sha256(data)}
        atomic_write(meta, (json.dumps(record) + "\n").encode())

    def logits(self, x: np.ndarray, compute: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """Cached logits of ``x``, or ``compute(x)`` stored for next time."""
        found = self.lookup(x)
        if found is not None:
            self.hits += 1
            return found
        self.misses += 1
        result = np.ascontiguousarray(compute(x), dtype=np.float32)
        try:
            self.store(x, result)
        except (OSError, BundleError):  # a read-only or full disk costs the next run time, not this one its result
            pass
        return result


def attach(teacher: object, cache: LogitCache) -> None:
    """Serve ``teacher``'s logits through ``cache`` in :func:`distill.train.predict_logits`."""
    _ATTACHED[teacher] = cache


def cache_for(model: object) -> LogitCache | None:
    """The cache attached to exactly this object (copies of it have none)."""
    try:
        return _ATTACHED.get(model)
    except TypeError:  # not weak-referenceable
        return None
