"""Low-rank students of the MNIST teacher: accuracy, parameters and ORT latency vs the teacher, per rank.

For each rank, each energy, and a measured speed-up target (ranks chosen by timing candidates beside the
teacher, see :func:`distill.lowrank.plan_for_latency`; one common rank is searched) the teacher is
factored spectrally, distilled for ``--epochs`` with the default Hinton KD loss and exported with
:func:`exporters.export_onnx`. Then *all* models, the teacher included, are timed in one process,
interleaved round by round (see :mod:`distill.lowrank.latency`), at batch 1 and batch 32, with the
runtime's session settings (one intra-op thread, sequential, no spinning). Medians and p99 come from the
pooled rounds; the machine's load average is printed, because other work on a shared CPU moves absolute
numbers (the ratios, measured side by side, move much less).

Goal: >= 2x lower p50 latency at batch 1 than the teacher at <= 1 point of accuracy loss.

Usage:
    python benchmarks/lowrank_students.py [--ranks 32 16 8] [--energies 0.9] [--speedup 2] [--epochs 1]
        [--json out.json]

The teacher is ``ensure_teacher`` on the shared real MNIST when present (else scikit-learn digits, and
the output says so), cached under ``--runs-dir``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from distill.data import shared_mnist_dir
from distill.errors import TrainingError
from distill.lowrank.latency import LatencyConfig, measure_side_by_side
from distill.lowrank.student import LowRankConfig, lowrank_student
from distill.models import count_params
from distill.teacher import ensure_teacher
from distill.train import accuracy, predict_logits
from edge_runtime.device import device_info
from exporters import export_onnx


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="data spec for ensure_teacher (default: the shared real MNIST, else digits)")
    parser.add_argument("--ranks", type=int, nargs="*", default=[32, 16, 8], help="fixed ranks to build")
    parser.add_argument("--energies", type=float, nargs="*", default=[0.9], help="retained energies to build")
    parser.add_argument(
        "--speedup",
        type=float,
        default=2.0,
        help="also build a student whose ranks are chosen by measuring this b1 p50 speed-up over "
        "the teacher, side by side (0 = skip)",
    )
    parser.add_argument("--epochs", type=int, default=1, help="distillation epochs per student")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak Adam learning rate of the distillation")
    parser.add_argument("--train-rows", type=int, default=0, help="distil on the first N training rows (0 = all)")
    parser.add_argument("--rounds", type=int, default=30, help="interleaved timing rounds")
    parser.add_argument("--calls", type=int, default=20, help="timed calls per model per round")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="teacher cache")
    parser.add_argument("--json", type=Path, help="write rows and conditions here")
    args = parser.parse_args(argv)
    if not args.ranks and not args.energies:
        parser.error("give at least one --ranks or --energies value")

    torch.set_num_threads(1)  # one thread: the machine is shared and the models are small
    started = time.perf_counter()
    data_spec = args.data or ("mnist" if shared_mnist_dir() is not None else "digits")  # the demo's teacher spec
    teacher, dataset, _ = ensure_teacher(data_spec, runs_dir=args.runs_dir, progress=False)
    teacher.eval()
    if args.train_rows:
        rows_kept = slice(0, args.train_rows)
        dataset = replace(dataset, x_train=dataset.x_train[rows_kept], y_train=dataset.y_train[rows_kept])
    teacher_logits = predict_logits(teacher, dataset.x_train)  # computed once for every student
    x_test, y_test = dataset.x_test, dataset.y_test
    example = torch.from_numpy(x_test[:4])

    rows: list[dict[str, Any]] = [
        {
            "name": "teacher",
            "rank": None,
            "energy": None,
            "accuracy": accuracy(teacher, x_test, y_test),
            "init_accuracy": None,
            "params": count_params(teacher),
            "layers": [],
            "build_seconds": 0.0,
        }
    ]
    blobs = {"teacher": export_onnx(teacher, example)}
    choices: list[tuple[str, float]] = [("rank", r) for r in args.ranks] + [("energy", e) for e in args.energies]
    if args.speedup > 0:
        choices.append(("speedup", args.speedup))
    skipped: list[dict[str, str]] = []
    for kind, value in choices:
        name = f"{kind}={value}"
        cfg = LowRankConfig(**{kind: value}, epochs=args.epochs, lr=args.lr)
        try:
            student, report = lowrank_student(teacher, dataset, cfg, teacher_logits=teacher_logits)
        except TrainingError as exc:  # e.g. an energy at which no layer gets cheaper: say so, keep going
            skipped.append({"name": name, "reason": str(exc)})
            print(f"skipped {name}: {exc}", file=sys.stderr)
            continue
        blobs[name] = export_onnx(student, example)
        rows.append(
            {
                "name": name,
                "rank": report.rank,
                "energy": report.energy,
                "speedup_target": value if kind == "speedup" else None,
                "latency_search": list(report.latency_search),
                "accuracy": report.student_accuracy,
                "init_accuracy": report.init_accuracy,
                "params": report.student_params,
                "layers": list(report.layers),
                "build_seconds": round(report.seconds, 1),
            }
        )
        print(
            f"built {name}: accuracy {report.student_accuracy:.4f} (init {report.init_accuracy:.4f}) in {report.seconds:.0f} s",
            file=sys.stderr,
        )

    load_before = os.getloadavg()
    timing = LatencyConfig(batch_sizes=(1, 32), rounds=args.rounds, calls_per_round=args.calls, warmup=50)
    latency = measure_side_by_side(blobs, x_test[:1024], timing)
    load_after = os.getloadavg()

    teacher_row = rows[0]
    t1 = latency["teacher"][1]["p50"]
    for row in rows:
        stats = latency[row["name"]]
        row.update(
            {
                "latency_ms_p50_b1": stats[1]["p50"],
                "latency_ms_p99_b1": stats[1]["p99"],
                "latency_ms_p50_b32": stats[32]["p50"],
                "latency_ms_p99_b32": stats[32]["p99"],
                "speedup_p50_b1": t1 / stats[1]["p50"],
                "speedup_p50_b32": latency["teacher"][32]["p50"] / stats[32]["p50"],
                "accuracy_loss_points": 100 * (teacher_row["accuracy"] - row["accuracy"]),
                "onnx_bytes": len(blobs[row["name"]]),
            }
        )
    meets = [r["name"] for r in rows[1:] if r["speedup_p50_b1"] >= 2.0 and r["accuracy_loss_points"] <= 1.0]

    info = device_info()
    print(
        f"device: {info['cpu_model']} ({info['logical_cores']} logical cores), onnxruntime {info['onnxruntime']}; "
        f"session: 1 intra-op thread, sequential, no spinning; load average {load_before[0]:.2f} before timing, "
        f"{load_after[0]:.2f} after"
    )
    print(
        f"data: {dataset.name} ({len(x_test)} test rows); students distilled {args.epochs} epoch(s) with KD on "
        f"{len(dataset.x_train)} training rows; "
        f"latency: {args.rounds} interleaved rounds x {args.calls} calls per model and batch size"
    )
    header = (
        f"{'model':<11} {'accuracy':>8} {'loss pt':>7} {'params':>8} {'b1 p50 ms':>9} {'b1 p99':>8} "
        f"{'speedup':>7} {'b32 p50 ms':>10} {'b32 p99':>8} {'speedup':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['name']:<11} {r['accuracy']:>8.4f} {r['accuracy_loss_points']:>7.2f} {r['params']:>8} "
            f"{r['latency_ms_p50_b1']:>9.4f} {r['latency_ms_p99_b1']:>8.4f} {r['speedup_p50_b1']:>6.2f}x "
            f"{r['latency_ms_p50_b32']:>10.4f} {r['latency_ms_p99_b32']:>8.4f} {r['speedup_p50_b32']:>6.2f}x"
        )
    print(
        "ranks per layer: "
        + "; ".join(
            f"{r['name']}: "
            + ", ".join(f"{lay['layer']} {lay['rank']}/{lay['full_rank']}" for lay in r["layers"] if lay["factored"])
            for r in rows[1:]
        )
    )
    for item in skipped:
        print(f"skipped {item['name']}: {item['reason']}")
    print(
        f"goal (>= 2x lower b1 p50 at <= 1 point accuracy loss) met by: {', '.join(meets) or 'none'}; "
        f"total {time.perf_counter() - started:.0f} s"
    )

    if args.json:
        payload = {
            "benchmark": "lowrank_students",
            "device": info,
            "load_average": {"before_timing": load_before, "after_timing": load_after},
            "data": dataset.name,
            "epochs": args.epochs,
            "train_rows": len(dataset.x_train),
            "timing": timing.describe(),
            "rows": rows,
            "goal_met_by": meets,
            "skipped": skipped,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
