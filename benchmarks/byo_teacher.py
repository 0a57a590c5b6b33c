"""Bring your own teacher, measured: the demo's table (teacher, B-DISTIL prefixes, low-rank, FCPTS) when the
teacher is the toolkit's own (``auto``) and when it is a user's ResNet-style model handed over as ONNX and as a
``torch.export`` program (``.pt2``).

The user's model (benchmarks/_byo_models.py: BatchNorm, residual blocks, global pooling, plain logits, raw
inputs) is trained here on the training split only (never on test), the way the case in shared/cases/byo
does it, then saved as ``.onnx`` and ``.pt2``; each teacher goes through ``anytime-edge demo`` unchanged.
For tabular or other non-image data only ``auto`` applies (``--teachers auto``).

    python benchmarks/byo_teacher.py --data digits --json runs/bench/byo_teacher_digits.json
    python benchmarks/byo_teacher.py --data ../shared/cases/byo/wine.npz --teachers auto --json runs/bench/byo_wine.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _byo_models import UserResNet, save_user_files  # beside this script
from distill.data import Dataset, load_dataset
from distill.demo import DemoConfig, run_demo


def train_user_model(data: Dataset, width: int, epochs: int, seed: int) -> nn.Module:
    """The user's ResNet on raw training inputs (cross-entropy, Adam 1e-2 as in the case), eval mode."""
    torch.manual_seed(seed)
    raw_max = float(np.abs(data.raw(data.x_train)).max()) or 1.0
    model = UserResNet(data.input_shape[0], width, data.num_classes, input_scale=raw_max)
    x, y = torch.from_numpy(data.raw(data.x_train)), torch.from_numpy(data.y_train)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed * 100 + epoch))
        for i in range(0, len(x), 64):
            idx = order[i : i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits")
    parser.add_argument("--teachers", nargs="+", default=["auto", "onnx", "pt2"], choices=("auto", "onnx", "pt2"))
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "byo")
    parser.add_argument("--width", type=int, default=32, help="the user's ResNet width (default 32, as in the case)")
    parser.add_argument("--epochs", type=int, default=15, help="the user's training epochs (default 15, as in the case)")
    parser.add_argument(
        "--lowrank-rank",
        type=int,
        default=16,
        help="one fixed rank for every teacher's low-rank student (0: the demo's timed 2x search, which "
        "picks different ranks on a loaded machine; default 16)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    data = load_dataset(args.data)
    files: dict[str, str] = {"auto": "auto"}
    user_test_accuracy = None
    if {"onnx", "pt2"} & set(args.teachers):
        if len(data.input_shape) != 3:
            parser.error("onnx/pt2 teachers here are image ResNets; use --teachers auto for other data")
        model = train_user_model(data, args.width, args.epochs, seed=0)
        with torch.no_grad():
            user_test_accuracy = float((model(torch.from_numpy(data.raw(data.x_test))).argmax(1).numpy() == data.y_test).mean())
        args.out.mkdir(parents=True, exist_ok=True)
        files["onnx"], files["pt2"] = str(args.out / "user_resnet.onnx"), str(args.out / "user_resnet.pt2")
        save_user_files(model, torch.from_numpy(data.raw(data.x_val[:2])), files["onnx"], files["pt2"])
        print(
            f"user's ResNet (width {args.width}, {args.epochs} epochs on the training split): test {100 * user_test_accuracy:.2f}%"
        )
    rows = []
    for kind in args.teachers:
        started = time.perf_counter()
        report = run_demo(
            DemoConfig(
                data=args.data,
                teacher=files[kind],
                out=args.out / f"demo-{data.name}-{kind}",
                runs_dir=args.out / "runs",
                lowrank_rank=args.lowrank_rank,
                progress=False,
            ),
            say=lambda line: None,
        )
        by_name = {c["name"]: c for c in report["candidates"]}
        rows.append(
            {
                "teacher": kind,
                "teacher_accuracy": by_name["teacher"]["accuracy"],
                "bdistil_prefixes": [p["accuracy"] for p in report["anytime_curve"]],
                "lowrank": by_name["lowrank"]["accuracy"],
                "lowrank_rank": args.lowrank_rank or "searched",
                "fcpts": by_name["sparse"]["accuracy"],
                "latency_ms_p50": {name: c["latency_ms_p50"] for name, c in by_name.items()},
                "warnings": report["warnings"],
                "seconds": round(time.perf_counter() - started, 1),
                "step_seconds": report["seconds"],
            }
        )
        row = rows[-1]
        print(
            f"{kind:5s} teacher {100 * row['teacher_accuracy']:.2f}%  B-DISTIL "
            + " / ".join(f"{100 * a:.2f}" for a in row["bdistil_prefixes"])
            + f"%  low-rank {100 * row['lowrank']:.2f}%  FCPTS {100 * row['fcpts']:.2f}%  ({row['seconds']:.0f} s)",
            flush=True,
        )
        for line in row["warnings"]:
            print(f"      warning: {line}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {"command": " ".join(sys.argv), "data": data.name, "user_model_test_accuracy": user_test_accuracy, "rows": rows},
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
