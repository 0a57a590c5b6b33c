"""Wall time of ``train-teacher`` in one process against ``torchrun`` with N processes (DDP, gloo), and accuracy.

Each run is the command a user types, timed from start to exit (interpreter and torch start-up, data
loading, training, evaluation, checkpoint), with a fresh ``--out``:

    python -m distill train-teacher --data mnist --epochs E --out OUT --no-progress
    torchrun --standalone --nproc_per_node=N -m distill train-teacher --data mnist --epochs E --out OUT --no-progress

The one-process run uses torch's default threads (one per core; ``--threads`` sets OMP_NUM_THREADS); torchrun
gives each of its processes one thread (OMP_NUM_THREADS=1, its default), so both use the same cores. The training loop's own time is the
``train_seconds`` the checkpoint's metrics.json records (fit plus the validation/test evaluation). Runs
alternate (1, N, 1, N, ...) so a change in the machine's load falls on both; the load average is recorded
before and after each run, because on a shared machine it decides the result.

    python benchmarks/ddp_train_teacher.py --data mnist --epochs 1 --procs 1 2 --repeat 1 \\
        --json benchmarks/results/ddp_train_teacher.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _command(procs: int, data: str, epochs: int, out: Path) -> list[str]:
    tail = ["-m", "distill", "train-teacher", "--data", data, "--epochs", str(epochs), "--out", str(out), "--no-progress"]
    if procs == 1:
        return [sys.executable, *tail]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", *tail]


def _run(procs: int, data: str, epochs: int, out: Path, threads: int) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if procs == 1 and threads:
        env["OMP_NUM_THREADS"] = str(threads)
    load_before = os.getloadavg()
    started = time.perf_counter()
    done = subprocess.run(_command(procs, data, epochs, out), cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{procs} process(es) failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "procs": procs,
        "threads_per_process": threads if procs == 1 and threads else (None if procs == 1 else 1),
        "wall_s": round(wall, 2),
        "train_seconds": metrics["train_seconds"],
        "val_accuracy": metrics["val_accuracy"],
        "test_accuracy": metrics["test_accuracy"],
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="mnist", help="any --data spec (default mnist: the shared real MNIST)")
    parser.add_argument("--epochs", type=int, default=1, help="teacher epochs per run (default 1)")
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="process counts to compare (1 = no torchrun)")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="OMP_NUM_THREADS of the one-process runs (default 0: torch's default, one per core)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="rounds of all --procs, alternating")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeat):
            for procs in args.procs:
                row = {"repeat": r, **_run(procs, args.data, args.epochs, Path(tmp) / f"p{procs}-r{r}", args.threads)}
                rows.append(row)
                print(
                    f"{procs} process(es): wall {row['wall_s']:7.1f} s, train_seconds {row['train_seconds']:7.1f} s, "
                    f"test accuracy {100 * row['test_accuracy']:.2f}%, load average {row['loadavg_before'][0]:.2f} -> "
                    f"{row['loadavg_after'][0]:.2f}",
                    flush=True,
                )
    summary = {}
    for procs in args.procs:
        mine = [row for row in rows if row["procs"] == procs]
        summary[str(procs)] = {
            key: statistics.median(row[key] for row in mine)  # type: ignore[misc]
            for key in ("wall_s", "train_seconds", "test_accuracy", "val_accuracy")
        }
    base = summary[str(args.procs[0])]
    for procs in args.procs[1:]:
        s = summary[str(procs)]
        print(
            f"{procs} vs {args.procs[0]} process(es): wall {base['wall_s'] / s['wall_s']:.2f}x, train loop "
            f"{base['train_seconds'] / s['train_seconds']:.2f}x; test accuracy {100 * s['test_accuracy']:.2f}% vs "
            f"{100 * base['test_accuracy']:.2f}%"
        )
    if args.json:
        import torch

        sys.path.insert(0, str(ROOT))
        from edge_runtime.device import device_info

        info = device_info()
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "command": " ".join([Path(sys.executable).name, *sys.argv]),
                    "runs": {str(p): " ".join(_command(p, args.data, args.epochs, Path("OUT"))[1:]) for p in args.procs},
                    "device": {
                        "cpu": info.get("cpu_model"),
                        "logical_cores": info.get("logical_cores"),
                        "torch": torch.__version__,
                        "backend": "gloo",
                    },
                    "rows": rows,
                    "summary": summary,
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
