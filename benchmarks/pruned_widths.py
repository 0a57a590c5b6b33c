"""Latency of channel-pruned teacher copies with and without whole blocks of channels (``round_to``).

For the cached default teacher of ``--data`` and each keep ratio, the copy pruned exactly
(:func:`distill.sparse.structured.prune_channels`) and the copy whose every pruned group keeps a multiple of
``--round-to`` channels are exported to ONNX and timed at batch 1 on one ORT thread, side by side with the
teacher, interleaved (:func:`distill.lowrank.latency.measure_side_by_side`, the timing the member sizing uses),
``--repeats`` times. Prints and writes per copy its conv widths, MACs and p50 (ms) of each repeat.

    python benchmarks/pruned_widths.py --data cluttered-mnist --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout first, whatever is installed

from distill.data import load_dataset
from distill.lowrank.latency import LatencyConfig, measure_side_by_side
from distill.progressive.members import count_macs
from distill.sparse.structured import shrink_channels
from distill.teachers import load_teacher
from exporters import export_onnx


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="cluttered-mnist")
    parser.add_argument("--keeps", default="0.3,0.35,0.4,0.45,0.5")
    parser.add_argument("--round-to", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--runs", default="runs")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data = load_dataset(args.data, seed=0)
    teacher = load_teacher("auto", data, runs_dir=args.runs, progress=False).module.eval()
    rows = data.x_val
    example = torch.from_numpy(np.ascontiguousarray(rows[:2], dtype=np.float32))
    blobs = {"teacher": export_onnx(teacher, example)}
    copies: dict[str, dict] = {}
    for round_to in (None, args.round_to):
        for keep in (float(k) for k in args.keeps.split(",")):
            model = shrink_channels(teacher, keep, example, round_to=round_to).eval()
            name = f"keep {keep:g}" + (f" x{round_to}" if round_to else "")
            blobs[name] = export_onnx(model, example)
            widths = sorted({m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)})
            copies[name] = {"keep": keep, "round_to": round_to, "widths": widths, "macs": count_macs(model, data.input_shape)}
    timing = LatencyConfig(rounds=8, calls_per_round=10, warmup=10)
    runs = [measure_side_by_side(blobs, rows[:64], timing) for _ in range(args.repeats)]
    result = {
        "dataset": data.name,
        "teacher_p50_ms": [round(r["teacher"][1]["p50"], 4) for r in runs],
        "timing": timing.describe(),
        "copies": [{"name": n, **c, "p50_ms": [round(r[n][1]["p50"], 4) for r in runs]} for n, c in copies.items()],
    }
    print(f"teacher p50 {result['teacher_p50_ms']} ms")
    for c in result["copies"]:
        per_mmac = statistics.median(c["p50_ms"]) / (c["macs"] / 1e6) * 1e3
        print(
            f"{c['name']:<14} widths {c['widths']}  {c['macs'] / 1e6:6.1f} M MACs  p50 {c['p50_ms']} ms  ({per_mmac:.1f} us/M MAC)"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
