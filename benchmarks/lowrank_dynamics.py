"""Recovery error per iteration and vs wall time: original vs compressed deep linear network (Kwon et al.).

Two cases, the settings of the authors' notebooks (float64, full-batch GD, depth 3, eps = 1e-2):

* factorisation: d = 100, r = 10, step 1, alpha = 1 (the authors use no larger outer rate here);
* completion: d = 100, r = 5, 30% of entries observed, step 10, alpha = 5.

Per repeat, the original network (new orthogonal init seed each repeat) trains until its recovery error
reaches the tolerance; the compressed network then trains for the same number of steps in the same
process, right after it, so both see the same machine load. Reported: steps and GD seconds to reach the
tolerance (medians and min..max over repeats), whether the compressed error is below the original at
every logged step, and the wall-time speed-up. Error evaluation is excluded from the timed GD seconds.

Usage:
    python benchmarks/lowrank_dynamics.py [--repeats 3] [--tol 1e-3] [--json out.json] [--quick]

``--quick`` shrinks both cases (d = 40) for a smoke run; its numbers are not the paper's setting.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from distill.lowrank.dynamics import DynamicsConfig, make_problem, orthogonal_init, spectral_init, train_dln


@dataclass(frozen=True)
class Case:
    """One testbed setting."""

    name: str  # "factorisation" or "completion"
    d: int  # matrix size and original width
    rank: int  # true rank r (compressed width is 2r)
    observed: float  # fraction of observed entries (1 = factorisation)
    step_size: float  # GD step of the inner factors (both networks)
    outer_scale: float  # alpha for the compressed network's outer factors
    max_steps: int  # give up after this many steps
    log_every: int  # log resolution in steps


PAPER_CASES = (
    Case("factorisation", d=100, rank=10, observed=1.0, step_size=1.0, outer_scale=1.0, max_steps=300_000, log_every=500),
    Case("completion", d=100, rank=5, observed=0.3, step_size=10.0, outer_scale=5.0, max_steps=60_000, log_every=100),
)
QUICK_CASES = (
    Case("factorisation", d=40, rank=4, observed=1.0, step_size=1.0, outer_scale=1.0, max_steps=60_000, log_every=200),
    Case("completion", d=40, rank=2, observed=0.5, step_size=2.0, outer_scale=5.0, max_steps=30_000, log_every=100),
)
EPS = 1e-2
DEPTH = 3


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def run_case(case: Case, repeats: int, tol: float) -> dict[str, Any]:
    """Train both networks ``repeats`` times; return per-repeat results, summaries and the first trajectories."""
    problem = make_problem(case.d, case.rank, observed=case.observed, seed=0)
    runs = []
    curves: dict[str, Any] = {}
    for repeat in range(repeats):
        original = train_dln(
            orthogonal_init(case.d, DEPTH, EPS, seed=1 + repeat),
            problem,
            DynamicsConfig(steps=case.max_steps, step_size=case.step_size, log_every=case.log_every, stop_error=tol),
        )
        compressed = train_dln(
            spectral_init(problem.surrogate, 2 * case.rank, DEPTH, EPS),
            problem,
            DynamicsConfig(
                steps=int(original.steps[-1]),
                step_size=case.step_size,
                outer_scale=case.outer_scale,
                log_every=case.log_every,
            ),
        )
        below = bool(np.all(compressed.errors[1:] < original.errors[1:]))
        run = {
            "repeat": repeat,
            "original_steps_to_tol": original.steps_to(tol),
            "original_seconds_to_tol": original.seconds_to(tol),
            "compressed_steps_to_tol": compressed.steps_to(tol),
            "compressed_seconds_to_tol": compressed.seconds_to(tol),
            "compressed_below_at_every_logged_step": below,
            "original_us_per_step": 1e6 * float(original.seconds[-1]) / int(original.steps[-1]),
            "compressed_us_per_step": 1e6 * float(compressed.seconds[-1]) / int(compressed.steps[-1]),
        }
        if run["original_seconds_to_tol"] and run["compressed_seconds_to_tol"]:
            run["wall_speedup"] = run["original_seconds_to_tol"] / run["compressed_seconds_to_tol"]
        runs.append(run)
        if repeat == 0:
            curves = {
                "steps": original.steps.tolist(),
                "original_error": original.errors.tolist(),
                "original_seconds": original.seconds.tolist(),
                "compressed_error": compressed.errors.tolist(),
                "compressed_seconds": compressed.seconds.tolist(),
            }
    below_everywhere = all(r["compressed_below_at_every_logged_step"] for r in runs)
    summary: dict[str, Any] = {"all_repeats_below_at_every_logged_step": below_everywhere}
    for key in (
        "original_steps_to_tol",
        "compressed_steps_to_tol",
        "original_seconds_to_tol",
        "compressed_seconds_to_tol",
        "wall_speedup",
    ):
        values = [float(r[key]) for r in runs if r.get(key) is not None]
        if len(values) == len(runs):
            summary[key] = _summary(values)
    return {"case": asdict(case), "runs": runs, "summary": summary, "curves": curves}


def _device() -> dict[str, Any]:
    try:
        from edge_runtime.device import device_info

        info = dict(device_info())
    except Exception:  # noqa: BLE001 - the device description is best effort
        info = {"machine": platform.machine()}
    info["load_average_at_start"] = os.getloadavg()
    return info


def _fmt(stat: dict[str, float] | None, unit: str = "") -> str:
    if not stat:
        return "n/a"
    return f"{stat['median']:.4g}{unit} ({stat['min']:.4g}..{stat['max']:.4g})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="repeats per case (original init seed varies)")
    parser.add_argument("--tol", type=float, default=1e-3, help="recovery error to reach")
    parser.add_argument("--quick", action="store_true", help="small smoke setting (d = 40), not the paper's")
    parser.add_argument("--json", type=Path, help="write results (with the first repeat's curves) here")
    args = parser.parse_args(argv)
    if args.repeats < 1 or not args.tol > 0:
        parser.error("--repeats must be >= 1 and --tol > 0")

    device = _device()
    cases = QUICK_CASES if args.quick else PAPER_CASES
    results = []
    with threadpool_limits(1):  # one BLAS thread: the machine is shared, and small matmuls gain nothing
        for case in cases:
            results.append(run_case(case, args.repeats, args.tol))

    print(
        f"device: {device.get('cpu_model', '?')} ({device.get('logical_cores', '?')} logical cores), "
        f"numpy float64, 1 BLAS thread, load average at start {device['load_average_at_start'][0]:.2f}"
    )
    print(f"tolerance {args.tol:g}; medians (min..max) over {args.repeats} repeats; GD seconds exclude error evaluation")
    header = f"{'case':<14} {'net':<11} {'steps to tol':<26} {'seconds to tol':<26} {'us/step':>8}"
    print(header)
    print("-" * len(header))
    for res in results:
        s = res["summary"]
        for net in ("original", "compressed"):
            us = statistics.median(r[f"{net}_us_per_step"] for r in res["runs"])
            print(
                f"{res['case']['name']:<14} {net:<11} {_fmt(s.get(f'{net}_steps_to_tol')):<26} "
                f"{_fmt(s.get(f'{net}_seconds_to_tol'), ' s'):<26} {us:>8.1f}"
            )
        print(
            f"{'':<14} wall-time speed-up {_fmt(s.get('wall_speedup'), 'x')}; compressed error below original at "
            f"every logged step in all repeats: {s['all_repeats_below_at_every_logged_step']}"
        )
    print()
    for res in results:
        curves = res["curves"]
        print(f"{res['case']['name']}: recovery error at selected steps (repeat 0)")
        print(f"{'step':>8} {'original':>12} {'orig s':>8} {'compressed':>12} {'comp s':>8}")
        picks = np.unique(np.linspace(0, len(curves["steps"]) - 1, 12).astype(int))
        for i in picks:
            print(
                f"{curves['steps'][i]:>8} {curves['original_error'][i]:>12.3e} {curves['original_seconds'][i]:>8.2f} "
                f"{curves['compressed_error'][i]:>12.3e} {curves['compressed_seconds'][i]:>8.2f}"
            )
        print()

    if args.json:
        payload = {
            "benchmark": "lowrank_dynamics",
            "device": device,
            "tol": args.tol,
            "repeats": args.repeats,
            "depth": DEPTH,
            "eps": EPS,
            "quick": args.quick,
            "cases": results,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=1) + "\n")
    goals = all(r["summary"]["all_repeats_below_at_every_logged_step"] for r in results)
    return 0 if goals else 1


if __name__ == "__main__":
    sys.exit(main())
