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

Further phases (``--phases``; ``budgets`` is the above):

* ``spike``: one budget (``--spike-budget``, default 5x the quiet full-ensemble p50), back-to-back requests:
  quiet, then ``--spike-busy-s`` (3 s) with a busy process on every core, then quiet again. Per second:
  mean members, miss rate (as above) and forced miss rate; ``recovery_s`` is the time from the end of the
  load to the end of the last 0.5 s window (windows start every 0.1 s) whose mean members is below the
  pre-spike mean by more than the machine's noise (3 sigma of the pre-spike window means, >= 0.05). Goal
  (issue 14): recovery <= 2 s; ../shared/cases/deadline/06 is the same experiment without the per-second view.
* ``late_member``: a generated bundle of ms-scale members (``--late-depth`` x (MatMul, Relu) of width
  ``--late-hidden``; many short operators, as CNN members have), budget ``--late-budget`` (default 60% of
  the quiet full ensemble), quiet and with a busy process on this process's core; two runtimes, in-flight
  stop on and off, requests interleaved between them. Goal: miss rate <= 0.1% with the stop. With
  ``--quantile p50`` the runtime predicts optimistically, so members overrun often and the stop has work.
* ``stop_latency``: an 808-node graph (400 x MatMul+Relu of width 128); the watchdog is set to fire at a
  random point of a run; reports the stop latency (terminate -> run raised), the watchdog's wake-up
  lateness, and what guarding a run costs on a tiny member. These choose ``DeadlineConfig``'s defaults.

    python benchmarks/deadline.py [--bundle B --data D] [--requests 2000] [--json PATH]
    python benchmarks/deadline.py --synthetic 256
    python benchmarks/deadline.py --phases spike late_member stop_latency --json runs/bench/deadline_phases.json
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

import edge_runtime
from _runtime_bench import (
    add_input_args,
    busy_process,
    device_line,
    percentiles,
    pinned,
    resolve_inputs,
    table,
    workdir,
    write_json,
)

CONDITIONS = ("none", "busy_same_core", "busy_other_core")
PHASES = ("budgets", "spike", "late_member", "stop_latency")


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
        "member1_ms_p50": float(np.median(first)),
        "member1_ms_p99": float(np.percentile(first, 99)),
        "full_ms_p50": float(np.median(full)),
        "full_ms_p99": float(np.percentile(full, 99)),
    }


def _condition(
    runtime: Any, samples: list[np.ndarray], y: np.ndarray, budgets: list[float], requests: int, settle: int
) -> list[dict[str, Any]]:
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


def _miss(latency: np.ndarray, used: np.ndarray, budget: float, stopped: np.ndarray | None = None) -> tuple[float, float]:
    """(miss rate excluding forced misses, forced miss rate): forced = member 1 alone overran (an answer
    from member 1 because member 2 was stopped in flight is not forced: the stop came too late)."""
    over = latency > budget
    forced = over & (used == 1) & (True if stopped is None else ~stopped)
    return float((over & ~forced).mean()) if len(latency) else 0.0, float(forced.mean()) if len(latency) else 0.0


