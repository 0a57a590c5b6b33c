"""Float vs INT8 side by side: accuracy, p50/p99 latency at batch 1 and 32, size, for every member.

For each float bundle found (the teacher, the low-rank student, the channel-pruned student, each B-DISTIL
member) the script quantizes it with :func:`exporters.quantize.quantize_bundle` (static QDQ, uint8
activations, int8 weights, MinMax calibration on ``--calibration-samples`` validation rows, the float
head kept), measures both bundles on the whole test split through the runtime (held-out accuracy,
top-1 agreement, max probability difference), then times *every* float and INT8 member in one process,
interleaved round by round (:func:`profiles.measure.time_sessions`), with the runtime's session settings
(one intra-op thread, sequential, no spinning), at batch 1 and batch 32. A member is timed on exactly the
inputs the runtime gives it (``x`` after the preprocess, ``prev_logits``, connection tensors).

Goals (issue 18): INT8 teacher >= 1.5x faster (p50, batch 1) at <= 0.5 point loss on the largest workload;
low-rank + INT8 >= 3x faster than the float teacher at <= 1 point loss. Where INT8 is *not* faster (small
members whose time is the per-call floor) the table says so: that is a result too.

The machine's load average (start and end) goes into the JSON: on a shared CPU, absolute latencies move
with other work; ratios measured side by side move much less.

Bundles (``--from DIR``; default ``runs/demo`` for digits, else ``runs/<data name>``): ``teacher``,
``lowrank`` and ``channels`` under ``DIR/candidates/`` or ``DIR/``, the B-DISTIL ensemble at ``DIR/bundle``
or ``DIR/bdistil``; ``--bundle NAME=PATH`` adds or replaces one. Build them with ``make demo`` (digits), with
``anytime-edge lowrank ... --out DIR/lowrank`` and ``anytime-edge sparsify channels ... --out DIR/channels``,
or, on a large data set, with ``--build-students CKPT``: a low-rank student (``--rank``, spectral init) and a
channel-pruned one (``--keep``), each distilled ``--epochs`` on the first ``--train-rows`` training rows
(teacher logits computed once for both), exported through the gated exporter into ``DIR``; then the
script exits (time them in a separate run, so building does not load the machine during timing).

Usage:
    python benchmarks/quantization.py --json benchmarks/results/quantization_digits.json [--data digits]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from distill.data import load_dataset
from edge_runtime.bundle import load_bundle
from edge_runtime.device import device_info
from edge_runtime.session import SessionConfig, create_session
from exporters.quantize import QuantizeConfig, member_feeds, quantize_bundle
from profiles.measure import latency_stats, time_sessions
from profiles.report import format_table

BATCHES = (1, 32)


def _find_bundles(root: Path, extra: list[str]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for name in ("teacher", "lowrank", "channels"):
        for path in (root / "candidates" / name, root / name):
            if (path / "manifest.json").is_file():
                found[name] = path
                break
    for path in (root / "bundle", root / "bdistil"):
        if (path / "manifest.json").is_file():
            found["bdistil"] = path
            break
    for item in extra:
        name, sep, path = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"--bundle {item!r}: give NAME=PATH")
        found[name] = Path(path)
    return found


def _pool(feeds: list[dict[str, np.ndarray]], batch: int, size: int) -> list[dict[str, np.ndarray]]:
    """Feeds of exactly ``batch`` rows, cut from the held-out feeds (``size`` of them)."""
    rows = {name: np.concatenate([f[name] for f in feeds]) for name in feeds[0]}
    n = next(iter(rows.values())).shape[0]
    count = min(size, n // batch)
    return [{name: np.ascontiguousarray(v[i * batch : (i + 1) * batch]) for name, v in rows.items()} for i in range(count)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits", help="digits, mnist or cluttered-mnist (what load_dataset accepts)")
    parser.add_argument("--from", dest="root", type=Path, default=None, help="directory holding the float bundles")
    parser.add_argument("--bundle", action="append", default=[], metavar="NAME=PATH", help="add or replace a bundle")
    parser.add_argument("--calibration-samples", type=int, default=256, help="validation rows that calibrate")
    parser.add_argument("--per-channel", action="store_true", help="per-channel weight scales")
    parser.add_argument("--calibration", default="minmax", choices=("minmax", "percentile", "entropy"))
    parser.add_argument("--activations", default="uint8", choices=("uint8", "int8"), help="activation type (U8S8 or S8S8)")
    parser.add_argument("--rounds", type=int, default=60, help="interleaved timing rounds at batch 1 (half at 32)")
    parser.add_argument("--calls", type=int, default=10, help="timed calls per member per round at batch 1 (3 at 32)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the validation split")
    parser.add_argument("--json", type=Path, help="write rows, goals and conditions here")
    build = parser.add_argument_group("building the students (needs the train extra)")
    build.add_argument(
        "--build-students", type=Path, metavar="CKPT", help="teacher checkpoint: build lowrank/ and channels/ in --from, exit"
    )
    build.add_argument("--rank", type=int, default=16, help="low-rank student's rank")
    build.add_argument("--keep", type=float, default=0.5, help="channel-pruned student's share of channels")
    build.add_argument("--epochs", type=int, default=1, help="distillation epochs of each student")
    build.add_argument("--train-rows", type=int, default=10000, help="training rows the students are distilled on")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    load_start = os.getloadavg()
    root = args.root or (Path("runs/demo") if args.data == "digits" else Path("runs") / args.data.split(":")[0])
    if args.build_students is not None:
        return _build_students(args, root)
    bundles = _find_bundles(root, args.bundle)
    if not bundles:
        raise SystemExit(f"no bundles under {root}; run `make demo` or pass --from/--bundle (see --help)")
    data = load_dataset(args.data, seed=args.seed)
    x_val, x_test, y_test = data.raw(data.x_val), data.raw(data.x_test), data.y_test
    config = QuantizeConfig(
        per_channel=args.per_channel,
        calibration=args.calibration,
        activation_type=args.activations,
        calibration_samples=args.calibration_samples,
        max_loss=100.0,
    )  # measure, never refuse here
    print(f"{data!r}; bundles: {', '.join(f'{k}={v}' for k, v in bundles.items())}", flush=True)

    sessions: dict[str, Any] = {}
    pools: dict[int, dict[str, list[dict[str, np.ndarray]]]] = {b: {} for b in BATCHES}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="quantization-bench-") as tmp:
        for name, path in bundles.items():
            t = time.perf_counter()
            result = quantize_bundle(path, Path(tmp) / name, calibration=x_val, heldout=(x_test, y_test), config=config)
            print(f"quantized {name} in {time.perf_counter() - t:.1f} s", flush=True)
            float_b, int8_b = load_bundle(path), load_bundle(result.path)
            x_model = float_b.manifest.task.preprocess.apply(x_test[:512])
            feeds = member_feeds(float_b, x_model, 64)
            for k, member in enumerate(float_b.manifest.members):
                label = name if len(float_b.manifest.members) == 1 else f"{name}/{member.name}"
                for kind, bundle in (("float", float_b), ("int8", int8_b)):
                    sessions[f"{label}:{kind}"] = create_session(bundle.member_bytes[k], SessionConfig(), name=label)
                    for batch in BATCHES:
                        pools[batch][f"{label}:{kind}"] = _pool(feeds[k], batch, 16 if batch == 1 else 4)
                gate = result.prefixes[k]
                rows.append(
                    {
                        "model": name,
                        "member": member.name,
                        "label": label,
                        "prefix": k + 1,
                        "accuracy_float": gate.float_accuracy,
                        "accuracy_int8": gate.int8_accuracy,
                        "loss_points": round(gate.loss_points, 4),
                        "agreement": gate.agreement,
                        "max_prob_diff": gate.max_prob_diff,
                        "bytes_float": len(float_b.member_bytes[k]),
                        "bytes_int8": len(int8_b.member_bytes[k]),
                        "params": member.params,
                        "quantize_seconds": result.seconds,
                    }
                )
        times: dict[int, dict[str, np.ndarray]] = {}
        for batch in BATCHES:
            rounds, calls = (args.rounds, args.calls) if batch == 1 else (max(1, args.rounds // 2), 3)
            t = time.perf_counter()
            times[batch] = time_sessions(sessions, pools[batch], rounds=rounds, calls_per_round=calls, warmup=5)
            print(
                f"timed batch {batch}: {rounds} rounds x {calls} calls x {len(sessions)} sessions in "
                f"{time.perf_counter() - t:.1f} s",
                flush=True,
            )
    for row in rows:
        for batch in BATCHES:
            for kind in ("float", "int8"):
                row[f"b{batch}_{kind}_ms"] = latency_stats(times[batch][f"{row['label']}:{kind}"])
            row[f"b{batch}_speedup_p50"] = round(row[f"b{batch}_float_ms"]["p50"] / row[f"b{batch}_int8_ms"]["p50"], 3)

    goals = _goals(rows)
    load_end = os.getloadavg()
    report = {
        "benchmark": "quantization",
        "data": {"name": data.name, "input_shape": list(data.input_shape), "validation": len(x_val), "test": len(x_test)},
        "bundles": {k: str(v) for k, v in bundles.items()},
        "missing": [n for n in ("teacher", "lowrank", "channels", "bdistil") if n not in bundles],
        "quantization": {
            "method": config.method,
            "format": "QDQ",
            "activations": config.activation_type,
            "weights": config.weight_type,
            "per_channel": config.per_channel,
            "calibration": config.calibration,
            "calibration_samples": min(config.calibration_samples, len(x_val)),
            "float_head": config.float_head,
        },
        "timing": {
            "batches": list(BATCHES),
            "rounds_b1": args.rounds,
            "calls_b1": args.calls,
            "rounds_b32": max(1, args.rounds // 2),
            "calls_b32": 3,
            "interleaved": True,
            "session": SessionConfig().describe(),
        },
        "rows": rows,
        "goals": goals,
        "device": device_info(),
        "load_average": {"start": [round(v, 2) for v in load_start], "end": [round(v, 2) for v in load_end]},
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(
        format_table(
            [
                "member",
                "acc float",
                "acc int8",
                "agree",
                "b1 p50 f/i8 ms",
                "b1 x",
                "b1 p99 f/i8 ms",
                "b32 p50 f/i8 ms",
                "b32 x",
                "KiB f/i8",
            ],
            [
                [
                    r["label"],
                    f"{100 * r['accuracy_float']:.2f}%",
                    f"{100 * r['accuracy_int8']:.2f}%",
                    f"{100 * r['agreement']:.1f}%",
                    f"{r['b1_float_ms']['p50']:.3f}/{r['b1_int8_ms']['p50']:.3f}",
                    f"{r['b1_speedup_p50']:.2f}",
                    f"{r['b1_float_ms']['p99']:.3f}/{r['b1_int8_ms']['p99']:.3f}",
                    f"{r['b32_float_ms']['p50']:.3f}/{r['b32_int8_ms']['p50']:.3f}",
                    f"{r['b32_speedup_p50']:.2f}",
                    f"{r['bytes_float'] / 1024:.0f}/{r['bytes_int8'] / 1024:.0f}",
                ]
                for r in rows
            ],
        )
    )
    for line in goals["lines"]:
        print(line)
    print(
        f"load average {report['load_average']['start']} -> {report['load_average']['end']}; "
        f"{report['device']['cpu_model']}, onnxruntime {report['device']['onnxruntime']}; {report['seconds']} s"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _build_students(args: argparse.Namespace, root: Path) -> int:
    """A low-rank and a channel-pruned student of the checkpoint, distilled on a subset, exported (gated)."""
    from dataclasses import replace

    import torch

    from distill.lowrank.student import LowRankConfig, lowrank_student
    from distill.sparse.structured import channel_student
    from distill.teacher import load_model
    from distill.train import predict_logits
    from exporters import export_model

    torch.set_num_threads(1)
    started = time.perf_counter()
    data = load_dataset(args.data, seed=args.seed)
    teacher, _ = load_model(args.build_students)
    rows = slice(0, args.train_rows)
    train = replace(data, x_train=data.x_train[rows], y_train=data.y_train[rows])
    logits = predict_logits(teacher, train.x_train)
    print(f"teacher logits on {len(logits)} training rows: {time.perf_counter() - started:.0f} s", flush=True)
    heldout = (data.x_test, data.y_test)
    meta = {"data": data.name, "teacher": str(args.build_students), "train_rows": len(logits), "epochs": args.epochs}
    student, report = lowrank_student(teacher, train, LowRankConfig(rank=args.rank, epochs=args.epochs), teacher_logits=logits)
    result = export_model(
        student,
        data.task_spec(),
        root / "lowrank",
        heldout=heldout,
        name="lowrank",
        metadata={**meta, "method": "lowrank"},
        info={"method": "lowrank", "rank": args.rank},
    )
    print(*result.describe(), f"({time.perf_counter() - started:.0f} s)", sep="\n", flush=True)
    student, _ = channel_student(teacher, train, args.keep, epochs=args.epochs, limit=args.train_rows, teacher_logits=logits)
    result = export_model(
        student,
        data.task_spec(),
        root / "channels",
        heldout=heldout,
        name="channels",
        metadata={**meta, "method": "channels"},
        info={"method": "channels", "keep": args.keep},
    )
    print(*result.describe(), f"({time.perf_counter() - started:.0f} s)", sep="\n", flush=True)
    return 0


def _goals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's two goals, judged on the rows (None where a bundle is missing), and where INT8 is slower."""
    by = {r["label"]: r for r in rows}
    out: dict[str, Any] = {"lines": []}
    teacher = by.get("teacher")
    if teacher:
        ok = teacher["b1_speedup_p50"] >= 1.5 and teacher["loss_points"] <= 0.5
        out["int8_teacher"] = {
            "speedup_b1_p50": teacher["b1_speedup_p50"],
            "loss_points": teacher["loss_points"],
            "goal": ">= 1.5x at <= 0.5 point",
            "met": ok,
        }
        out["lines"].append(
            f"INT8 teacher: {teacher['b1_speedup_p50']:.2f}x at batch 1 (p50), {teacher['loss_points']:+.2f} "
            f"points lost: goal >= 1.5x at <= 0.5 point {'met' if ok else 'NOT met'}"
        )
    lowrank = by.get("lowrank")
    if teacher and lowrank:
        speedup = teacher["b1_float_ms"]["p50"] / lowrank["b1_int8_ms"]["p50"]
        loss = 100 * (teacher["accuracy_float"] - lowrank["accuracy_int8"])
        ok = speedup >= 3.0 and loss <= 1.0
        out["lowrank_int8_vs_float_teacher"] = {
            "speedup_b1_p50": round(speedup, 3),
            "loss_points": round(loss, 4),
            "goal": ">= 3x at <= 1 point",
            "met": ok,
        }
        out["lines"].append(
            f"low-rank + INT8 vs the float teacher: {speedup:.2f}x at batch 1 (p50), {loss:+.2f} points "
            f"lost: goal >= 3x at <= 1 point {'met' if ok else 'NOT met'}"
        )
    slower = [f"{r['label']} (b{b} {r[f'b{b}_speedup_p50']:.2f}x)" for r in rows for b in BATCHES if r[f"b{b}_speedup_p50"] < 1.0]
    out["int8_not_faster"] = slower
    if slower:
        out["lines"].append("INT8 not faster (p50): " + ", ".join(slower))
    return out


if __name__ == "__main__":
    sys.exit(main())
