"""What exporting costs, and what the in-graph head buys on the device.

Three measurements on the toolkit's own model families (distill.models: MLP on 784 inputs, 1-D CNN on
1x40 (MNIST-1D), 2-D CNN on 1x28x28), untrained weights (export cost and run time do not depend on them):

1. ``export``: wall and CPU seconds of one :func:`exporters.export_onnx` call (dynamo, opset 18,
   optimize), repeated after one warm-up export; the first export of a process (imports, registries)
   is reported apart. Plus file size and deflated size.
2. ``gated``: one :func:`exporters.export_model` call (export + checker + torch-vs-ORT parity + accuracy on
   ``--heldout`` samples + atomic bundle write), split into export and gate+write seconds. Its labels are
   the model's own answers (the accuracy gate needs labels; their source does not change the cost).
3. ``head``: one ONNX Runtime call at batch 1 of the exported member (logits, probs and entropy computed
   in the graph) against the same model exported to logits only followed by a numpy softmax+entropy,
   timed interleaved in one loop so background load hits both alike. Outputs are checked equal first.

Usage: ``python benchmarks/export_cost.py [--repeats 5] [--iters 2000] [--json PATH]``.
Timings on a shared machine are noisy: read medians and spreads, and the side-by-side ratio.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch
from torch import nn

from distill.models import ModelConfig, build_model, count_params
from edge_runtime.bundle import TaskSpec, TensorSpec
from edge_runtime.device import device_info
from edge_runtime.session import SessionConfig, create_session
from exporters import export_model, export_onnx
from exporters.export import compressed_size
from exporters.onnx import OPSET
from profiles.report import format_table

FAMILIES: dict[str, tuple[int, ...]] = {"mlp": (784,), "cnn1d": (1, 40), "cnn2d": (1, 28, 28)}
NUM_CLASSES = 10


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median and the 10th/90th percentiles."""
    arr = np.asarray(values, dtype=np.float64)
    return {"p50": float(np.median(arr)), "p10": float(np.percentile(arr, 10)), "p90": float(np.percentile(arr, 90))}


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, wall seconds, CPU seconds of this process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