def _spike_phase(
    runtime: Any, samples: list[np.ndarray], budget: float, quiet_s: float, busy_s: float, after_s: float
) -> dict[str, Any]:
    """Quiet / busy on every core / quiet, back-to-back requests; per-second figures and the recovery time."""
    cores = sorted(os.sched_getaffinity(0))
    t_req, used, latency = [], [], []
    predict, clock = runtime.predict, time.perf_counter

    def drive(seconds: float) -> None:
        end = clock() + seconds
        i = len(t_req)
        while (t := clock()) < end:
            (answer,) = predict(samples[i % len(samples)], budget_ms=budget)
            t_req.append(t)
            latency.append((clock() - t) * 1e3)
            used.append(answer.members_used)
            i += 1

    start = clock()
    drive(quiet_s)
    busy_start = clock()
    with contextlib.ExitStack() as stack:
        for c in cores:
            stack.enter_context(busy_process(c))
        busy_start = clock()
        drive(busy_s)
    busy_end = clock()
    drive(after_s)
    t = np.array(t_req) - start
    used_a, lat_a = np.array(used), np.array(latency)
    seconds = []
    for s0 in range(int(np.ceil(t[-1])) if len(t) else 0):
        m = (t >= s0) & (t < s0 + 1)
        if not m.any():
            continue
        miss, forced = _miss(lat_a[m], used_a[m], budget)
        phase = (
            "busy"
            if busy_start - start <= s0 + 0.5 < busy_end - start
            else ("before" if s0 + 0.5 < busy_start - start else "after")
        )
        seconds.append(
            {
                "second": s0,
                "phase": phase,
                "requests": int(m.sum()),
                "mean_members": float(used_a[m].mean()),
                "miss_rate": miss,
                "forced_miss_rate": forced,
            }
        )
    before = (t >= 1.0) & (t < busy_start - start)  # the first second warms the estimator up
    level = float(used_a[before].mean()) if before.any() else float("nan")
    rel_end = busy_end - start

    def window_means(lo: float, hi: float) -> list[tuple[float, float]]:
        """(start, mean members) of each 0.5 s window starting every 0.1 s in [lo, hi - 0.5]."""
        out = []
        for w0 in np.arange(lo, hi - 0.5 + 1e-9, 0.1):
            m = (t >= w0) & (t < w0 + 0.5)
            if m.any():
                out.append((float(w0), float(used_a[m].mean())))
        return out

    # The machine's own noise decides what "back to the pre-spike level" means: 3 sigma of the pre-spike
    # 0.5 s window means (at least 0.05 members).
    pre = [v for _, v in window_means(1.0, busy_start - start)]
    tolerance = max(0.05, 3 * float(np.std(pre))) if len(pre) > 1 else 0.05
    recovery = 0.0
    for w0, v in window_means(rel_end, float(t[-1])):
        if v < level - tolerance:
            recovery = w0 + 0.5 - rel_end
    phases = {}
    for name, m in (("before", before), ("busy", (t >= busy_start - start) & (t < rel_end)), ("after", t >= rel_end)):
        miss, forced = _miss(lat_a[m], used_a[m], budget)
        phases[name] = {
            "requests": int(m.sum()),
            "mean_members": float(used_a[m].mean()) if m.any() else None,
            "miss_rate": miss,
            "forced_miss_rate": forced,
        }
    return {
        "budget_ms": budget,
        "busy_processes": len(cores),
        "pre_spike_mean_members": level,
        "recovery_s": recovery,
        "recovery_tolerance_members": tolerance,
        "phases": phases,
        "per_second": seconds,
        "estimator_after": runtime.latency_estimator.describe(),
    }


def _late_member_bundle(tmp: Path, members: int, depth: int, hidden: int) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from onnx_members import deep_member_graph, make_bundle, set_member_bytes

    path = make_bundle(tmp / "late_member", num_members=members, input_shape=(784,), num_classes=10, hidden=hidden)
    for k in range(members):
        set_member_bytes(path, k, deep_member_graph(k, (784,), 10, hidden=hidden, depth=depth))
    return path


