"""Deadlines: single-sample requests under a latency budget, quiet and with a competing busy process.

For each load condition, requests cycle through the held-out data with budgets from below member 1 alone
up to beyond the full ensemble; budgets are interleaved request by request, so every budget sees the same
machine. The runtime predicts the next member's latency from the bundle's profile for this device (if
any) and from what it observed since start-up (the larger wins), and stops before a member that would
overrun. A request's latency is the wall time of the ``predict`` call (validation and result included).

Per budget and condition (JSON ``results``): ``budget_ms``, ``contention``, ``miss_rate`` (latency >
budget, excluding requests where member 1 alone - which always runs - already overran, counted apart as
``forced_miss_rate``), ``accuracy``, ``mean_members``, latency percentiles and exit reasons.
Goals: ``miss_rate`` <= 1%; accuracy rising with budget.

Contention ``busy_same_core``: a Python spin loop pinned to one core and this process pinned to the same
core (the worst case of a busy factory PC: the scheduler time-slices the two). ``busy_other_core``:
the spin loop on another core. Each condition starts with untimed settle requests so the runtime's
observed latencies reflect the condition, as on a device that has been running a while.

    python benchmarks/deadline.py [--bundle B --data D] [--requests 2000] [--json PATH]
    python benchmarks/deadline.py --synthetic 256
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from _runtime_bench import add_input_args, busy_process, device_line, percentiles, pinned, resolve_inputs, table, workdir, write_json  # noqa: E402

import edge_runtime  # noqa: E402

CONDITIONS = ("none", "busy_same_core", "busy_other_core")


def _reference(runtime: Any, samples: list[np.ndarray], n: int) -> dict[str, float]:
    """Latency of member 1 alone and of the full ensemble through the runtime (batch 1, quiet)."""
    first, full = [], []
    for r in range(n):
        x = samples[r % len(samples)]
        t = time.perf_counter()
        runtime.predict(x, budget_ms=1e-9)  # only member 1 runs
        first.append((time.perf_counter() - t) * 1e3)
        t = time.perf_counter()
        runtime.predict(x)
        full.append((time.perf_counter() - t) * 1e3)
    return {
        "member1_ms_p50": float(np.median(first)), "member1_ms_p99": float(np.percentile(first, 99)),
        "full_ms_p50": float(np.median(full)), "full_ms_p99": float(np.percentile(full, 99)),
    }


def _condition(runtime: Any, samples: list[np.ndarray], y: np.ndarray, budgets: list[float], requests: int, settle: int) -> list[dict[str, Any]]:
    n_b = len(budgets)
    latency = np.empty((n_b, requests))
    used = np.empty((n_b, requests), dtype=np.int64)
    correct = np.empty((n_b, requests), dtype=bool)
    reasons: list[Counter[str]] = [Counter() for _ in budgets]
    predict = runtime.predict
    clock = time.perf_counter
    for r in range(-settle, requests):
        i = r % len(samples)
        x = samples[i]
        for j in range(n_b):
            b = (r + j) % n_b  # rotate the order: no budget always runs right after another
            t = clock()
            (answer,) = predict(x, budget_ms=budgets[b])
            elapsed = (clock() - t) * 1e3
            if r >= 0:
                latency[b, r] = elapsed
                used[b, r] = answer.members_used
                correct[b, r] = answer.label == y[i]
                reasons[b][answer.exit_reason] += 1
    rows = []
    for b, budget in enumerate(budgets):
        over = latency[b] > budget
        forced = over & (used[b] == 1)
        rows.append(
            {
                "budget_ms": budget,
                "requests": requests,
                "miss_rate": float((over & ~forced).mean()),
                "forced_miss_rate": float(forced.mean()),
                "accuracy": float(correct[b].mean()),
                "mean_members": float(used[b].mean()),
                "latency_ms": percentiles(latency[b], (50, 90, 99)) | {"max": float(latency[b].max())},
                "exit_reasons": dict(reasons[b]),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_input_args(parser)
    parser.add_argument("--requests", type=int, default=2000, help="timed requests per budget and condition (default 2000)")
    parser.add_argument("--settle", type=int, default=200, help="untimed requests per budget when a condition starts")
    parser.add_argument("--budgets", type=float, nargs="+", default=None, help="budgets in ms (default: derived from measured latencies)")
    parser.add_argument("--num-budgets", type=int, default=6, help="how many budgets to derive (default 6)")
    parser.add_argument("--contention", nargs="+", choices=CONDITIONS, default=["none", "busy_same_core"])
    parser.add_argument("--quantile", default="p99", choices=["p50", "p90", "p95", "p99"], help="latency quantile the runtime predicts with (default p99)")
    parser.add_argument("--observed-quantile", type=float, default=None, help="override the quantile of observed latencies (experiments)")
    parser.add_argument("--core", type=int, default=None, help="core for pinning (default: the last one this process may use)")
    args = parser.parse_args(argv)
    cores = sorted(os.sched_getaffinity(0))
    core = cores[-1] if args.core is None else args.core
    other = next((c for c in cores if c != core), None)
    with workdir() as tmp:
        path, x, y, description = resolve_inputs(args, tmp)
        runtime = edge_runtime.load(path, entropy_threshold="off", latency_quantile=args.quantile)
        if args.observed_quantile is not None:
            runtime.latency_estimator.quantile = args.observed_quantile
        shape = tuple(runtime.manifest.task.input.shape[1:])
        samples = [np.ascontiguousarray(x[i].reshape(1, *shape)) for i in range(len(x))]
        y = np.asarray(y).reshape(-1)
        reference = _reference(runtime, samples, 300)
        prefix_accuracy = runtime.evaluate_prefixes(x).accuracy(y).tolist()
        if args.budgets:
            budgets = sorted(args.budgets)
        else:
            low, high = reference["member1_ms_p50"], reference["full_ms_p99"]
            budgets = [0.5 * low] + np.geomspace(1.5 * low, 1.5 * high, args.num_budgets - 1).tolist()
        results = []
        started = time.perf_counter()
        for condition in args.contention:
            busy_core = {"none": None, "busy_same_core": core, "busy_other_core": other}[condition]
            if condition == "busy_other_core" and other is None:
                print("skipping busy_other_core: this process may use only one core", file=sys.stderr)
                continue
            pin = None if condition == "none" else core
            with busy_process(busy_core), pinned(pin):
                rows = _condition(runtime, samples, y, budgets, args.requests, args.settle)
                estimates = list(runtime.latency_estimator.estimates())
            for row in rows:
                row["contention"] = condition
                row["latency_estimates_ms"] = estimates
            results += rows
        wall = time.perf_counter() - started
    dev = device_line()
    result = {
        "benchmark": "deadline",
        "source": description,
        "device": dev,
        "members": runtime.num_members,
        "estimator": runtime.latency_estimator.source(),
        "latency_quantile": args.quantile,
        "reference_quiet": reference,
        "prefix_accuracy": prefix_accuracy,
        "core": core,
        "wall_s": wall,
        "results": results,
    }
    print(
        f"deadline: {args.requests} single-sample requests per budget and condition (+{args.settle} settle), "
        f"{description}; device {dev['cpu_model']} ({dev['logical_cores']} logical cores, ORT {dev['onnxruntime']}), "
        f"load average {dev['load_average_1m']:.2f}; estimator: {result['estimator']} {args.quantile}; "
        f"quiet member 1 p50 {reference['member1_ms_p50']:.3f} ms, full ensemble p50 {reference['full_ms_p50']:.3f} ms "
        f"/ p99 {reference['full_ms_p99']:.3f} ms; prefix accuracy {', '.join(f'{a:.3f}' for a in prefix_accuracy)}"
    )
    header = ["contention", "budget ms", "miss %", "forced miss %", "accuracy", "mean members", "lat p50", "lat p99", "lat max", "exits"]
    rows_out = [
        [r["contention"], r["budget_ms"], 100 * r["miss_rate"], 100 * r["forced_miss_rate"], r["accuracy"], r["mean_members"],
         r["latency_ms"]["p50"], r["latency_ms"]["p99"], r["latency_ms"]["max"],
         " ".join(f"{k}:{v}" for k, v in sorted(r["exit_reasons"].items()))]
        for r in results
    ]
    print(table(header, rows_out))
    for condition in {r["contention"] for r in results}:
        rows = [r for r in results if r["contention"] == condition]
        worst = max(r["miss_rate"] for r in rows)
        accs = [r["accuracy"] for r in rows]
        rising = all(b >= a - 0.005 for a, b in zip(accs, accs[1:]))
        print(f"  {condition}: worst miss rate {100 * worst:.2f}% (goal <= 1%: {'met' if worst <= 0.01 else 'missed'}); "
              f"accuracy rising with budget: {'yes' if rising else 'no'} (tolerance 0.5 point)")
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
