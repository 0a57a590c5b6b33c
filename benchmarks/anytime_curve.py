"""Anytime curve: accuracy and cumulative ONNX Runtime latency of every prefix, B-DISTIL vs its baselines.

For each data set (real MNIST from ../shared/data/mnist, digits, MNIST-1D) and t = 1..K:

* ``bdistil``    - F_t of the B-DISTIL ensemble (members summed, each taking member t-1's features);
* ``resched``    - the mean of t independently distilled students of the same sizes;
* ``no_resched`` - one student whose cost (MACs) is the cumulative cost of B-DISTIL's members 1..t;
* the teacher.

Accuracy is on the test split, computed by ONNX Runtime on the exported members chained as the device
runs them (the export gates). Latency is batch 1, single stream, one intra-op thread: every prefix's
whole chain (members 1..t, prev_logits and connections fed) is timed as one request; all chains of all
methods and the teacher are interleaved request by request in a shuffled order, after a warm-up, so a
busy shared machine slows them alike. Reported: p50 with p10/p90 as the spread.

Training budget (chosen so the three data sets fit in ~15 minutes on 2 shared cores, teachers cached):
MNIST students see 20,000 of the 54,000 training images for 3 epochs per member/student; digits 40
epochs; MNIST-1D 30 epochs. Each baseline student gets the same epochs as one B-DISTIL member.
Teachers come from ``runs/teachers`` (trained on first use, which is not counted).

    python benchmarks/anytime_curve.py [--data mnist digits mnist1d] [--members 4] [--json PATH]
        [--details PATH] [--refine-epochs N] [--requests 400]

``--json`` writes exactly ``[{"dataset", "teacher": {"accuracy", "latency_ms_p50"}, "methods":
{"bdistil"|"resched"|"no_resched": [{"members", "accuracy", "latency_ms_p50"}, ...]}}, ...]``;
``--details`` adds spreads, build reports, validation numbers, the refined variant and the conditions.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout first, whatever is installed

import torch

from distill.data import Dataset, load_dataset
from distill.progressive import (
    BaselineConfig,
    Ensemble,
    ProgressiveConfig,
    limit_training,
    no_resched_students,
    progressive_ensemble,
    resched_ensemble,
)
from distill.teacher import ensure_teacher
from edge_runtime.bundle import Manifest, load_bundle
from edge_runtime.device import device_info
from edge_runtime.session import SessionConfig, create_session
from exporters import export_ensemble, export_model


@dataclass(frozen=True)
class Budget:
    """Training budget of one data set."""

    limit_train: int | None  # training rows the students see (None = all)
    epochs: int  # per B-DISTIL member attempt and per baseline student
    lr: float
    batch_size: int


BUDGETS = {
    "mnist": Budget(limit_train=20000, epochs=3, lr=3e-3, batch_size=128),
    "digits": Budget(limit_train=None, epochs=40, lr=3e-3, batch_size=64),
    "mnist1d": Budget(limit_train=None, epochs=30, lr=3e-3, batch_size=64),
}


def _chain(bundle: Path) -> tuple[Manifest, list[Callable[[np.ndarray], None]]]:
    """One callable per prefix t: runs members 1..t of ``bundle`` on one input, as the runtime does."""
    loaded = load_bundle(bundle)
    manifest = loaded.manifest
    sessions = [create_session(blob, SessionConfig()) for blob in loaded.member_bytes]
    x_name = manifest.task.input.name

    def run_prefix(t: int) -> Callable[[np.ndarray], None]:
        def run(x: np.ndarray) -> None:
            outputs: list[dict[str, np.ndarray]] = []
            for k in range(t):
                spec = manifest.members[k]
                feed = {x_name: x}
                if k:
                    feed["prev_logits"] = outputs[k - 1]["logits"]
                for c in spec.connections:
                    feed[c.input] = outputs[c.member][c.output]
                values = sessions[k].run(list(spec.outputs), feed)
                outputs.append(dict(zip(spec.outputs, values)))

        return run

    return manifest, [run_prefix(t) for t in range(1, manifest.num_members + 1)]


def _time_interleaved(
    chains: dict[str, Callable[[np.ndarray], None]], rows: np.ndarray, requests: int, warmup: int, seed: int
) -> dict[str, dict[str, float]]:
    """Per chain: p10/p50/p90 latency (ms) of ``requests`` batch-1 calls, interleaved in shuffled order."""
    names = list(chains)
    order = random.Random(seed)
    for i in range(warmup):
        for name in names:
            chains[name](rows[i % len(rows)][None])
    samples: dict[str, list[float]] = {n: [] for n in names}
    for i in range(requests):
        x = rows[i % len(rows)][None]
        order.shuffle(names)
        for name in names:
            start = time.perf_counter_ns()
            chains[name](x)
            samples[name].append((time.perf_counter_ns() - start) / 1e6)
    return {n: {q: float(np.percentile(s, p)) for q, p in (("p10", 10), ("p50", 50), ("p90", 90))} for n, s in samples.items()}


def _prefix_rows(accuracy: list[float], latency: list[dict[str, float]]) -> list[dict[str, Any]]:
    return [{"members": t + 1, "accuracy": a, "latency_ms_p50": lat["p50"]} for t, (a, lat) in enumerate(zip(accuracy, latency))]


def run_dataset(
    spec: str, members: int, requests: int, refine_epochs: int, seed: int, workdir: Path, log: Callable[[str], None]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Build, export and time every method on one data set; returns (the JSON object, details)."""
    budget = BUDGETS.get(spec, BUDGETS["digits"])
    started = time.perf_counter()
    full = load_dataset(spec, seed=seed)
    teacher, full, teacher_metrics = ensure_teacher(full, progress=False)
    data: Dataset = limit_training(full, budget.limit_train)
    heldout = (full.x_test, full.y_test)
    task = full.task_spec()
    common = dict(epochs=budget.epochs, lr=budget.lr, batch_size=budget.batch_size, seed=seed, progress=False)
    timings: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        out = fn()
        timings[name] = round(time.perf_counter() - t0, 1)
        log(f"  {spec}: {name} built in {timings[name]:.0f} s")
        return out

    bd: Ensemble = timed("bdistil", lambda: progressive_ensemble(teacher, data, ProgressiveConfig(members=members, **common)))
    k = len(bd.members)
    candidates = [m.candidate for m in bd.report.members]
    baseline_cfg = BaselineConfig(**common)
    rs: Ensemble = timed("resched", lambda: resched_ensemble(teacher, data, candidates, baseline_cfg))
    budgets = list(np.cumsum([m.macs for m in bd.report.members]))
    nr_students, nr_report = timed("no_resched", lambda: no_resched_students(teacher, data, budgets, candidates[0], baseline_cfg))
    refined: Ensemble | None = None
    if refine_epochs:
        refined = timed(
            "bdistil_refined",
            lambda: progressive_ensemble(
                teacher, data, ProgressiveConfig(members=members, refine_epochs=refine_epochs, **common)
            ),
        )

    # Export (every prefix gated: ORT chained == torch, accuracy on the test split).
    bundles: dict[str, Path] = {}
    accuracy: dict[str, list[float]] = {}
    result = export_ensemble(
        bd.members, task, workdir / f"{spec}-bdistil", heldout=heldout, connections=bd.connections, combine="sum"
    )
    bundles["bdistil"], accuracy["bdistil"] = result.path, [g.onnx_accuracy for g in result.reports]
    result = export_ensemble(rs.members, task, workdir / f"{spec}-resched", heldout=heldout, combine="mean")
    bundles["resched"], accuracy["resched"] = result.path, [g.onnx_accuracy for g in result.reports]
    accuracy["no_resched"] = []
    for t, student in enumerate(nr_students):
        single = export_model(student, task, workdir / f"{spec}-no_resched-t{t + 1}", heldout=heldout)
        bundles[f"no_resched_t{t + 1}"] = single.path
        accuracy["no_resched"].append(single.reports[0].onnx_accuracy)
    teacher_export = export_model(teacher, task, workdir / f"{spec}-teacher", heldout=heldout)
    bundles["teacher"] = teacher_export.path
    accuracy["teacher"] = [teacher_export.reports[0].onnx_accuracy]
    if refined is not None:
        result = export_ensemble(
            refined.members, task, workdir / f"{spec}-refined", heldout=heldout, connections=refined.connections
        )
        bundles["bdistil_refined"], accuracy["bdistil_refined"] = result.path, [g.onnx_accuracy for g in result.reports]

    chains: dict[str, Callable[[np.ndarray], None]] = {}
    for name in ("bdistil", "resched", "bdistil_refined"):
        if name in bundles:
            _, prefixes = _chain(bundles[name])
            chains.update({f"{name}:{t + 1}": run for t, run in enumerate(prefixes)})
    for t in range(len(nr_students)):
        chains[f"no_resched:{t + 1}"] = _chain(bundles[f"no_resched_t{t + 1}"])[1][0]
    chains["teacher:1"] = _chain(bundles["teacher"])[1][0]
    load_before = os.getloadavg()
    latency = _time_interleaved(chains, full.x_test[:256], requests=requests, warmup=max(20, requests // 10), seed=seed)
    load_after = os.getloadavg()

    def lat(method: str, count: int) -> list[dict[str, float]]:
        return [latency[f"{method}:{t + 1}"] for t in range(count)]

    out = {
        "dataset": full.name,
        "teacher": {"accuracy": accuracy["teacher"][0], "latency_ms_p50": latency["teacher:1"]["p50"]},
        "methods": {
            "bdistil": _prefix_rows(accuracy["bdistil"], lat("bdistil", k)),
            "resched": _prefix_rows(accuracy["resched"], lat("resched", k)),
            "no_resched": _prefix_rows(accuracy["no_resched"], lat("no_resched", k)),
        },
    }
    details = {
        "dataset": full.name,
        "budget": {**budget.__dict__, "train_rows": len(data.x_train), "test_rows": len(full.x_test)},
        "teacher": {"metrics": teacher_metrics, "latency_ms": latency["teacher:1"]},
        "latency_ms": latency,
        "accuracy": accuracy,
        "build_seconds": timings,
        "total_seconds": round(time.perf_counter() - started, 1),
        "process_cpu_seconds_so_far": round(sum(psutil.Process().cpu_times()[:2]), 1),
        "load_average_before_after_timing": [load_before, load_after],
        "reports": {
            "bdistil": bd.report.to_dict(),
            "resched": rs.report.to_dict(),
            "no_resched": nr_report.to_dict(),
            **({"bdistil_refined": refined.report.to_dict()} if refined is not None else {}),
        },
    }
    return out, details


def _print_table(result: dict[str, Any], details: dict[str, Any]) -> None:
    lat = details["latency_ms"]
    teacher = result["teacher"]
    print(
        f"\n== {result['dataset']}: teacher accuracy {100 * teacher['accuracy']:.2f}%, latency p50 "
        f"{teacher['latency_ms_p50']:.3f} ms (p10-p90 {lat['teacher:1']['p10']:.3f}-{lat['teacher:1']['p90']:.3f})"
    )
    methods = ["bdistil", "resched", "no_resched"] + (["bdistil_refined"] if "bdistil_refined" in details["accuracy"] else [])
    print(f"{'t':>2} " + " ".join(f"{m:>34}" for m in methods))
    for t in range(len(result["methods"]["bdistil"])):
        cells = []
        for m in methods:
            acc = details["accuracy"][m][t]
            cell = lat[f"{m}:{t + 1}"]
            cells.append(f"{100 * acc:6.2f}% {cell['p50']:.3f} ms ({cell['p10']:.3f}-{cell['p90']:.3f})")
        print(f"{t + 1:>2} " + " ".join(f"{c:>34}" for c in cells))
    bd = result["methods"]["bdistil"]
    per_member = [lat[f"bdistil:{t + 1}"]["p50"] - (lat[f"bdistil:{t}"]["p50"] if t else 0.0) for t in range(len(bd))]
    print(
        "bdistil member latency increments p50 (ms): "
        + ", ".join(f"{v:.3f}" for v in per_member)
        + f"; teacher/4 = {teacher['latency_ms_p50'] / 4:.3f}"
    )
    print(
        f"build seconds {details['build_seconds']}, data set total {details['total_seconds']} s, "
        f"load average before/after timing {details['load_average_before_after_timing']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=["mnist", "digits", "mnist1d"])
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--requests", type=int, default=400, help="timed batch-1 requests per chain")
    parser.add_argument("--refine-epochs", type=int, default=0, help="also build the refined B-DISTIL variant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the figure's data (the exact schema) here")
    parser.add_argument("--details", type=Path, help="write spreads, build reports and conditions here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a shared 2-core machine: one thread for training, one for ORT
    info = device_info()
    print(
        f"device: {info['cpu_model']}, {info['logical_cores']} logical cores, onnxruntime {info['onnxruntime']}, "
        f"torch {torch.__version__}; ORT intra-op threads 1, sequential, no spinning; batch 1; "
        f"load average at start {os.getloadavg()}, cpu {psutil.cpu_percent(interval=0.5)}%"
    )
    results, details = [], []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="anytime_curve_") as tmp:
        for spec in args.data:
            result, detail = run_dataset(
                spec,
                args.members,
                args.requests,
                args.refine_epochs,
                args.seed,
                Path(tmp),
                lambda line: print(line, file=sys.stderr, flush=True),
            )
            _print_table(result, detail)
            results.append(result)
            details.append(detail)
    cpu = psutil.Process().cpu_times()
    print(
        f"\ntotal {time.perf_counter() - started:.0f} s wall, {cpu.user + cpu.system:.0f} s CPU of this process "
        f"(the gap is time the shared machine gave to other processes); load average now {os.getloadavg()}"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.details:
        args.details.parent.mkdir(parents=True, exist_ok=True)
        args.details.write_text(json.dumps({"device": info, "runs": details}, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
