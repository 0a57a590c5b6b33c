"""``anytime-edge export``: a model -> a gated one-member bundle (optionally a .zip).

MODEL is a checkpoint directory written by the toolkit (config.json + model.pt), a user's ONNX classifier
(``.onnx``), or a ``torch.export`` program (``.pt2``, written by ``torch.export.save``). An ``.onnx`` or
``.pt2`` gets the bundle head added by :mod:`exporters.wrap` (the ``.onnx`` case needs no torch:
``pip install -c constraints.txt '.[wrap]'`` on top of the runtime install is enough).

Inputs: a checkpoint was trained on the data's standardised inputs, so its bundle standardises what
clients send. A user's own model takes raw values by default (``--preprocess none``: the bundle passes
client arrays through unchanged); ``--preprocess data`` is for a model trained on inputs standardised
the way ``--data`` standardises them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from distill.cli._common import add_data_argument, check_input_shape

HELP = "export a checkpoint, or wrap an .onnx / .pt2 classifier, as a one-member bundle"
WRAPPED_SUFFIXES = (".onnx", ".pt2")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        type=Path,
        help="a checkpoint directory (config.json + model.pt), an ONNX classifier (.onnx), or a torch.export "
        "program (.pt2); the last two must map a float32 batch (N, ...) to logits (N, classes)",
    )
    add_data_argument(parser)
    parser.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    parser.add_argument("--zip", type=Path, help="also pack the bundle into this .zip file")
    parser.add_argument("--name", default=None, help="bundle name (default: the model's file or folder name)")
    parser.add_argument(
        "--preprocess",
        choices=("none", "data"),
        default=None,
        help="for .onnx/.pt2: 'none' (default) if the model takes raw values as clients send them, 'data' if it "
        "was trained on inputs standardised as --data does; checkpoints always use 'data'",
    )
    parser.add_argument(
        "--logits-output",
        default=None,
        metavar="NAME",
        help="for .onnx: the graph output holding the logits (default: the only output, else the one "
        "named 'logits', else the first)",
    )


def run(args: argparse.Namespace) -> int:
    from distill.errors import DistillError

    model: Path = args.model
    if model.suffix.lower() in WRAPPED_SUFFIXES:
        return _wrap(args)
    if model.is_file():
        raise DistillError(f"{model} is a file but not .onnx or .pt2; pass a checkpoint directory, an .onnx or a .pt2")
    if args.preprocess == "none" or args.logits_output is not None:
        flag = "--logits-output" if args.logits_output is not None else "--preprocess none"
        raise DistillError(f"{flag} applies to .onnx/.pt2 models only; a checkpoint takes the data's preprocess")
    return _export_checkpoint(args)


def _export_checkpoint(args: argparse.Namespace) -> int:
    from distill.data import load_dataset
    from distill.teacher import load_model
    from exporters import archive_bundle, export_model

    model, config = load_model(args.model)
    dataset = load_dataset(args.data, seed=args.seed)
    check_input_shape(config, dataset, args.model, args.data)
    name = args.name or args.model.name
    result = export_model(
        model,
        dataset.task_spec(),
        args.out,
        heldout=(dataset.x_test, dataset.y_test),
        name=name,
        metadata={"data": dataset.name, "source": str(args.model), "model": config["model"]},
    )
    for line in result.describe():
        print(line)
    print(f"bundle: {result.path}")
    if args.zip:
        print(f"archive: {archive_bundle(result.path, args.zip)}")
    return 0


def _wrap(args: argparse.Namespace) -> int:
    """An .onnx or .pt2 file -> the head added, gated, written. Imports torch only for .pt2."""
    from dataclasses import replace

    from distill.data import load_dataset
    from edge_runtime.bundle import Preprocess
    from exporters.bundle import archive_bundle
    from exporters.errors import ExportError
    from exporters.wrap import chance_accuracy, near_chance

    model: Path = args.model
    if not model.is_file():
        raise ExportError(f"{model} does not exist or is not a file; pass an .onnx or .pt2 model file")
    pt2 = model.suffix.lower() == ".pt2"
    if pt2 and args.logits_output is not None:
        raise ExportError("--logits-output applies to .onnx models; a .pt2 program's logits are its output (or 'logits' entry)")
    dataset = load_dataset(args.data, seed=args.seed)
    preprocess = args.preprocess or "none"
    if preprocess == "data":
        task, x = dataset.task_spec(), dataset.x_test
    else:  # the model takes raw values: the bundle passes client arrays through, the gates feed raw inputs
        task, x = replace(dataset.task_spec(), preprocess=Preprocess()), dataset.raw(dataset.x_test)
    name = args.name or model.stem
    common = dict(
        heldout=(x, dataset.y_test),
        name=name,
        metadata={"data": dataset.name, "source": str(model), "preprocess": preprocess},
        info={"source_format": model.suffix.lower().lstrip(".")},
    )
    if pt2:
        try:
            from exporters.pt2 import wrap_pt2
        except ImportError as exc:
            raise ExportError(f"{exc}") from None
        result = wrap_pt2(model, task, args.out, **common)
    else:
        from exporters.wrap import wrap_onnx

        result = wrap_onnx(model, task, args.out, output=args.logits_output, **common)
    for line in result.describe():
        print(line)
    if near_chance(result.accuracy, dataset.y_test, dataset.num_classes):
        other = "data" if preprocess == "none" else "none"
        print(
            f"warning: held-out accuracy {100 * result.accuracy:.1f}% is near chance "
            f"({100 * chance_accuracy(dataset.y_test, dataset.num_classes):.1f}%); "
            f"if the model expects other input scaling try --preprocess {other}, or check --data",
            file=sys.stderr,
        )
    print(f"bundle: {result.path}")
    if args.zip:
        print(f"archive: {archive_bundle(result.path, args.zip)}")
    return 0
