"""Run a bundle one request at a time under latency budgets: real early exit, wall time on the caller's clock.

Each sample is its own request (batch 1) through ``runtime.predict(x, budget_ms=b, entropy_threshold="off")``.
A request is late when its wall time exceeds the budget; member 1 always runs (there is no answer without
it), so a late request that used only member 1 is *forced* by the budget, and one that used more was the
budget policy's miss.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

__all__ = ["budget_runs"]


def budget_runs(runtime: Any, x: np.ndarray, y: np.ndarray, budgets: Sequence[float]) -> list[dict[str, Any]]:
    """One row per budget: the samples of ``x`` run one request each under it.

    Args:
        runtime: an :class:`edge_runtime.AnytimeRuntime` (anything with its ``predict``).
        x: raw inputs (N, ...), as clients send them.
        y: integer labels (N,).
        budgets: latency budgets in milliseconds.

    Returns:
        Rows ``{budget_ms, accuracy, mean_members, miss_rate, forced_miss_rate, latency_ms_p50,
        latency_ms_p99}``: fractions of the N samples; latencies are wall milliseconds per request.
    """
    rows = []
    for budget in budgets:
        members, correct, missed, forced, elapsed = [], 0, 0, 0, []
        for i in range(len(x)):
            started = time.perf_counter()
            answer = runtime.predict(x[i : i + 1], budget_ms=budget, entropy_threshold="off")[0]
            wall = (time.perf_counter() - started) * 1e3
            elapsed.append(wall)
            members.append(answer.members_used)
            correct += int(answer.label == y[i])
            late = wall > budget
            forced += int(late and answer.members_used == 1)
            missed += int(late and answer.members_used > 1)
        rows.append(
            {
                "budget_ms": round(float(budget), 4),
                "accuracy": correct / len(x),
                "mean_members": float(np.mean(members)),
                "miss_rate": missed / len(x),  # over budget after the policy chose to run member 2 or later
                "forced_miss_rate": forced / len(x),  # member 1 alone already over budget
                "latency_ms_p50": float(np.percentile(elapsed, 50)),
                "latency_ms_p99": float(np.percentile(elapsed, 99)),
            }
        )
    return rows
