"""Which device is this? A stable fingerprint keys latency profiles inside a bundle.

The fingerprint covers what changes latency: CPU model, core counts, architecture, OS and the ONNX Runtime
version. It leaves out what does not (host name, free memory), so two identical factory PCs share a
profile.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from functools import lru_cache
from typing import Any

import psutil

__all__ = ["device_info", "fingerprint"]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


@lru_cache(maxsize=1)
def device_info() -> dict[str, Any]:
    """Facts about this machine that bear on latency (the fields the fingerprint hashes, and a few more)."""
    # The runtime's one heavy dependency, imported here so `device` stays cheap to import; through
    # edge_runtime.session, which sets the no-telemetry default before onnxruntime is first imported.
    from edge_runtime.session import ort as onnxruntime

    try:
        affinity = sorted(psutil.Process().cpu_affinity())  # not on macOS: AttributeError below
    except (AttributeError, OSError):
        affinity = []
    return {
        "cpu_model": _cpu_model(),
        "logical_cores": psutil.cpu_count(logical=True) or os.cpu_count() or 0,
        "physical_cores": psutil.cpu_count(logical=False) or 0,
        "machine": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
        "cpu_affinity": affinity,
        "memory_total_mb": round(psutil.virtual_memory().total / 2**20),
    }


_FINGERPRINT_FIELDS = ("cpu_model", "logical_cores", "physical_cores", "machine", "os", "onnxruntime")


def fingerprint(info: dict[str, Any] | None = None) -> str:
    """A short stable id for ``info`` (this machine's :func:`device_info` by default)."""
    info = device_info() if info is None else info
    stable = {k: info.get(k) for k in _FINGERPRINT_FIELDS}
    digest = hashlib.sha256(json.dumps(stable, sort_keys=True).encode("utf-8")).hexdigest()[:16]
    return digest
