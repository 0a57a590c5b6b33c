"""``anytime-edge quantize BUNDLE --data VAL.npz --out BUNDLE_Q``: an INT8 copy of any bundle, gated.

Every member (one candidate, a B-DISTIL ensemble, a cascade) is quantized with ONNX Runtime's tools
(:mod:`exporters.quantize`); the softmax/entropy head stays float. ``--data`` holds raw inputs ``x`` (as
clients send them; the bundle's preprocess is applied) and labels ``y`` (or ``x_test``/``y_test``). Without
``--heldout``, a seeded random split of it calibrates (at most ``--calibration-samples`` rows, at most half)
and the rest are the held-out rows the gates use; with ``--heldout``, all of ``--data`` may calibrate.

Needs onnx and onnxruntime only, no torch: the runtime install plus the ``wrap`` extra
(``pip install -c constraints.txt '.[wrap]'``) runs it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "quantize every member of a bundle to INT8 (ONNX Runtime, QDQ), gated against the float bundle"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path, help="the float bundle (directory or .zip)")
    parser.add_argument(
        "--data", type=Path, required=True, help="validation .npz with raw inputs x and labels y (or x_test, y_test)"
    )
    parser.add_argument(
        "--heldout",
        type=Path,
        default=None,
        help="held-out .npz for the gates (default: the rows of --data not used to calibrate)",
    )
    parser.add_argument("--out", type=Path, required=True, help="INT8 bundle directory to write")
    parser.add_argument("--zip", type=Path, help="also pack the bundle into this .zip file")
    parser.add_argument("--name", default=None, help="bundle name (default: the float bundle's name + '-int8')")
    parser.add_argument(
        "--method",
        choices=("static", "dynamic"),
        default="static",
        help="static: calibrated activation ranges, QDQ (default); dynamic: ranges per call",
    )
    parser.add_argument("--per-channel", action="store_true", help="one weight scale per output channel")
    parser.add_argument(
        "--calibration",
        choices=("minmax", "percentile", "entropy"),
        default="minmax",
        help="how static quantization picks activation ranges (default minmax)",
    )
    parser.add_argument(
        "--activations",
        choices=("uint8", "int8"),
        default="uint8",
        help="activation type for static quantization (default uint8: fastest on CPUs with VNNI)",
    )
    parser.add_argument(
        "--calibration-samples",
        type=int,
        default=256,
        metavar="N",
        help="rows that calibrate the activation ranges (default 256)",
    )
    parser.add_argument(
        "--max-loss",
        type=float,
        default=0.5,
        metavar="POINTS",
        help="held-out accuracy points any prefix may lose against the float bundle (default 0.5)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the calibration/held-out split of --data")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from edge_runtime.bundle import load_bundle
    from edge_runtime.cli._arrays import class_ids, read_inputs
    from exporters.bundle import archive_bundle
    from exporters.errors import ExportError
    from exporters.quantize import QuantizeConfig, quantize_bundle

    config = QuantizeConfig(
        method=args.method,
        per_channel=args.per_channel,
        calibration=args.calibration,
        activation_type=args.activations,
        calibration_samples=args.calibration_samples,
        max_loss=args.max_loss,
    )
    float_manifest = load_bundle(args.bundle).manifest
    labels = float_manifest.task.labels

    def read(path: Path) -> tuple[np.ndarray, np.ndarray]:
        x, y = read_inputs(path)
        if y is None:
            raise ExportError(f"{path} has no labels; save it with numpy.savez(path, x=..., y=...)")
        return x, class_ids(y, labels, len(x))

    x, y = read(args.data)
    if args.heldout is not None:
        calibration, heldout = x, read(args.heldout)
    else:
        if len(x) < 4:
            raise ExportError(f"{args.data} has {len(x)} rows; give a few hundred (or --heldout for the gates)")
        order = np.random.default_rng(args.seed).permutation(len(x))
        n_cal = min(config.calibration_samples, len(x) // 2)
        calibration, heldout = x[order[:n_cal]], (x[order[n_cal:]], y[order[n_cal:]])
    result = quantize_bundle(args.bundle, args.out, calibration=calibration, heldout=heldout, config=config, name=args.name)
    for line in result.describe():
        print(line)
    print(f"bundle: {result.path}")
    if float_manifest.calibration is not None or float_manifest.profiles:
        print(
            f"note: the float bundle's entropy threshold and profiles are not carried over (INT8 entropies and latencies "
            f"differ): run `anytime-edge calibrate {result.path} --data VAL.npz` and `anytime-edge profile {result.path}`"
        )
    if args.zip:
        print(f"archive: {archive_bundle(result.path, args.zip)}")
    return 0
