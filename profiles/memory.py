"""Process memory while a model loads and runs: sampled RSS, and the kernel's peak.

The two kinds of number answer different questions, so a profile records both:

* **RSS samples** (``psutil.Process().memory_info().rss``): the resident set at one instant. Taken before
  and after loading and between timed queries, they attribute memory to loading and to running, but can
  miss a spike that comes and goes between two samples.
* **Kernel peaks**: ``VmHWM`` in ``/proc/self/status`` is the high-water mark of RSS kept by Linux, so it
  misses no spike. ``ru_maxrss`` (``getrusage``) is the portable way to ask for a peak: on Linux it reads
  the same high-water mark (so the two agree), on macOS it is the peak since the process started. A peak
  since process start includes everything the process did before (imports, earlier models), so on Linux
  :meth:`PeakTracker.start` resets the mark (writing ``5`` to ``/proc/self/clear_refs``, which resets
  ``ru_maxrss`` too) and the peak read at the end of a phase is that phase's. Where the reset is refused
  (not Linux, no permission) the peak comes from ``ru_maxrss`` and is reported with scope ``lifetime``.

Linux keeps RSS counters per CPU and folds them in lazily, so a sample and the peak can disagree by a
few hundred KiB.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import psutil

__all__ = ["PeakTracker", "rss_mb", "ru_maxrss_mb", "vmhwm_mb"]

_MB = 2**20


def rss_mb() -> float:
    """Resident set size of this process now, in MiB."""
    return psutil.Process().memory_info().rss / _MB


def ru_maxrss_mb() -> float | None:
    """Peak RSS since the process started (``getrusage``), in MiB; None where there is no ``resource``."""
    try:
        import resource  # POSIX only
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / _MB if sys.platform == "darwin" else peak / 1024


def vmhwm_mb() -> float | None:
    """The kernel's RSS high-water mark (``VmHWM``) in MiB; None where ``/proc`` has none."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_vmhwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")  # "5" resets the peak RSS (Linux >= 4.0), leaving page state alone
        return True
    except OSError:
        return False


@dataclass
class PeakTracker:
    """Peak memory of one phase (loading, or timed runs): RSS samples plus the kernel's peak.

    Call :meth:`start`, then :meth:`sample` now and then (between queries, never inside a timed call),
    then :meth:`result`.
    """

    samples: list[float] = field(default_factory=list)
    peak_is_reset: bool = False

    def start(self) -> "PeakTracker":
        self.samples = []
        self.peak_is_reset = _reset_vmhwm()
        self.sample()
        return self

    def sample(self) -> float:
        value = rss_mb()
        self.samples.append(value)
        return value

    def result(self) -> dict[str, float | str | None]:
        """``rss_sampled_peak_mb`` (max of the samples), ``kernel_peak_mb`` and whether it is per phase."""
        self.sample()
        kernel = vmhwm_mb()
        scope = "phase" if self.peak_is_reset and kernel is not None else "lifetime"
        if kernel is None:
            kernel = ru_maxrss_mb()
        return {
            "rss_sampled_peak_mb": round(max(self.samples), 2),
            "kernel_peak_mb": None if kernel is None else round(kernel, 2),
            "kernel_peak_scope": scope,
            "samples": len(self.samples),
        }
