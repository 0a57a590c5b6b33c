"""What the on-disk teacher logits cache saves: the teacher's forward pass over the training split, computed
once (a miss) against read back (a hit), for an ONNX teacher of the user's kind and a .pt2 of the same model.

The teacher is a ResNet-style classifier (BatchNorm, residual blocks, global pooling; the architecture of
shared/cases/byo/plain_logits_teacher.py, widened) exported the way a user would; its weights are untrained
because the cost of a forward pass does not depend on them. Each repeat uses a fresh cache directory for the
miss and then reads the same entry back for the hit, in the same process, side by side.

    python benchmarks/teacher_cache.py --data mnist --repeats 3 --json runs/bench/teacher_cache.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _byo_models import UserResNet, save_user_files  # beside this script
from distill.data import load_dataset
from distill.teachers import load_teacher
from distill.train import predict_logits


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="mnist", help="any --data spec of image data (default mnist)")
    parser.add_argument("--width", type=int, default=32, help="ResNet width (default 32)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(2)
    data = load_dataset(args.data)
    if len(data.input_shape) != 3:
        parser.error("--data must hold images (N, C, H, W)")
    model = UserResNet(data.input_shape[0], args.width, data.num_classes, input_scale=1.0).eval()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files = {"onnx": Path(tmp) / "teacher.onnx", "pt2": Path(tmp) / "teacher.pt2"}
        save_user_files(model, torch.from_numpy(data.raw(data.x_val[:2])), str(files["onnx"]), str(files["pt2"]))
        for kind, path in files.items():
            for r in range(args.repeats):
                runs = Path(tmp) / f"runs-{kind}-{r}"
                teacher = load_teacher(path, data, runs_dir=runs)
                started = time.perf_counter()
                computed = predict_logits(teacher.module, data.x_train)
                miss = time.perf_counter() - started
                again = load_teacher(path, data, runs_dir=runs)  # a later command: a new process would do the same
                started = time.perf_counter()
                cached = np.asarray(predict_logits(again.module, data.x_train))
                hit = time.perf_counter() - started
                assert np.array_equal(computed, cached)
                rows.append({"teacher": kind, "repeat": r, "miss_s": miss, "hit_s": hit})
                print(f"{kind:4s} repeat {r}: computed {miss:7.2f} s, read from the cache {1000 * hit:7.1f} ms", flush=True)
    summary = {}
    for kind in files:
        miss = [row["miss_s"] for row in rows if row["teacher"] == kind]
        hit = [row["hit_s"] for row in rows if row["teacher"] == kind]
        summary[kind] = {
            "miss_s_median": statistics.median(miss),
            "miss_s_range": [min(miss), max(miss)],
            "hit_s_median": statistics.median(hit),
            "hit_s_range": [min(hit), max(hit)],
            "saving_x": statistics.median(miss) / statistics.median(hit),
        }
        print(
            f"{kind}: median {summary[kind]['miss_s_median']:.2f} s computed vs {1000 * summary[kind]['hit_s_median']:.1f} ms "
            f"cached ({summary[kind]['saving_x']:.0f}x) for {len(data.x_train)} training samples"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "command": " ".join(sys.argv),
                    "data": data.name,
                    "train_samples": len(data.x_train),
                    "device": {"cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads()},
                    "rows": rows,
                    "summary": summary,
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
