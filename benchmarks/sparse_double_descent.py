"""Sparse double descent and DSD² at CPU scale (docs/methods.md §4): accuracy and entropy vs sparsity.

Setting (CPU-sized; every choice is printed and stored): real MNIST, the first ``--limit-train`` training
samples (default 2000) with ``--noise`` symmetric label noise (default 30% and 50%; validation and test
stay clean), an over-parameterised MLP 784-W-W-10 (W = ``--width``, default 256, ~270k weights), Adam
1e-3, ``--dense-epochs`` (default 30, enough to fit the noisy labels: the interpolating start the sparse
double descent needs) for the dense model and ``--epochs`` (default 10) per pruning round, ``--rounds``
(default 24, reaching 99.5%) rounds of global L1 pruning at 20% of the remaining weights. Two runs with the same init and
schedule: *vanilla* (cross-entropy on the noisy labels) and *distilled* (DSD²: KD alpha 0.8, T 10 from the
vanilla model at its best validation accuracy). The ReLU-input entropy is pooled over 2048 validation
inputs (8 batches) per round.

Reported: both curves (test and clean-validation accuracy, noisy-train accuracy, entropy); the deepest
dip of each test curve (a round more than 0.5 point below both an earlier and a later round); early
stopping's pick on each curve (validation accuracy only) and how far it is from the best test accuracy
of that curve, in accuracy points and in sparsity points. Goals: the distilled curve has no dip where the
vanilla one dips; early stopping picks within 1 point of the best. Several ``--noise`` values can be
given; each adds one vanilla + one distilled run (~4-6 min each on 2 shared cores).

Usage:
    python benchmarks/sparse_double_descent.py [--noise 0.3] [--json out.json] [--plot out.png]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from distill.data import load_dataset
from distill.models import ModelConfig, build_model, count_params
from distill.sparse.dsd2 import DSD2Config, DSD2Result, find_dip, plot_curves, run_dsd2
from edge_runtime.device import device_info


def _summary(result: DSD2Result, margin: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind, curve, picked in (
        ("vanilla", result.vanilla, result.vanilla_picked_round),
        ("distilled", result.distilled, result.picked_round),
    ):
        tests = [r.test_accuracy for r in curve]
        dip = find_dip(tests, margin)
        best = max(range(len(curve)), key=lambda r: tests[r])
        out[kind] = {
            "dip": None
            if dip is None
            else {
                "round": dip[0],
                "sparsity": curve[dip[0]].sparsity,
                "test_accuracy": tests[dip[0]],
                "recovery_round": dip[1],
                "recovery_sparsity": curve[dip[1]].sparsity,
                "recovery_test_accuracy": tests[dip[1]],
            },
            "best_round": best,
            "best_sparsity": curve[best].sparsity,
            "best_test_accuracy": tests[best],
            "early_stop_round": picked,
            "early_stop_sparsity": curve[picked].sparsity,
            "early_stop_test_accuracy": tests[picked],
            "early_stop_accuracy_gap_points": 100 * (tests[best] - tests[picked]),
            "early_stop_sparsity_gap_points": 100 * abs(curve[best].sparsity - curve[picked].sparsity),
        }
    return out


def _table(result: DSD2Result) -> str:
    lines = [
        f"{'round':>5} {'sparsity':>9} | {'vanilla test':>12} {'val':>6} {'train*':>6} {'H':>5} | "
        f"{'DSD² test':>9} {'val':>6} {'train*':>6} {'H':>5}"
    ]
    for v, d in zip(result.vanilla, result.distilled):
        lines.append(
            f"{v.round:5d} {100 * v.sparsity:8.2f}% | {100 * v.test_accuracy:11.2f}% {100 * v.val_accuracy:5.1f}% "
            f"{100 * v.train_accuracy:5.1f}% {v.entropy:5.3f} | {100 * d.test_accuracy:8.2f}% "
            f"{100 * d.val_accuracy:5.1f}% {100 * d.train_accuracy:5.1f}% {d.entropy:5.3f}"
        )
    lines.append("train* = accuracy on the noisy training labels (memorisation); H = mean ReLU-input entropy (bits)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.3, 0.5], help="label noise levels, one run pair each")
    parser.add_argument("--limit-train", type=int, default=2000)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=10, help="epochs per pruning round")
    parser.add_argument(
        "--dense-epochs", type=int, default=30, help="epochs of the dense model: long enough to fit the noisy labels"
    )
    parser.add_argument("--rounds", type=int, default=24, help="24 rounds reach 99.5%% sparsity")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the cores are shared)")
    parser.add_argument("--json", type=Path, help="write all curves and the verdicts as JSON")
    parser.add_argument("--plot", type=Path, help="PNG per noise level (suffixed with the noise)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    dataset = load_dataset("mnist", seed=args.seed, limit_train=args.limit_train)
    model_cfg = ModelConfig(dataset.input_shape, dataset.num_classes, family="mlp", width=args.width, depth=args.depth)
    device = device_info()
    print(
        f"device: {device.get('cpu_model', device)}; {os.cpu_count()} logical cores shared with other jobs; "
        f"torch threads {args.threads}; load average at start {os.getloadavg()}"
    )
    print(
        f"data: MNIST, {len(dataset.y_train)} training samples, {len(dataset.y_val)} val, {len(dataset.y_test)} test; "
        f"model: MLP {args.width}x{args.depth}, {count_params(build_model(model_cfg))} parameters"
    )
    runs = []
    for noise in args.noise:
        cfg = DSD2Config(rounds=args.rounds, epochs=args.epochs, dense_epochs=args.dense_epochs, noise=noise, seed=args.seed)
        t0 = time.perf_counter()
        result, _, _ = run_dsd2(
            dataset,
            model_cfg,
            cfg,
            on_round=lambda k, r: print(
                f"  {k:9s} round {r.round:2d} sparsity {r.sparsity:6.2%} test {r.test_accuracy:6.2%} H {r.entropy:.3f}",
                file=sys.stderr,
                flush=True,
            ),
        )
        seconds = time.perf_counter() - t0
        summary = _summary(result, margin=0.005)
        print(
            f"\n== label noise {noise:.0%}: {seconds:.0f} s; teacher = vanilla round {result.teacher_round} "
            f"({result.vanilla[result.teacher_round].sparsity:.2%} sparse)"
        )
        print(_table(result))
        for kind in ("vanilla", "distilled"):
            s = summary[kind]
            dip = s["dip"]
            print(
                f"{kind:9s}: "
                + (
                    "no dip (no round > 0.5 point below both an earlier and a later one)"
                    if dip is None
                    else f"dip to {100 * dip['test_accuracy']:.2f}% at {100 * dip['sparsity']:.1f}% sparsity, recovers to "
                    f"{100 * dip['recovery_test_accuracy']:.2f}% at {100 * dip['recovery_sparsity']:.1f}%"
                )
                + f"; early stopping picks {100 * s['early_stop_sparsity']:.1f}% ({100 * s['early_stop_test_accuracy']:.2f}%), "
                f"best {100 * s['best_test_accuracy']:.2f}% at {100 * s['best_sparsity']:.1f}%: "
                f"gap {s['early_stop_accuracy_gap_points']:.2f} accuracy points, {s['early_stop_sparsity_gap_points']:.1f} sparsity points"
            )
        goal_dip = summary["vanilla"]["dip"] is not None and summary["distilled"]["dip"] is None
        goal_stop = summary["distilled"]["early_stop_accuracy_gap_points"] <= 1.0
        print(
            f"goal 'distilled has no dip where vanilla dips': {'met' if goal_dip else 'NOT met'}; "
            f"goal 'early stopping within 1 point of the best': {'met' if goal_stop else 'NOT met'}"
        )
        if args.plot:
            path = args.plot.with_name(f"{args.plot.stem}-noise{round(100 * noise)}{args.plot.suffix}")
            print(plot_curves(result, path) or f"plot: {path}")
        runs.append(
            {
                "noise": noise,
                "seconds": seconds,
                "result": result.to_dict(),
                "summary": summary,
                "goals": {"distilled_no_dip_where_vanilla_dips": goal_dip, "early_stop_within_1_point": goal_stop},
            }
        )
    total = time.perf_counter() - started
    print(f"\ntotal {total:.0f} s; load average at end {os.getloadavg()}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "device": device,
                    "threads": args.threads,
                    "load_average_end": os.getloadavg(),
                    "seconds": total,
                    "settings": vars(args) | {"json": str(args.json), "plot": str(args.plot)},
                    "runs": runs,
                },
                indent=2,
                default=str,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
