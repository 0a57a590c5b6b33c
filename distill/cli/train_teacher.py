"""``anytime-edge train-teacher``: train (or resume) the teacher and checkpoint it safely."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from distill.cli._common import add_data_argument, add_progress_argument

HELP = "train (or resume) the teacher classifier on a data set"


def configure(parser: argparse.ArgumentParser) -> None:
    add_data_argument(parser)
    parser.add_argument("--out", type=Path, default=Path("runs/teacher"), help="checkpoint directory (default runs/teacher)")
    parser.add_argument(
        "--family", default="auto", help="mlp, cnn1d, cnn2d, resnet (images; needs --hidden 0) or auto (from the input rank)"
    )
    parser.add_argument("--width", type=int, help="channels/units of the first layer (default: per data set)")
    parser.add_argument("--depth", type=int, help="conv blocks / hidden layers")
    parser.add_argument("--hidden", type=int, help="units of the penultimate layer (CNNs)")
    parser.add_argument("--epochs", type=int, help="training epochs")
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--batch-size", type=int, help="batch size")
    add_progress_argument(parser)
    parser.add_argument("--force", action="store_true", help="retrain even if --out holds a finished teacher")


def run(args: argparse.Namespace) -> int:
    from distill.data import load_dataset
    from distill.errors import CheckpointError
    from distill.teacher import default_teacher_config, finished_run, teacher_identity, train_teacher

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
    finished = None if args.force else finished_run(args.out)
    if finished is not None:
        identity, metrics = finished
        if identity != teacher_identity(dataset, cfg):
            raise CheckpointError(
                f"{args.out} holds a finished teacher of other data or settings; "
                "pass --force to replace it, or choose another --out"
            )
        print(
            f"{args.out} already holds this teacher, trained to the end (test accuracy "
            f"{metrics.get('test_accuracy', float('nan')):.2%}); reusing it (--force retrains)"
        )
        print(f"checkpoint: {args.out} (model.pt = state dict, config.json)")
        return 0
    _, metrics = train_teacher(dataset, cfg, args.out, progress=args.progress)
    if metrics["resumed_from_epoch"]:
        print(f"resumed from epoch {metrics['resumed_from_epoch']}")
    print(json.dumps(metrics, indent=2))
    print(f"checkpoint: {args.out} (model.pt = state dict, config.json)")
    return 0
