"""``anytime-edge train-teacher``: train (or resume) the teacher and checkpoint it safely."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from distill.cli._common import add_data_argument

HELP = "train (or resume) the teacher classifier on a data set"


def configure(parser: argparse.ArgumentParser) -> None:
    add_data_argument(parser)
    parser.add_argument("--out", type=Path, default=Path("runs/teacher"), help="checkpoint directory (default runs/teacher)")
    parser.add_argument("--family", default="auto", help="mlp, cnn1d, cnn2d or auto (from the input rank)")
    parser.add_argument("--width", type=int, help="channels/units of the first layer (default: per data set)")
    parser.add_argument("--depth", type=int, help="conv blocks / hidden layers")
    parser.add_argument("--hidden", type=int, help="units of the penultimate layer (CNNs)")
    parser.add_argument("--epochs", type=int, help="training epochs")
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--batch-size", type=int, help="batch size")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    from distill.data import load_dataset
    from distill.teacher import default_teacher_config, train_teacher

    dataset = load_dataset(args.data, seed=args.seed)
    cfg = default_teacher_config(dataset)
    overrides = {
        k: v
        for k, v in {
            "family": args.family if args.family != "auto" else None,
            "width": args.width,
            "depth": args.depth,
            "hidden": args.hidden,
            "epochs": args.epochs,
            "lr": args.lr,
            "batch_size": args.batch_size,
        }.items()
        if v is not None
    }
    cfg = replace(cfg, seed=args.seed, **overrides)
    print(f"data {dataset!r}")
    print(f"teacher {cfg}")
    _, metrics = train_teacher(dataset, cfg, args.out, progress=not args.no_progress)
    if metrics["resumed_from_epoch"]:
        print(f"resumed from epoch {metrics['resumed_from_epoch']}")
    print(json.dumps(metrics, indent=2))
    print(f"checkpoint: {args.out} (model.pt = state dict, config.json)")
    return 0