def _late_member_phase(tmp: Path, args: argparse.Namespace, core: int) -> dict[str, Any]:
    from edge_runtime.deadline import DeadlineConfig

    path = _late_member_bundle(tmp, 4, args.late_depth, args.late_hidden)
    runtimes = {
        "stop": edge_runtime.load(
            path,
            entropy_threshold="off",
            latency_quantile=args.quantile,
            deadline=DeadlineConfig() if args.stop_lead_ms is None else DeadlineConfig(stop_lead_ms=args.stop_lead_ms),
        ),
        "no_stop": edge_runtime.load(
            path, entropy_threshold="off", latency_quantile=args.quantile, deadline=DeadlineConfig(in_flight_stop=False)
        ),
    }
    samples = [np.random.default_rng(i).normal(size=(1, 784)).astype(np.float32) for i in range(64)]
    ref = _reference(runtimes["stop"], samples, 50)
    budget = args.late_budget or 0.6 * ref["full_ms_p50"]
    rows = []
    for condition in args.contention:
        busy_core = {"none": None, "busy_same_core": core, "busy_other_core": None}[condition]
        if condition == "busy_other_core":
            continue
        with busy_process(busy_core), pinned(None if busy_core is None else core):
            lat = {k: [] for k in runtimes}
            used = {k: [] for k in runtimes}
            stopped: dict[str, list[bool]] = {k: [] for k in runtimes}
            for r in range(-args.settle // 4, args.late_requests):
                for name in ("stop", "no_stop") if r % 2 else ("no_stop", "stop"):
                    t = time.perf_counter()
                    (answer,) = runtimes[name].predict(samples[r % len(samples)], budget_ms=budget)
                    elapsed = time.perf_counter() - t
                    if args.late_gap_ms:  # idle time between requests (a request rate below saturation)
                        time.sleep(args.late_gap_ms / 1e3)
                    if r >= 0:
                        lat[name].append(elapsed * 1e3)
                        used[name].append(answer.members_used)
                        stopped[name].append(answer.stopped_in_flight)
        for name, runtime in runtimes.items():
            la, ua, sa = np.array(lat[name]), np.array(used[name]), np.array(stopped[name], dtype=bool)
            miss, forced = _miss(la, ua, budget, sa)
            missed = (la > budget) & ~((ua == 1) & ~sa)  # the misses the goal counts (not member 1 alone)
            rows.append(
                {
                    "contention": condition,
                    "in_flight_stop": name == "stop",
                    "budget_ms": budget,
                    "requests": len(la),
                    "miss_rate": miss,
                    "forced_miss_rate": forced,
                    "mean_members": float(ua.mean()),
                    "stopped_rate": float(sa.mean()) if len(sa) else 0.0,
                    # why the counted misses were late: stopped, but the stop came after the deadline (watchdog
                    # woke late, or ORT's next operator boundary came late), or the member ran to its end
                    "misses_stopped": int((missed & sa).sum()),
                    "misses_ran_to_end": int((missed & ~sa).sum()),
                    "miss_lateness_ms": percentiles(la[missed] - budget, (50,)) | {"max": float((la[missed] - budget).max())}
                    if missed.any()
                    else None,
                    "latency_ms": percentiles(la, (50, 99)) | {"max": float(la.max())},
                    "watchdog": runtime.watchdog.describe(),
                }
            )
    for runtime in runtimes.values():
        runtime.close()
    return {
        "bundle": f"4 members, 784 -> {args.late_depth} x (MatMul {args.late_hidden}, Relu) -> 10",
        "reference_quiet": ref,
        "budget_ms": budget,
        "latency_quantile": args.quantile,
        "gap_ms": args.late_gap_ms,
        "results": rows,
    }


def _stop_latency_phase(tmp: Path, runs: int) -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from edge_runtime.deadline import StoppedInFlight, Watchdog
    from edge_runtime.session import SessionConfig, create_session
    from onnx_members import deep_member_graph

    feed = {"x": np.zeros((1, 784), np.float32), "prev_logits": np.zeros((1, 10), np.float32)}
    big = create_session(deep_member_graph(1, (784,), 10, hidden=128, depth=400), SessionConfig())
    for _ in range(20):
        big.run(None, feed)
    run_ms = []
    for _ in range(50):
        t = time.perf_counter()
        big.run(None, feed)
        run_ms.append((time.perf_counter() - t) * 1e3)
    run_p50 = float(np.median(run_ms))
    watchdog = Watchdog(stop_lead_ms=0.0)
    rng = np.random.default_rng(0)
    finished = 0
    for _ in range(runs):
        deadline = time.perf_counter() + rng.uniform(0.2, 0.8) * run_p50 / 1e3
        try:
            watchdog.run(big.run, None, feed, deadline)  # type: ignore[arg-type]  # None: ORT returns every output
            finished += 1
        except StoppedInFlight:
            pass
    state = watchdog.describe()
    watchdog.close()
    # What guarding costs: a tiny member run plain and guarded (a deadline far away), interleaved.
    tiny = create_session(deep_member_graph(1, (784,), 10, hidden=16, depth=1), SessionConfig())
    guard = Watchdog(stop_lead_ms=0.0)
    plain_us, guarded_us = [], []
    for _ in range(2000):
        t = time.perf_counter()
        tiny.run(None, feed)
        plain_us.append((time.perf_counter() - t) * 1e6)
        t = time.perf_counter()
        guard.run(tiny.run, None, feed, t + 10.0)  # type: ignore[arg-type]  # None: ORT returns every output
        guarded_us.append((time.perf_counter() - t) * 1e6)
    guard.close()
    return {
        "graph": "808 nodes: 400 x (MatMul 128, Relu) + head",
        "run_ms_p50": run_p50,
        "runs": runs,
        "finished_before_stop": finished,
        "watchdog": state,
        "guard_cost_us_p50": float(np.median(guarded_us) - np.median(plain_us)),
        "tiny_run_us_p50": float(np.median(plain_us)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_input_args(parser)
    parser.add_argument("--phases", nargs="+", choices=PHASES, default=["budgets"], help="what to run (default: budgets)")
    parser.add_argument("--requests", type=int, default=2000, help="timed requests per budget and condition (default 2000)")
    parser.add_argument("--settle", type=int, default=200, help="untimed requests per budget when a condition starts")
    parser.add_argument(
        "--budgets", type=float, nargs="+", default=None, help="budgets in ms (default: derived from measured latencies)"
    )
    parser.add_argument("--num-budgets", type=int, default=6, help="how many budgets to derive (default 6)")
    parser.add_argument("--contention", nargs="+", choices=CONDITIONS, default=["none", "busy_same_core"])
    parser.add_argument(
        "--quantile",
        default="p99.5",
        choices=["p50", "p90", "p95", "p99", "p99.5"],
        help="latency quantile the runtime predicts with (default p99.5, the runtime's)",
    )
    parser.add_argument(
        "--observed-quantile", type=float, default=None, help="override the quantile of observed latencies (experiments)"
    )
    parser.add_argument("--core", type=int, default=None, help="core for pinning (default: the last one this process may use)")
    parser.add_argument(
        "--spike-budget", type=float, default=None, help="spike: budget in ms (default 5x quiet full-ensemble p50)"
    )
    parser.add_argument("--spike-quiet-s", type=float, default=3.0, help="spike: quiet seconds before the load (default 3)")
    parser.add_argument(
        "--spike-busy-s", type=float, default=3.0, help="spike: seconds with a busy process on every core (default 3)"
    )
    parser.add_argument("--spike-after-s", type=float, default=5.0, help="spike: quiet seconds after the load (default 5)")
    parser.add_argument("--late-depth", type=int, default=300, help="late_member: layers per member (default 300)")
    parser.add_argument("--late-hidden", type=int, default=128, help="late_member: layer width (default 128)")
    parser.add_argument(
        "--late-budget", type=float, default=None, help="late_member: budget in ms (default 60%% of the full ensemble)"
    )
    parser.add_argument("--late-requests", type=int, default=1000, help="late_member: timed requests per runtime and condition")
    parser.add_argument(
        "--stop-lead-ms",
        type=float,
        default=None,
        help="late_member: DeadlineConfig.stop_lead_ms of the runtime with the stop (default: the runtime's, 0.5)",
    )
    parser.add_argument(
        "--late-gap-ms",
        type=float,
        default=0.0,
        help="late_member: idle milliseconds after each request (default 0: back to back; a real-time runtime that "
        "never idles is throttled by the kernel, sched_rt_runtime_us)",
    )
    parser.add_argument("--stop-runs", type=int, default=500, help="stop_latency: stopped runs to time (default 500)")
    parser.add_argument(
        "--runtime-nice",
        type=int,
        default=None,
        help="run this process (the runtime) at this niceness, the busy processes at 0 (negative values need root); "
        "default: as started",
    )
    parser.add_argument(
        "--runtime-rr",
        type=int,
        default=None,
        metavar="PRIORITY",
        help="run this process (the runtime, all its threads) under the real-time round-robin policy SCHED_RR at this "
        "priority (1-99; needs root or CAP_SYS_NICE), the busy processes as ordinary ones; default: as started",
    )
    args = parser.parse_args(argv)
    if args.runtime_nice is not None:
        os.setpriority(os.PRIO_PROCESS, 0, args.runtime_nice)
    if args.runtime_rr is not None:  # threads started from now on inherit the policy
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(args.runtime_rr))
    cores = sorted(os.sched_getaffinity(0))
    core = cores[-1] if args.core is None else args.core
    other = next((c for c in cores if c != core), None)
    dev = device_line()
    result: dict[str, Any] = {
        "benchmark": "deadline",
        "device": dev,
        "phases": args.phases,
        "runtime_nice": os.getpriority(os.PRIO_PROCESS, 0),
        "runtime_policy": "SCHED_RR" if os.sched_getscheduler(0) == os.SCHED_RR else "SCHED_OTHER",
    }
    print(
        f"deadline: device {dev['cpu_model']} ({dev['logical_cores']} logical cores, ORT {dev['onnxruntime']}), "
        f"load average {dev['load_average_1m']:.2f}"
    )
    with workdir() as tmp:
        if "budgets" in args.phases or "spike" in args.phases:
            path, x, y, description = resolve_inputs(args, tmp)
            runtime = edge_runtime.load(path, entropy_threshold="off", latency_quantile=args.quantile)
            shape = tuple(runtime.manifest.task.input.shape[1:])
            samples = [np.ascontiguousarray(x[i].reshape(1, *shape)) for i in range(len(x))]
            reference = _reference(runtime, samples, 300)
            result |= {"source": description, "members": runtime.num_members, "reference_quiet": reference}
            if "budgets" in args.phases:
                result |= _budgets_phase(runtime, args, samples, np.asarray(y).reshape(-1), x, reference, core, other)
            if "spike" in args.phases:
                spike_rt = edge_runtime.load(path, entropy_threshold="off", latency_quantile=args.quantile)
                budget = args.spike_budget or 5 * reference["full_ms_p50"]
                spike = result["spike"] = _spike_phase(
                    spike_rt, samples, budget, args.spike_quiet_s, args.spike_busy_s, args.spike_after_s
                )
                spike_rt.close()
                print(
                    f"\nspike: budget {budget:.3f} ms, {spike['busy_processes']} busy processes for {args.spike_busy_s:g} s; "
                    f"pre-spike mean members {spike['pre_spike_mean_members']:.2f} (noise band {spike['recovery_tolerance_members']:.2f}); "
                    f"recovery {spike['recovery_s']:.1f} s (goal <= 2 s)"
                )
                print(
                    table(
                        ["second", "phase", "requests", "mean members", "miss %", "forced miss %"],
                        [
                            [
                                r["second"],
                                r["phase"],
                                r["requests"],
                                r["mean_members"],
                                100 * r["miss_rate"],
                                100 * r["forced_miss_rate"],
                            ]
                            for r in spike["per_second"]
                        ],
                    )
                )
            runtime.close()
        if "late_member" in args.phases:
            late = result["late_member"] = _late_member_phase(tmp, args, core)
            print(
                f"\nlate_member: {late['bundle']}; quiet member 1 p50 {late['reference_quiet']['member1_ms_p50']:.3f} ms, "
                f"full p50 {late['reference_quiet']['full_ms_p50']:.3f} ms; budget {late['budget_ms']:.3f} ms; predicting with {args.quantile}"
            )
            print(
                table(
                    [
                        "contention",
                        "stop",
                        "miss %",
                        "forced miss %",
                        "mean members",
                        "stopped %",
                        "lat p50",
                        "lat p99",
                        "lat max",
                        "stop lat p50",
                        "stop lat max",
                        "wake late max",
                        "misses stopped/ran",
                    ],
                    [
                        [
                            r["contention"],
                            r["in_flight_stop"],
                            100 * r["miss_rate"],
                            100 * r["forced_miss_rate"],
                            r["mean_members"],
                            100 * r["stopped_rate"],
                            r["latency_ms"]["p50"],
                            r["latency_ms"]["p99"],
                            r["latency_ms"]["max"],
                            (r["watchdog"]["stop_latency_ms"] or {}).get("p50", "-"),
                            (r["watchdog"]["stop_latency_ms"] or {}).get("max", "-"),
                            (r["watchdog"]["wake_late_ms"] or {}).get("max", "-"),
                            f"{r['misses_stopped']}/{r['misses_ran_to_end']}",
                        ]
                        for r in late["results"]
                    ],
                )
            )
            for r in late["results"]:
                if r["in_flight_stop"]:
                    print(
                        f"  {r['contention']}: miss rate with in-flight stop {100 * r['miss_rate']:.2f}% "
                        f"(goal <= 0.1%: {'met' if r['miss_rate'] <= 0.001 else 'missed'})"
                    )
        if "stop_latency" in args.phases:
            st = result["stop_latency"] = _stop_latency_phase(tmp, args.stop_runs)
            w = st["watchdog"]
            print(
                f"\nstop_latency: {st['graph']}, run p50 {st['run_ms_p50']:.3f} ms; {w['stopped']} of {st['runs']} runs stopped"
            )
            for key in ("stop_latency_ms", "wake_late_ms"):
                v = w[key] or {}
                print(
                    f"  {key}: p50 {v.get('p50', float('nan')):.3f}  p99 {v.get('p99', float('nan')):.3f}  max {v.get('max', float('nan')):.3f}"
                )
            print(f"  guarding a run costs {st['guard_cost_us_p50']:.1f} us (tiny member run {st['tiny_run_us_p50']:.1f} us)")
    write_json(args.json, result)
    return 0


def _budgets_phase(
    runtime: Any,
    args: argparse.Namespace,
    samples: list[np.ndarray],
    y: np.ndarray,
    x: np.ndarray,
    reference: dict[str, float],
    core: int,
    other: int | None,
) -> dict[str, Any]:
    if args.observed_quantile is not None:
        runtime.latency_estimator.quantile = args.observed_quantile
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
    out = {
        "estimator": runtime.latency_estimator.source(),
        "latency_quantile": args.quantile,
        "prefix_accuracy": prefix_accuracy,
        "core": core,
        "wall_s": wall,
        "results": results,
    }
    print(
        f"budgets: {args.requests} single-sample requests per budget and condition (+{args.settle} settle); "
        f"estimator: {out['estimator']} {args.quantile}; "
        f"quiet member 1 p50 {reference['member1_ms_p50']:.3f} ms, full ensemble p50 {reference['full_ms_p50']:.3f} ms "
        f"/ p99 {reference['full_ms_p99']:.3f} ms; prefix accuracy {', '.join(f'{a:.3f}' for a in prefix_accuracy)}"
    )
    header = [
        "contention",
        "budget ms",
        "miss %",
        "forced miss %",
        "accuracy",
        "mean members",
        "lat p50",
        "lat p99",
        "lat max",
        "exits",
    ]
    rows_out = [
        [
            r["contention"],
            r["budget_ms"],
            100 * r["miss_rate"],
            100 * r["forced_miss_rate"],
            r["accuracy"],
            r["mean_members"],
            r["latency_ms"]["p50"],
            r["latency_ms"]["p99"],
            r["latency_ms"]["max"],
            " ".join(f"{k}:{v}" for k, v in sorted(r["exit_reasons"].items())),
        ]
        for r in results
    ]
    print(table(header, rows_out))
    for condition in {r["contention"] for r in results}:
        rows = [r for r in results if r["contention"] == condition]
        worst = max(r["miss_rate"] for r in rows)
        accs = [r["accuracy"] for r in rows]
        rising = all(b >= a - 0.005 for a, b in zip(accs, accs[1:]))
        print(
            f"  {condition}: worst miss rate {100 * worst:.2f}% (goal <= 1%: {'met' if worst <= 0.01 else 'missed'}); "
            f"accuracy rising with budget: {'yes' if rising else 'no'} (tolerance 0.5 point)"
        )
    return out


if __name__ == "__main__":
    sys.exit(main())
