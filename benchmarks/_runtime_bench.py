"""Shared plumbing of the runtime benchmarks (runtime_overhead, deadline, footprint).

Inputs: the demo's bundle and held-out data by default (``runs/demo/bundle``, ``runs/demo/test.npz``,
written by ``make demo``), or ``--bundle``/``--data``; ``--synthetic H`` builds a 4-member MNIST-size
bundle (784 inputs, 10 classes, hidden width H) with tests/onnx_members.py instead (needs ``onnx``; its
labels are the full ensemble's own answers, so accuracies only show the shape of a trade-off).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = ROOT / "runs" / "demo" / "bundle"
DEFAULT_DATA = ROOT / "runs" / "demo" / "test.npz"


def add_input_args(parser: argparse.ArgumentParser, data: bool = True) -> None:
    """--bundle, --data, --synthetic and --json."""
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, help="bundle directory or .zip (default: the demo's)")
    if data:
        parser.add_argument(
            "--data", type=Path, default=DEFAULT_DATA, help=".npz with x (raw inputs) and y (default: the demo's)"
        )
    parser.add_argument(
        "--synthetic",
        type=int,
        nargs="+",
        default=None,
        metavar="H",
        help="use generated 4-member MNIST-size bundles of hidden width H instead (development; needs onnx)",
    )
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results as JSON")


def resolve_inputs(
    args: argparse.Namespace, tmp: Path, data: bool = True
) -> tuple[Path, np.ndarray | None, np.ndarray | None, str]:
    """(bundle path, x, y, description); exits 2 with one line when the demo's files are missing."""
    if args.synthetic is not None:
        return synthetic_bundle(tmp, args.synthetic[0])
    missing = [p for p in ([args.bundle] + ([args.data] if data else [])) if not Path(p).exists()]
    if missing:
        print(
            f"{Path(sys.argv[0]).name}: {', '.join(map(str, missing))} not found; run `make demo` first, "
            "or pass --bundle/--data (or --synthetic H for a generated bundle)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    if not data:
        return Path(args.bundle), None, None, f"bundle {args.bundle}"
    from edge_runtime.cli._arrays import read_npz_xy

    x, y = read_npz_xy(args.data)
    return Path(args.bundle), x, y, f"bundle {args.bundle}, data {args.data} ({len(x)} samples)"


def synthetic_bundle(tmp: Path, hidden: int, num_members: int = 4, n: int = 512) -> tuple[Path, np.ndarray, np.ndarray, str]:
    """A generated bundle in ``tmp`` plus inputs and labels (the full ensemble's answers)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import edge_runtime
    from onnx_members import make_bundle  # the test helper: onnx.helper graphs, no torch

    path = make_bundle(
        tmp / f"synthetic_h{hidden}",
        num_members=num_members,
        input_shape=(784,),
        num_classes=10,
        hidden=hidden,
        scales=[1.0 + 1.5 * k for k in range(num_members)],
    )
    x = np.random.default_rng(0).normal(size=(n, 784)).astype(np.float32)
    y = edge_runtime.load(path, warmup=0).evaluate_prefixes(x).labels[-1]
    return path, x, y, f"synthetic bundle: {num_members} members, 784 -> {hidden} -> 10, labels = full ensemble's answers"


def device_line() -> dict[str, Any]:
    """The device and the machine's state, printed with every table."""
    from edge_runtime.device import device_info, fingerprint

    info = device_info()
    return {
        "cpu_model": info["cpu_model"],
        "logical_cores": info["logical_cores"],
        "fingerprint": fingerprint(),
        "onnxruntime": info["onnxruntime"],
        "python": platform.python_version(),
        "load_average_1m": os.getloadavg()[0],
        "cpu_affinity": info["cpu_affinity"],
    }


def percentiles(values: Sequence[float] | np.ndarray, qs: Sequence[int] = (50, 90, 99)) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {f"p{q}": float(np.percentile(arr, q)) for q in qs}


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """The toolkit's table (:func:`profiles.report.format_table`) with floats at 3 decimals."""
    from profiles.report import format_table

    return format_table(header, [[_fmt(c) for c in row] for row in rows])


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1e4 else f"{value:.3g}"
    return str(value)


def write_json(path: Path | None, result: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    from edge_runtime.files import atomic_write

    atomic_write(path, (json.dumps(result, indent=2) + "\n").encode())
    print(f"wrote {path}")


@contextlib.contextmanager
def busy_process(core: int | None, seconds: float = 1200.0) -> Iterator[psutil.Process | None]:
    """A competing CPU-bound process (a Python spin loop) pinned to ``core``; always killed on exit.

    It runs at the default priority (nice 0) even when this process was given another, so a benchmark run
    with ``--runtime-nice`` measures a prioritised runtime against ordinary work. The loop also stops by
    itself after ``seconds`` so a crash of this script never leaves it running.
    """
    if core is None:
        yield None
        return
    code = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"

    def setup() -> None:
        os.sched_setaffinity(0, {core})
        with contextlib.suppress(PermissionError):  # raising a niceness back to 0 needs privilege
            os.setpriority(os.PRIO_PROCESS, 0, 0)
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))  # an ordinary process, whatever ours is

    proc = subprocess.Popen([sys.executable, "-c", code], preexec_fn=setup)
    try:
        time.sleep(0.2)  # let it start spinning
        yield psutil.Process(proc.pid)
    finally:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def pinned(core: int | None) -> Iterator[None]:
    """Pin this process to ``core`` for the block (restores the previous affinity)."""
    if core is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="anytime-bench-") as tmp:
        yield Path(tmp)
