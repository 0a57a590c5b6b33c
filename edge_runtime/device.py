"""Which device is this? A stable fingerprint keys latency profiles inside a bundle.

The fingerprint hashes what changes latency and tells machines apart: the CPU's vendor, model name and
family/model/stepping (a cloud VM's model name may be just "AMD EPYC"; the numbers still tell a Zen 4
from a Zen 5), the instruction-set extensions ONNX Runtime's kernels choose between (AVX2, AVX-512,
VNNI, AMX; NEON dot-product, SVE, i8mm on ARM), the core counts, the architecture, the operating system's
name and the ONNX Runtime version. It leaves out what does not change latency: the kernel release (a
patch update must not orphan a profile), the host name, free memory, the Python version. Two identical
factory PCs share a profile.

Fingerprints of this scheme are ``v2-`` and 16 hex digits. Bundles profiled before it carry a 16-hex-digit
key (hashed over the CPU model name, cores, architecture, ``"<system> <kernel release>"`` and ORT); the
runtime still finds those: :func:`find_profile_key` looks up this device's current fingerprint first, then
its old one (:func:`legacy_fingerprint`), which matches as long as the kernel release is the one it was
profiled under, exactly as before. Profiling again stores the profile under the new key and drops this
device's old-key profile (:func:`profiles.store.store_profile`).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from functools import lru_cache
from typing import Any, Mapping

import psutil

__all__ = ["FINGERPRINT_PREFIX", "ISA_FLAGS", "cpu_facts", "device_info", "find_profile_key", "fingerprint", "legacy_fingerprint"]

FINGERPRINT_PREFIX = "v2-"

# /proc/cpuinfo flags that select different ORT kernels (x86: MLAS's AVX2/AVX-512/VNNI/AMX paths; ARM:
# NEON dot-product, i8mm, SVE). A fixed list: the kernel's other flags (mitigations, "hypervisor", new
# names a newer kernel learns) would change the fingerprint without changing latency.
ISA_FLAGS = (
    "sse4_1",
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "asimddp",
    "asimdhp",
    "i8mm",
    "bf16",
    "sve",
    "sve2",
)
_FINGERPRINT_FIELDS = (
    "cpu_vendor",
    "cpu_model",
    "cpu_family",
    "cpu_model_number",
    "cpu_stepping",
    "isa",
    "logical_cores",
    "physical_cores",
    "machine",
    "system",
    "onnxruntime",
)
_LEGACY_FIELDS = ("cpu_model", "logical_cores", "physical_cores", "machine", "os", "onnxruntime")


def cpu_facts(cpuinfo: str | None = None) -> dict[str, Any]:
    """The CPU's identity from ``/proc/cpuinfo`` text (this machine's by default; empty where there is none).

    Returns:
        ``{"cpu_vendor", "cpu_model", "cpu_family", "cpu_model_number", "cpu_stepping", "isa"}``: strings
        ("" when unknown) and the sorted :data:`ISA_FLAGS` present. On ARM the vendor is the implementer
        code, the family the architecture, the model number the part and the stepping variant/revision.
    """
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read(1 << 20)  # the first processors suffice; every core of one CPU reads the same
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor's block
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    flags = set((fields.get("flags") or fields.get("features") or "").split())
    model = fields.get("model name") or fields.get("hardware") or fields.get("cpu model") or ""
    if "cpu implementer" in fields:  # ARM: no vendor/family/model lines
        family, number = fields.get("cpu architecture", ""), fields.get("cpu part", "")
        stepping = f"{fields.get('cpu variant', '')}/{fields.get('cpu revision', '')}"
        vendor = fields["cpu implementer"]
    else:
        vendor, family, number = fields.get("vendor_id", ""), fields.get("cpu family", ""), fields.get("model", "")
        stepping = fields.get("stepping", "")
    return {
        "cpu_vendor": vendor,
        "cpu_model": model or platform.processor() or platform.machine() or "unknown",
        "cpu_family": family,
        "cpu_model_number": number,
        "cpu_stepping": stepping,
        "isa": sorted(flags.intersection(ISA_FLAGS)),
    }


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
        **cpu_facts(),
        "logical_cores": psutil.cpu_count(logical=True) or os.cpu_count() or 0,
        "physical_cores": psutil.cpu_count(logical=False) or 0,
        "machine": platform.machine(),
        "system": platform.system(),
        "os": f"{platform.system()} {platform.release()}",  # shown, not hashed (see the module doc)
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
        "cpu_affinity": affinity,
        "memory_total_mb": round(psutil.virtual_memory().total / 2**20),
    }


def _digest(values: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def fingerprint(info: Mapping[str, Any] | None = None) -> str:
    """The profile key of ``info`` (this machine's :func:`device_info` by default): ``"v2-"`` + 16 hex digits."""
    info = device_info() if info is None else info
    return FINGERPRINT_PREFIX + _digest({k: info.get(k) for k in _FINGERPRINT_FIELDS})


def legacy_fingerprint(info: Mapping[str, Any] | None = None) -> str:
    """The key profiles were stored under before the current scheme (it hashed the kernel release).

    Computed from the same ``device_info`` fields as then, so it equals the old key of the device ``info``
    describes (an old profile's own ``device`` record, or this machine).
    """
    info = device_info() if info is None else info
    return _digest({k: info.get(k) for k in _LEGACY_FIELDS})


def find_profile_key(profiles: Mapping[str, Any], info: Mapping[str, Any] | None = None) -> str | None:
    """The key of the device's profile in ``profiles`` (a manifest's), or None.

    This device's current fingerprint first, then its old one (a bundle profiled before the current
    scheme, on this machine under its present kernel release).
    """
    if not profiles:
        return None
    for key in (fingerprint(info), legacy_fingerprint(info)):
        if key in profiles:
            return key
    return None
