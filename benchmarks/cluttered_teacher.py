"""What the cluttered-MNIST workload costs before any training: data, teacher latency, training speed.

1. ``generate``: wall seconds to build all 70k cluttered images from the MNIST IDX files (read + render,
   no cache), repeated; then the time to load the cached file, and ``load_dataset("cluttered-mnist")``.
2. ``teacher``: the default teacher for the data (:func:`distill.teacher.default_teacher_config`), built
   UNTRAINED (weights do not change the time), exported with :func:`exporters.export_onnx` and profiled
   by :func:`profiles.measure.profile_onnx` at batch 1 on one ORT thread, on rows of the test split; with
   its parameter count and multiply-accumulates.
3. ``train``: torch training throughput of that teacher (Adam + cross-entropy, batch ``--batch``,
   ``--threads`` threads) over ``--train-images`` images of the training split, after one warm-up step.

Usage: ``python benchmarks/cluttered_teacher.py [--mnist DIR] [--json PATH]``. The cache goes to
``runs/data`` (or ``$ANYTIME_EDGE_DATA_CACHE``). Timings on a shared machine are noisy: the load average
is printed with the results.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch

from _runtime_bench import device_line, table, write_json
from distill.cluttered import cluttered_mnist
from distill.data import load_dataset, shared_mnist_dir
from distill.models import build_model, count_params
from distill.progressive.members import count_macs
from distill.teacher import default_teacher_config
from exporters import export_onnx
from profiles.measure import MeasureConfig, profile_onnx


def bench_generation(source: Path, repeats: int) -> dict[str, Any]:
    walls = []
    for _ in range(repeats):
        start = time.perf_counter()
        data = cluttered_mnist(source, cache=False)
        walls.append(time.perf_counter() - start)
    start = time.perf_counter()
    cached = cluttered_mnist(source)  # writes the cache unless an earlier run did
    first = time.perf_counter() - start
    start = time.perf_counter()
    cluttered_mnist(source)
    hit = time.perf_counter() - start
    return {
        "images": len(data.x_train) + len(data.x_test),
        "generate_s": walls,
        "first_cached_call_s": first,
        "first_cached_call_was_hit": cached.from_cache,
        "cache_hit_s": hit,
        "cache_file": str(cached.path),
        "cache_mb": cached.path.stat().st_size / 1e6 if cached.path else 0.0,
    }


def bench_teacher(model: torch.nn.Module, rows: np.ndarray, queries: int) -> dict[str, Any]:
    blob = export_onnx(model.eval(), torch.from_numpy(rows[:2]))
    config = MeasureConfig(min_queries=queries, min_seconds=2.0, warmup_queries=100, batch=1, memory_probe=False)
    profile = profile_onnx(blob, config, data=rows, data_label="cluttered-mnist test rows", name="teacher")
    return profile["members"][0]["latency_ms"]


def bench_training(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, batch: int) -> dict[str, Any]:
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)

    def step(rows: slice) -> None:
        optimizer.zero_grad()
        logits, _ = model(torch.from_numpy(x[rows]))
        torch.nn.functional.cross_entropy(logits, torch.from_numpy(y[rows])).backward()
        optimizer.step()

    step(slice(0, batch))  # warm-up: allocator, kernel choice
    start, cpu = time.perf_counter(), time.process_time()
    seen = 0
    for i in range(0, len(x) - batch + 1, batch):
        step(slice(i, i + batch))
        seen += batch
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    # On a loaded machine wall time says how busy the others were; images per CPU-second times the
    # threads is what the same threads would do alone (an upper bound: it assumes perfect scaling).
    return {
        "images": seen,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "images_per_s": seen / seconds,
        "images_per_cpu_s": seen / cpu_seconds,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", type=Path, default=None, help="MNIST IDX directory (default: the shared one)")
    parser.add_argument("--repeats", type=int, default=3, help="uncached generations of the 70k set")
    parser.add_argument("--queries", type=int, default=2000, help="timed ORT calls at batch 1 at least")
    parser.add_argument("--train-images", type=int, default=512, help="images for the training throughput")
    parser.add_argument("--batch", type=int, default=128, help="training batch size")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for training")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    source = args.mnist or shared_mnist_dir()
    if source is None:
        parser.error("the real MNIST is not beside the project; pass --mnist DIR")
    if min(args.repeats, args.queries, args.batch, args.threads) < 1 or args.train_images < args.batch:
        parser.error("--repeats, --queries, --batch, --threads must be >= 1 and --train-images >= --batch")

    result: dict[str, Any] = {"device": device_line(), "generation": bench_generation(source, args.repeats)}
    start = time.perf_counter()
    data = load_dataset(f"cluttered-mnist:{source}")
    result["load_dataset_s"] = time.perf_counter() - start
    cfg = default_teacher_config(data)
    torch.manual_seed(0)
    model = build_model(cfg.model_config(data))
    result["teacher"] = {
        "config": cfg.__dict__,
        "params": count_params(model),
        "macs": count_macs(model, data.input_shape),
        "ort_batch1_1thread_ms": bench_teacher(model, data.x_test[:256], args.queries),
    }
    torch.set_num_threads(args.threads)
    train = bench_training(model, data.x_train[: args.train_images], data.y_train[: args.train_images], args.batch)
    result["training"] = {**train, "threads": args.threads, "batch": args.batch}
    epoch_images = len(data.x_train) * cfg.epochs
    result["training"]["projected_teacher_minutes"] = epoch_images / train["images_per_s"] / 60
    unloaded = train["images_per_cpu_s"] * args.threads
    result["training"]["projected_teacher_minutes_unloaded"] = epoch_images / unloaded / 60

    gen, t, lat = result["generation"], result["teacher"], result["teacher"]["ort_batch1_1thread_ms"]
    print(
        f"device: {result['device']['cpu_model']}, load average {result['device']['load_average_1m']:.1f} at start (shared: noisy)"
    )
    print(
        table(
            ["what", "value"],
            [
                ["generate 70k images, s (median)", float(np.median(gen["generate_s"]))],
                [
                    "cache " + ("hit" if gen["first_cached_call_was_hit"] else "write") + " + hit, s",
                    f"{gen['first_cached_call_s']:.2f} / {gen['cache_hit_s']:.2f} ({gen['cache_mb']:.0f} MB)",
                ],
                ["load_dataset('cluttered-mnist'), s", result["load_dataset_s"]],
                ["teacher", f"{cfg.family} w{cfg.width} x {cfg.depth} stages, {cfg.epochs} epochs"],
                ["teacher params / MACs", f"{t['params']:,} / {t['macs'] / 1e6:.1f} M"],
                ["ORT batch 1, 1 thread, ms p50 / p99", f"{lat['p50']:.3f} / {lat['p99']:.3f} ({lat['queries']} queries)"],
                [f"training, images/s ({args.threads} threads, batch {args.batch})", result["training"]["images_per_s"]],
                [f"  per CPU-second x {args.threads} threads (unloaded bound)", unloaded],
                [f"projected teacher training ({epoch_images} images), min", result["training"]["projected_teacher_minutes"]],
                ["  at the unloaded bound, min", result["training"]["projected_teacher_minutes_unloaded"]],
            ],
        )
    )
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
