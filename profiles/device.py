"""The device a profile was measured on, and the conditions it was measured under.

The fingerprint and the hardware facts come from :mod:`edge_runtime.device` (so the runtime and the
profiler agree on which profile belongs to which machine). This module adds what a latency number means
little without: the ONNX Runtime thread/affinity/spinning settings, and how busy the machine was.
"""

from __future__ import annotations

import os
import time
from typing import Any

import psutil

from edge_runtime.device import device_info, fingerprint
from edge_runtime.session import SessionConfig

__all__ = ["LoadMeter", "describe_device", "describe_settings"]


def describe_device() -> dict[str, Any]:
    """``{"fingerprint", "info"}`` of this machine (see :func:`edge_runtime.device.device_info`)."""
    info = device_info()
    return {"fingerprint": fingerprint(info), "info": dict(info)}


def describe_settings(config: SessionConfig) -> dict[str, Any]:
    """The session settings plus the process's CPU affinity and the thread environment variables."""
    try:
        affinity = sorted(psutil.Process().cpu_affinity())  # not on macOS: AttributeError below
    except (AttributeError, OSError):
        affinity = []
    env = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS") if k in os.environ}
    return {**config.describe(), "cpu_affinity": affinity, "environment": env}


class LoadMeter:
    """CPU use of the whole machine and of this process between :meth:`start` and :meth:`stop`.

    Recorded beside every measurement: a p50 taken while other processes compete for the cores is not
    the p50 of an idle device. Computed from CPU-time snapshots (not ``psutil.cpu_percent``, whose one
    global reference point would be reset by any nested meter).
    """

    def __init__(self) -> None:
        self._process = psutil.Process()
        self._system0 = psutil.cpu_times()
        self._process0 = self._process.cpu_times()
        self._wall0 = time.monotonic()

    def start(self) -> "LoadMeter":
        self._system0 = psutil.cpu_times()
        self._process0 = self._process.cpu_times()
        self._wall0 = time.monotonic()
        return self

    def stop(self) -> dict[str, Any]:
        """``cpu_percent_system`` (all cores, 0-100), ``cpu_percent_process`` (100 = one core), load averages."""
        system1, process1 = psutil.cpu_times(), self._process.cpu_times()
        wall = max(time.monotonic() - self._wall0, 1e-9)
        total = sum(system1) - sum(self._system0)
        idle = _idle(system1) - _idle(self._system0)
        busy = 100.0 * (1 - idle / total) if total > 0 else 0.0
        used = (process1.user + process1.system) - (self._process0.user + self._process0.system)
        try:
            load = [round(v, 2) for v in os.getloadavg()]
        except (AttributeError, OSError):
            load = []
        return {"cpu_percent_system": round(busy, 1), "cpu_percent_process": round(100.0 * used / wall, 1), "load_average": load}


def _idle(times: Any) -> float:
    return float(times.idle + getattr(times, "iowait", 0.0))
