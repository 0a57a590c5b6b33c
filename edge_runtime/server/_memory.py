"""Give memory a large request freed back to the operating system.

A 4 MiB JSON body parses into tens of MB of Python lists, decoded arrays and answers; once a request is
answered they are freed, but glibc's malloc keeps freed blocks in its per-thread arenas (and raises its
mmap threshold after large frees), so the server's RSS stays at its peak: with a thread pool decoding
bodies, six 4 MiB requests that were refused with 413 still left ~120 MB resident. ``malloc_trim(0)``
returns the free pages of every arena. It runs after the answer is sent, only for large bodies, and is a
no-op where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Callable

__all__ = ["RELEASE_AFTER_BYTES", "release_freed_memory"]

RELEASE_AFTER_BYTES = 1 << 20  # bodies at least this large are followed by a release


def _load_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # musl and other C libraries have no malloc_trim
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _load_trim()


def release_freed_memory() -> bool:
    """Return freed heap pages to the OS (glibc ``malloc_trim(0)``); True if that was possible here."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True
