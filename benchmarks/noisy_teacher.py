"""Noisy-teacher distillation (Sau & Balasubramanian, arXiv:1610.09650) against its baselines, on MNIST.

The claim under test (docs/methods.md §3): a shallow student that regresses a teacher's logits, with
the logits of a random alpha share of each batch perturbed as z (1 + xi), xi ~ N(0, sigma²), beats the
same student regressing the clean logits. Compared, with the same student, data, schedule and seeds:

* ``ce`` — hard labels only;
* ``kd`` — Hinton KD (alpha 0.9, T 4; one fixed setting, not tuned);
* ``logit_l2`` — noise-free logit regression (the paper's baseline);
* ``noisy_logit_l2`` — every (sigma, alpha) of the grid (sigma 0.1..1.0, alpha 0.3..0.9).

Teacher: the project's MNIST CNN (conv32-conv64-fc128) from ``distill.teacher.ensure_teacher("mnist")``;
its logits on the training subset are computed once. Student: an MLP with ONE hidden layer (784-H-10,
H = ``--hidden``, default 64) — "shallow" as in the paper. Each seed fixes the student's initialisation,
the batch order and the noise, and is shared by every method, so the per-seed differences are paired.

The winning noisy setting is chosen by mean VALIDATION accuracy and reported on the TEST set. The
best-on-test setting is also printed, marked as optimistic: taking the maximum of a grid on the data you
report inflates it. The verdict: the paper's claim holds here when the selected setting's mean test
accuracy exceeds logit regression's by more than the seed spread (the larger of the two standard
deviations over seeds).

The defaults (20000 training samples, 12 epochs, Adam lr 3e-3, batch 128, 5 x 4 grid, 3 seeds = 69
trainings) take about 11 minutes on 2 shared cores with torch limited to one thread.

Measured 2026-11-23 (AMD EPYC, 2 cores shared with other jobs, load average 6-7, 1 torch thread), teacher
99.22% test: the claim did NOT show up. Defaults: selected on validation s=0.1 a=0.7, test 96.43 ± 0.21
vs logit_l2 96.30 ± 0.26 (+0.13, paired +0.13 ± 0.11), below the seed spread; accuracy falls steadily
as sigma grows (s=1 a=0.9: -1.11 points); KD (97.06) and even hard labels (96.79) beat logit regression.
With ``--train-size 2000 --epochs 60`` (where a regulariser should matter most): selected s=0.25 a=0.3,
+0.15 points (spread 0.35); small sigma is mildly positive, large sigma hurts.

Usage:
    python benchmarks/noisy_teacher.py [--json out.json] [--train-size 20000] [--epochs 12] [--seeds 3]
    python benchmarks/noisy_teacher.py --quick   # a smoke run (small grid, few samples): not the result
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.losses import make_loss
from distill.models import ModelConfig, build_model, count_params
from distill.teacher import ensure_teacher
from distill.train import FitConfig, fit, predict_logits

SIGMAS = (0.1, 0.25, 0.5, 0.75, 1.0)
ALPHAS = (0.3, 0.5, 0.7, 0.9)


@dataclass(frozen=True)
class Method:
    """One row of the comparison: a loss and its parameters."""

    label: str  # shown in the table
    loss: str  # name in distill.losses.LOSSES
    sigma: float | None = None  # noisy teacher only
    alpha: float | None = None  # noisy teacher: picked share; kd: soft-term weight
    temperature: float | None = None  # kd only

    def build(self, seed: int) -> Any:
        if self.loss == "noisy_logit_l2":
            return make_loss(self.loss, sigma=self.sigma, alpha=self.alpha, seed=seed)
        if self.loss == "kd":
            return make_loss(self.loss, alpha=self.alpha, temperature=self.temperature)
        return make_loss(self.loss)


def methods(sigmas: tuple[float, ...], alphas: tuple[float, ...]) -> list[Method]:
    """The baselines, then the noisy grid (sigma-major)."""
    rows = [
        Method("ce (hard labels)", "ce"),
        Method("kd a=0.9 T=4", "kd", alpha=0.9, temperature=4.0),
        Method("logit_l2 (no noise)", "logit_l2"),
    ]
    rows += [Method(f"noisy s={s:g} a={a:g}", "noisy_logit_l2", sigma=s, alpha=a) for s in sigmas for a in alphas]
    return rows


def _wait_for_teacher(runs_dir: Path, data: str, max_wait_s: float) -> None:
    """Another process may be training this teacher right now: wait for it instead of training twice."""
    deadline = time.monotonic() + max_wait_s
    while True:
        busy = [
            d
            for d in (runs_dir / "teachers").glob(f"{data}-*")
            if (d / "progress.json").exists() and not (d / "metrics.json").exists()
        ]
        if not busy:
            return
        if time.monotonic() > deadline:
            sys.exit(f"noisy_teacher: {busy[0]} is still training after {max_wait_s:.0f} s; rerun when it is done")
        print(f"waiting for the teacher being trained in {busy[0]} ...", file=sys.stderr)
        time.sleep(20)


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,  # sample std (ddof = 1) over seeds
        "min": min(values),
        "max": max(values),
    }


def _device() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train every (method, seed) pair; returns the JSON-able results."""
    _wait_for_teacher(Path(args.runs_dir), args.data, args.max_wait)
    teacher, data, teacher_metrics = ensure_teacher(args.data, runs_dir=args.runs_dir, progress=False)
    pick = np.random.default_rng(0).permutation(len(data.x_train))[: args.train_size]
    x, y = data.x_train[pick], data.y_train[pick]
    started = time.perf_counter()
    teacher_logits = predict_logits(teacher, x)
    teacher_seconds = time.perf_counter() - started
    teacher_on = {
        "train_subset": float((teacher_logits.argmax(1) == y).mean()),
        "val": float((predict_logits(teacher, data.x_val).argmax(1) == data.y_val).mean()),
        "test": float(teacher_metrics["test_accuracy"]),
        "logit_abs_mean": float(np.abs(teacher_logits).mean()),
    }
    student_cfg = ModelConfig(
        input_shape=data.input_shape, num_classes=data.num_classes, family="mlp", width=args.hidden, depth=1
    )
    fit_cfg = dict(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, progress=False)
    rows = []
    for method in methods(args.sigmas, args.alphas):
        per_seed = []
        for seed in range(args.seeds):
            torch.manual_seed(seed)  # the student's initialisation
            student = build_model(student_cfg)
            t0 = time.perf_counter()
            fit(
                student,
                x,
                y,
                method.build(seed),
                FitConfig(seed=seed, desc=method.label, **fit_cfg),
                teacher_logits=teacher_logits,
            )
            seconds = time.perf_counter() - t0
            val = float((predict_logits(student, data.x_val).argmax(1) == data.y_val).mean())
            test = float((predict_logits(student, data.x_test).argmax(1) == data.y_test).mean())
            per_seed.append({"seed": seed, "val": val, "test": test, "train_seconds": seconds})
        row = {
            **asdict(method),
            "per_seed": per_seed,
            "val": _stats([r["val"] for r in per_seed]),
            "test": _stats([r["test"] for r in per_seed]),
            "train_seconds_median": statistics.median(r["train_seconds"] for r in per_seed),
        }
        rows.append(row)
        print(f"  {method.label:<24} val {_pct(row['val'])}  test {_pct(row['test'])}", file=sys.stderr)
    return {
        "config": {
            "data": args.data,
            "train_size": len(x),
            "val_size": len(data.x_val),
            "test_size": len(data.x_test),
            "student": f"MLP {int(np.prod(data.input_shape))}-{args.hidden}-{data.num_classes} (one hidden layer, ReLU)",
            "student_params": count_params(build_model(student_cfg)),
            "epochs": args.epochs,
            "lr": args.lr,
            "batch_size": args.batch_size,
            "optimizer": "Adam, cosine-annealed per step to 0",
            "seeds": args.seeds,
            "sigmas": list(args.sigmas),
            "alphas": list(args.alphas),
        },
        "teacher": {**teacher_on, "params": teacher_metrics.get("params"), "logits_seconds": teacher_seconds},
        "rows": rows,
        "verdict": verdict(rows),
    }


def verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Selected-on-validation noisy setting vs noise-free logit regression, on the test set."""
    base = next(r for r in rows if r["loss"] == "logit_l2")
    noisy = [r for r in rows if r["loss"] == "noisy_logit_l2"]
    chosen = max(noisy, key=lambda r: r["val"]["mean"])
    oracle = max(noisy, key=lambda r: r["test"]["mean"])
    gain = chosen["test"]["mean"] - base["test"]["mean"]
    spread = max(chosen["test"]["std"], base["test"]["std"])
    paired = [a["test"] - b["test"] for a, b in zip(chosen["per_seed"], base["per_seed"])]
    beats = sum(r["test"]["mean"] > base["test"]["mean"] for r in noisy)
    return {
        "selected_on_val": chosen["label"],
        "selected_test": chosen["test"],
        "logit_l2_test": base["test"],
        "gain_points": 100 * gain,
        "seed_spread_points": 100 * spread,
        "paired_gain_points": _stats([100 * d for d in paired]),
        "claim_holds": gain > spread,
        "noisy_settings_beating_logit_l2_on_test": f"{beats}/{len(noisy)}",
        "note": "the noisy setting is chosen by mean validation accuracy and reported on test; the best-on-test "
        f"entry is optimistic (a maximum over the grid taken on the reported data); {len(base['per_seed'])} seeds give a coarse spread",
        "best_on_test_optimistic": {
            "label": oracle["label"],
            "test": oracle["test"],
            "gain_points": 100 * (oracle["test"]["mean"] - base["test"]["mean"]),
        },
    }


def _pct(s: dict[str, float]) -> str:
    return f"{100 * s['mean']:6.2f} ± {100 * s['std']:4.2f}"


def report(result: dict[str, Any]) -> str:
    cfg, dev, v = result["config"], result["device"], result["verdict"]
    base = next(r for r in result["rows"] if r["loss"] == "logit_l2")["test"]["mean"]
    lines = [
        f"Noisy-teacher distillation on {cfg['data']}: student {cfg['student']} ({cfg['student_params']} params), "
        f"{cfg['train_size']} training samples, {cfg['epochs']} epochs, lr {cfg['lr']}, batch {cfg['batch_size']}, {cfg['seeds']} seeds",
        f"teacher accuracy: test {100 * result['teacher']['test']:.2f}%, val {100 * result['teacher']['val']:.2f}%; "
        f"device: {dev['cpu']}, {dev['logical_cores']} logical cores shared with other jobs, torch threads {dev['torch_threads']}, "
        f"load average {dev['load_average_start']} -> {dev['load_average_end']}",
        "accuracy in %, mean ± sample std over seeds; Δ = test mean - logit_l2 test mean (points)",
        "",
        f"{'method':<24} {'val':>14} {'test':>14} {'Δ test':>8} {'s/run':>7}",
    ]
    for r in result["rows"]:
        mark = "  <- selected on val" if r["label"] == v["selected_on_val"] else ""
        lines.append(
            f"{r['label']:<24} {_pct(r['val']):>14} {_pct(r['test']):>14} {100 * (r['test']['mean'] - base):>+8.2f} "
            f"{r['train_seconds_median']:>7.1f}{mark}"
        )
    opt = v["best_on_test_optimistic"]
    paired = v["paired_gain_points"]
    lines += [
        "",
        f"selected on validation: {v['selected_on_val']}: test {_pct(v['selected_test'])} vs logit_l2 {_pct(v['logit_l2_test'])}",
        f"gain {v['gain_points']:+.2f} points, seed spread {v['seed_spread_points']:.2f} points; paired per-seed gain "
        f"{paired['mean']:+.2f} ± {paired['std']:.2f} (min {paired['min']:+.2f}, max {paired['max']:+.2f})",
        f"claim (best noisy setting beats noise-free logit regression by more than the seed spread): "
        f"{'HOLDS' if v['claim_holds'] else 'NOT SHOWN'} here",
        f"noisy settings whose test mean beats logit_l2: {v['noisy_settings_beating_logit_l2_on_test']}",
        f"best on test (optimistic: chosen on the data it is reported on): {opt['label']} {_pct(opt['test'])}, {opt['gain_points']:+.2f} points",
        f"wall time {result['wall_seconds']:.0f} s",
    ]
    return "\n".join(lines)


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="mnist", help="data set spec (default: mnist, the real MNIST)")
    parser.add_argument("--runs-dir", default="runs", help="where the cached teacher lives (default: runs)")
    parser.add_argument("--train-size", type=int, default=20000, help="training subset for the students")
    parser.add_argument("--hidden", type=int, default=64, help="units of the student's one hidden layer")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--sigmas", type=_floats, default=SIGMAS, help="comma-separated noise stds")
    parser.add_argument("--alphas", type=_floats, default=ALPHAS, help="comma-separated picked shares")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--max-wait", type=float, default=1800, help="seconds to wait for a teacher another process trains")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2000 samples, 3 epochs, 2x2 grid, 2 seeds")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_size, args.epochs, args.seeds, args.sigmas, args.alphas = 2000, 3, 2, (0.1, 1.0), (0.3, 0.9)
    if args.seeds < 2 or args.train_size < 1 or args.epochs < 1 or args.hidden < 1:
        parser.error("need --seeds >= 2 (a spread), and positive --train-size, --epochs, --hidden")
    torch.set_num_threads(args.threads)
    device = _device()
    started = time.perf_counter()
    result = run(args)
    result["wall_seconds"] = time.perf_counter() - started
    result["device"] = {**device, "load_average_end": os.getloadavg() if hasattr(os, "getloadavg") else None}
    result["quick"] = args.quick
    result["command"] = " ".join([Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)])
    print(report(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