class LogitsOnly(nn.Module):
    """The baseline graph: the member's logits and nothing else."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[0]


def export_logits_only(model: nn.Module, example: torch.Tensor) -> bytes:
    """Same exporter settings as exporters.onnx, without the head."""
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            LogitsOnly(model).eval(),
            (example,),
            dynamo=True,
            opset_version=OPSET,
            input_names=["x"],
            output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            external_data=False,
            optimize=True,
            verbose=False,
        )
    return program.model_proto.SerializeToString()


def numpy_head(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the runtime would do in Python without the in-graph head: stable softmax and entropy."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    probs = np.exp(log_probs)
    return probs, -(probs * log_probs).sum(axis=1)


def bench_family(family: str, shape: tuple[int, ...], args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    torch.manual_seed(0)
    model = build_model(ModelConfig(input_shape=shape, num_classes=NUM_CLASSES, width=args.width, depth=2)).eval()
    example = torch.randn(2, *shape)

    blob, first_wall, first_cpu = timed(lambda: export_onnx(model, example))
    walls, cpus = [], []
    for _ in range(args.repeats):
        blob, wall, cpu = timed(lambda: export_onnx(model, example))
        walls.append(wall)
        cpus.append(cpu)

    x = torch.randn(args.heldout, *shape)
    with torch.no_grad():
        y = model(x)[0].argmax(dim=1)
    task = TaskSpec(labels=tuple(str(c) for c in range(NUM_CLASSES)), input=TensorSpec("x", (-1, *shape)))
    result, gated_wall, _ = timed(lambda: export_model(model, task, tmp / family, heldout=(x, y), name=family))
    member = result.members[0]

    head_session = create_session(blob, SessionConfig(), name=f"{family}-head")
    base_session = create_session(export_logits_only(model, example), SessionConfig(), name=f"{family}-logits")
    one = x[:1].numpy()
    logits, probs, entropy = head_session.run(None, {"x": one})
    base_probs, base_entropy = numpy_head(base_session.run(None, {"x": one})[0])
    np.testing.assert_allclose(probs, base_probs, atol=1e-5)  # same answer, or the comparison is moot
    np.testing.assert_allclose(entropy, base_entropy, rtol=1e-4, atol=1e-5)

    head_us, base_us = [], []
    for i in range(args.warmup + args.iters):
        t0 = time.perf_counter()
        head_session.run(None, {"x": one})
        t1 = time.perf_counter()
        numpy_head(base_session.run(None, {"x": one})[0])
        t2 = time.perf_counter()
        if i >= args.warmup:
            head_us.append(1e6 * (t1 - t0))
            base_us.append(1e6 * (t2 - t1))
    ratios = np.asarray(base_us) / np.asarray(head_us)
    return {
        "family": family,
        "input_shape": list(shape),
        "params": count_params(model),
        "bytes": len(blob),
        "bytes_zip": compressed_size(blob),
        "first_export_s": {"wall": first_wall, "cpu": first_cpu},
        "export_wall_s": spread(walls),
        "export_cpu_s": spread(cpus),
        "gated_total_s": gated_wall,
        "gated_export_s": member.export_seconds,
        "gated_gates_and_write_s": gated_wall - member.export_seconds,
        "gate_max_abs_diff": max(member.gates.max_abs_diff.values()),
        "head_in_graph_us": spread(head_us),
        "logits_plus_numpy_us": spread(base_us),
        "ratio_numpy_over_graph": spread(ratios.tolist()),
    }


def table(rows: Sequence[Sequence[str]]) -> str:
    """``rows[0]`` is the header; the toolkit's table (:func:`profiles.report.format_table`)."""
    return format_table(rows[0], rows[1:])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", choices=sorted(FAMILIES), default=list(FAMILIES))
    parser.add_argument("--width", type=int, default=16, help="model width (hidden units / first conv channels)")
    parser.add_argument("--repeats", type=int, default=5, help="timed exports per family after one warm-up")
    parser.add_argument("--heldout", type=int, default=1000, help="held-out samples for the gated export")
    parser.add_argument("--warmup", type=int, default=200, help="untimed ORT calls before timing")
    parser.add_argument("--iters", type=int, default=2000, help="timed ORT calls per graph")
    parser.add_argument("--threads", type=int, default=1, help="torch threads during export")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if min(args.repeats, args.heldout - 1, args.iters, args.width) < 1 or args.warmup < 0:
        parser.error("--repeats, --iters and --width must be >= 1, --heldout >= 2, --warmup >= 0")
    torch.set_num_threads(args.threads)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # per-export notes about optional torchvision ops

    info = device_info()
    load = os.getloadavg()
    conditions = (
        f"device: {info['cpu_model']}, {info['logical_cores']} logical cores, {info['os']}, onnxruntime "
        f"{info['onnxruntime']}, torch {torch.__version__}; torch threads {args.threads}; ORT 1 intra-op thread, "
        f"sequential, no spinning, batch 1; load average {load[0]:.1f} at start (shared machine: noisy)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        results = [bench_family(f, FAMILIES[f], args, Path(tmp)) for f in args.families]

    print(conditions)
    print(f"\nexport (export_onnx, {args.repeats} runs after a warm-up; seconds, p50 [p10-p90])")
    rows = [
        ["family", "params", "bytes", "deflated", "first wall", "wall p50 [p10-p90]", "cpu p50", "gated total", "gates+write"]
    ]
    for r in results:
        w = r["export_wall_s"]
        rows.append(
            [
                r["family"],
                str(r["params"]),
                str(r["bytes"]),
                str(r["bytes_zip"]),
                f"{r['first_export_s']['wall']:.2f}",
                f"{w['p50']:.2f} [{w['p10']:.2f}-{w['p90']:.2f}]",
                f"{r['export_cpu_s']['p50']:.2f}",
                f"{r['gated_total_s']:.2f}",
                f"{r['gated_gates_and_write_s']:.2f}",
            ]
        )
    print(table(rows))
    print(f"\none ORT call at batch 1, {args.iters} interleaved runs (microseconds, p50 [p10-p90])")
    rows = [["family", "in-graph head", "logits + numpy head", "ratio p50 [p10-p90]"]]
    for r in results:
        h, b, q = r["head_in_graph_us"], r["logits_plus_numpy_us"], r["ratio_numpy_over_graph"]
        rows.append(
            [
                r["family"],
                f"{h['p50']:.1f} [{h['p10']:.1f}-{h['p90']:.1f}]",
                f"{b['p50']:.1f} [{b['p10']:.1f}-{b['p90']:.1f}]",
                f"{q['p50']:.2f} [{q['p10']:.2f}-{q['p90']:.2f}]",
            ]
        )
    print(table(rows))
    if args.json:
        payload = {
            "conditions": conditions,
            "device": info,
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "results": results,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
