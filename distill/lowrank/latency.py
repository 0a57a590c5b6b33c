"""ONNX Runtime latency of several models measured side by side, on this device.

Latency on a shared machine drifts with whatever else runs, so models that are to be compared are timed
in the same process and interleaved by :func:`profiles.measure.time_sessions`: every round times a short
burst of calls to each model in turn (the order rotated each round), and the percentiles pool all rounds.
A slow phase of the machine then hits every model alike, and the ratios stay honest even when the
absolute numbers move.

Sessions use the runtime's own :class:`edge_runtime.session.SessionConfig` (one intra-op thread,
sequential, no spinning, all graph optimisations), i.e. exactly what the device runs. Inputs are real
rows of the data set, cycled.

Under torchrun the models are timed on rank 0 alone and every rank gets its numbers
(:func:`distill.distributed.on_main`): choices made from them (low-rank ranks, B-DISTIL member sizes) are
then the same on every rank, and the other ranks do not compete for the cores while rank 0 times.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from distill.distributed import on_main
from distill.errors import TrainingError
from edge_runtime.session import SessionConfig, create_session
from profiles.measure import latency_stats, time_sessions

__all__ = ["LatencyConfig", "measure_side_by_side"]


@dataclass(frozen=True)
class LatencyConfig:
    """How to time the models."""

    batch_sizes: tuple[int, ...] = (1,)  # batch sizes to time, each with its own sessions' warm-up
    rounds: int = 20  # interleaved rounds
    calls_per_round: int = 25  # timed calls per model per round
    warmup: int = 20  # untimed calls per model and batch size first
    session: SessionConfig = SessionConfig()  # the runtime's defaults

    def __post_init__(self) -> None:
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise TrainingError("batch_sizes must name at least one batch size >= 1")
        if self.rounds < 1 or self.calls_per_round < 1 or self.warmup < 0:
            raise TrainingError("rounds and calls_per_round must be >= 1, warmup >= 0")

    def describe(self) -> dict[str, object]:
        return {
            "method": "interleaved rounds, order rotated each round; each session.run timed with perf_counter",
            "rounds": self.rounds,
            "calls_per_round": self.calls_per_round,
            "warmup": self.warmup,
            "session": self.session.describe(),
        }


def measure_side_by_side(
    models: Mapping[str, bytes],
    x: np.ndarray,
    config: LatencyConfig | None = None,
) -> dict[str, dict[int, dict[str, float]]]:
    """Time each ONNX model's ``session.run`` at each batch size, interleaved.

    Args:
        models: name -> ONNX bytes; each takes one input (the first graph input) of ``x``'s row shape.
        x: float32 input rows (at least one); batches are cut from it cyclically.
        config: rounds, calls, warm-up and session settings.

    Returns:
        name -> batch size -> :func:`profiles.measure.latency_stats` (milliseconds: min, p50, p90, p95,
        p99, max, mean, std, queries).

    Raises:
        TrainingError: no models or no rows.
    """
    config = config or LatencyConfig()
    if not models or len(x) == 0:
        raise TrainingError("give at least one model and one input row to time")
    return on_main(lambda: _measure(models, x, config))


def _measure(models: Mapping[str, bytes], x: np.ndarray, config: LatencyConfig) -> dict[str, dict[int, dict[str, float]]]:
    sessions = {name: create_session(blob, config.session, name=name) for name, blob in models.items()}
    names = list(sessions)
    results: dict[str, dict[int, dict[str, float]]] = {name: {} for name in names}
    x = np.ascontiguousarray(x, dtype=np.float32)
    for batch in config.batch_sizes:
        rows = np.take(x, np.arange(16 * batch), axis=0, mode="wrap")
        pool = [rows[i * batch : (i + 1) * batch] for i in range(16)]
        feeds = {name: [{sessions[name].get_inputs()[0].name: p} for p in pool] for name in names}
        times = time_sessions(sessions, feeds, rounds=config.rounds, calls_per_round=config.calls_per_round, warmup=config.warmup)
        for name in names:
            results[name][batch] = latency_stats(times[name])
    return results
