"""``anytime-edge export``: a trained checkpoint -> a gated one-member bundle (optionally a .zip)."""

from __future__ import annotations

import argparse
from pathlib import Path

from distill.cli._common import add_data_argument, check_input_shape

HELP = "export a trained teacher or student as a one-member bundle"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="directory with config.json + model.pt")
    add_data_argument(parser)
    parser.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    parser.add_argument("--zip", type=Path, help="also pack the bundle into this .zip file")
    parser.add_argument("--name", default=None, help="bundle name (default: the checkpoint's folder name)")


def run(args: argparse.Namespace) -> int:
    from distill.data import load_dataset
    from distill.teacher import load_model
    from exporters import archive_bundle, export_model

    model, config = load_model(args.checkpoint)
    dataset = load_dataset(args.data, seed=args.seed)
    check_input_shape(config, dataset, args.checkpoint, args.data)
    name = args.name or args.checkpoint.name
    result = export_model(
        model,
        dataset.task_spec(),
        args.out,
        heldout=(dataset.x_test, dataset.y_test),
        name=name,
        metadata={"data": dataset.name, "source": str(args.checkpoint), "model": config["model"]},
    )
    for line in result.describe():
        print(line)
    print(f"bundle: {result.path}")
    if args.zip:
        print(f"archive: {archive_bundle(result.path, args.zip)}")
    return 0
