"""``anytime-edge lowrank``: factor the teacher spectrally, distil it, export a one-member bundle.

Examples::

    anytime-edge lowrank --data mnist --energy 0.9 --epochs 3 --out runs/lowrank
    anytime-edge lowrank --data mnist --rank 16 --out runs/lowrank-r16
    anytime-edge lowrank --data mnist --latency-ms 0.08 --out runs/lowrank-fast   # measured on this CPU
    anytime-edge lowrank --data mnist --speedup 2 --out runs/lowrank-2x          # vs the teacher, side by side

Prints the per-layer ranks, accuracy (teacher, student at spectral init, student after distillation),
parameters, and ONNX Runtime latency of student and teacher timed side by side on this device.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from distill.cli._common import add_data_argument, add_progress_argument, add_teacher_arguments, resolve_teacher
from distill.cli._loss_args import add_loss_arguments, loss_from_args

HELP = "low-rank students with spectral init, distilled from the teacher"


def configure(parser: argparse.ArgumentParser) -> None:
    add_data_argument(parser)
    add_teacher_arguments(parser)
    choice = parser.add_mutually_exclusive_group(required=True)
    choice.add_argument("--energy", type=float, help="keep this fraction of each layer's spectral energy, e.g. 0.9")
    choice.add_argument("--rank", type=int, help="the same rank for every Linear/Conv layer it makes cheaper")
    choice.add_argument(
        "--latency-ms", type=float, help="target ORT p50 latency at batch 1 on this device; ranks chosen by measuring"
    )
    choice.add_argument(
        "--speedup",
        type=float,
        help="target ORT p50 speed-up over the teacher at batch 1 (e.g. 2), timed side by side on this device",
    )
    parser.add_argument(
        "--search",
        choices=("rank", "energy"),
        default="rank",
        help="what --latency-ms/--speedup walks: one common rank (default) or retained energy",
    )
    parser.add_argument(
        "--factors", type=int, choices=(2, 3), default=2, help="2: down/up pair (default); 3: the paper's V^T, diag(S), U chain"
    )
    parser.add_argument("--epochs", type=int, default=3, help="distillation epochs after the spectral init")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak Adam learning rate")
    parser.add_argument("--batch-size", type=int, default=128)
    add_loss_arguments(parser, default="kd")
    parser.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    parser.add_argument("--name", default="lowrank", help="bundle and member name")
    parser.add_argument("--json", type=Path, help="also write the report (ranks, accuracy, latency) here")
    add_progress_argument(parser)


def run(args: argparse.Namespace) -> int:
    import torch

    from distill import distributed
    from distill.errors import TrainingError
    from distill.lowrank.latency import LatencyConfig, measure_side_by_side
    from distill.lowrank.student import LowRankConfig, lowrank_student
    from exporters import export_model, export_onnx

    torch.set_num_threads(1)  # small models on a shared CPU: one thread is fastest and fair
    loss = loss_from_args(args)
    cfg = LowRankConfig(
        energy=args.energy,
        rank=args.rank,
        latency_ms=args.latency_ms,
        speedup=args.speedup,
        search=args.search,
        factors=args.factors,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        loss=loss.name,
        loss_params=tuple(sorted(loss.params().items())),
        seed=args.seed,
        progress=args.progress,
    )
    loaded, dataset = resolve_teacher(args)
    teacher = loaded.layered("low-rank factorisation", dataset, runs_dir=args.runs_dir, progress=cfg.progress, say=print)
    if len(dataset.x_test) < 2:
        raise TrainingError("the test split needs at least 2 rows to export and time the models")
    student, report = lowrank_student(teacher, dataset, cfg)
    if not distributed.main_continues_alone():  # under torchrun: every rank trained, rank 0 exports and times
        return 0
    ranks = {row["layer"]: row["rank"] for row in report.layers if row["factored"]}
    result = export_model(
        student,
        dataset.task_spec(),
        args.out,
        heldout=(dataset.x_test, dataset.y_test),
        name=args.name,
        metadata={"data": dataset.name, "teacher": loaded.source, "method": "lowrank"},
        info={
            "method": "lowrank",
            "energy": report.energy,
            "rank": report.rank,
            "ranks": ranks,
            "factors": cfg.factors,
            "accuracy": report.student_accuracy,
        },
    )
    example = torch.from_numpy(dataset.x_test[:4])
    latency = measure_side_by_side(
        {
            "teacher": export_onnx(teacher, example),
            "student": result.path.joinpath(result.manifest.members[0].file).read_bytes(),  # what the bundle runs
        },
        dataset.x_test[:512],
        LatencyConfig(batch_sizes=(1, 32), rounds=10, calls_per_round=20),
    )

    print("layer                 kind     shape          rank/full  energy  MACs")
    for row in report.layers:
        shape = "x".join(str(d) for d in row["shape"])  # type: ignore[attr-defined]  # rows are JSON-like: shape is a list
        print(
            f"{row['layer']:<21} {row['kind']:<8} {shape:<14} {row['rank']:>4}/{row['full_rank']:<5} "
            f"{row['energy_kept']:.3f}   {row['macs_ratio']:.2f}x" + (f"  dense: {row['note']}" if row["note"] else "")
        )
    print(
        f"accuracy: teacher {report.teacher_accuracy:.4f}, student at spectral init {report.init_accuracy:.4f}, "
        f"after {cfg.epochs} distillation epochs {report.student_accuracy:.4f}"
    )
    print(
        f"params: teacher {report.teacher_params}, student {report.student_params} "
        f"({report.student_params / report.teacher_params:.2f}x)"
    )
    for batch in (1, 32):
        t, s = latency["teacher"][batch], latency["student"][batch]
        print(
            f"ORT latency batch {batch}: student p50 {s['p50']:.4f} ms (p99 {s['p99']:.4f}), teacher p50 "
            f"{t['p50']:.4f} ms (p99 {t['p99']:.4f}): {t['p50'] / s['p50']:.2f}x faster (measured side by side)"
        )
    for line in result.describe():
        print(f"export gates: {line}")
    print(f"bundle: {result.path}")
    if args.json:
        payload = {
            **report.to_dict(),
            "latency_ms": {k: {str(b): v for b, v in d.items()} for k, d in latency.items()},
            "bundle": str(result.path),
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return 0
