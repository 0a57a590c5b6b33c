"""Where the server's memory goes under overload: a leak, or the allocator's high-water mark? (issue 14)

Runs ``anytime-edge serve`` as a child process with tracemalloc on, drives one overload phase of
``_overload.py`` against it ``--rounds`` times, and after each round asks the server (SIGUSR1) for:

* its RSS (psutil);
* glibc's ``mallinfo2``: bytes malloc holds from the OS in its arenas (``arena``), in use (``uordblks``) and
  free but kept (``fordblks``), plus mmapped blocks (``hblkhd``);
* tracemalloc's traced Python allocations (current), and a snapshot written to a temporary folder.

A leak shows as traced memory that keeps growing round after round; a high-water mark as RSS that rises in
the first rounds and then stays flat while the traced memory does not grow, with the difference held as free
bytes in malloc's arenas. The top tracemalloc differences between the first and the last round are printed.
tracemalloc slows the server 2-3x, so the rounds are not throughput figures.

    python benchmarks/serve_memory.py [--bundle runs/demo/bundle --data runs/demo/test.npz] \\
        [--phase storm200] [--rounds 4] [--duration 10] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _overload
from serve_load import HOST, _bodies

# The server, with a SIGUSR1 handler that writes its memory figures and a tracemalloc snapshot.
_SERVER = r"""
import ctypes, json, signal, sys, tracemalloc
frames = int(sys.argv[1])
if frames:
    tracemalloc.start(frames)
out = sys.argv[2]
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                                               "uordblks", "fordblks", "keepcost")]
try:
    mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    mallinfo2.restype = Info
except (OSError, AttributeError):
    mallinfo2 = None
count = [0]
def dump(signum, frame):
    count[0] += 1
    info = mallinfo2() if mallinfo2 else None
    figures = {"traced_bytes": tracemalloc.get_traced_memory()[0]}
    if info is not None:
        figures.update({k: getattr(info, k) for k in ("arena", "hblkhd", "uordblks", "fordblks")})
    if frames:
        tracemalloc.take_snapshot().dump(f"{out}/snap{count[0]}.bin")
    with open(f"{out}/figures{count[0]}.json", "w") as f:
        json.dump(figures, f)
signal.signal(signal.SIGUSR1, dump)
from edge_runtime.cli import main
sys.exit(main(["serve", *sys.argv[3:]]))
"""


def _server(bundle: Path, out: str, frames: int, extra: Sequence[str]) -> tuple[subprocess.Popen[str], str, int, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER, str(frames), out, str(bundle), "--host", HOST, "--port", "0", *extra],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    banner = proc.stdout.readline() if proc.stdout else ""
    match = re.search(r"serving '([^']+)'.* on http://([\d.]+):(\d+)/v2$", banner.strip())
    if not match:
        proc.kill()
        raise RuntimeError(f"server did not start: {banner!r} {proc.stderr.read() if proc.stderr else ''}")
    time.sleep(1.0)
    return proc, match.group(2), int(match.group(3)), match.group(1)


def _dump(proc: subprocess.Popen[str], out: str, k: int) -> dict[str, Any]:
    proc.send_signal(signal.SIGUSR1)
    path = Path(out) / f"figures{k}.json"
    deadline = time.monotonic() + 120
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.2)
    figures = json.loads(path.read_text())
    figures["rss_bytes"] = psutil.Process(proc.pid).memory_info().rss
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "runs/demo/bundle")
    parser.add_argument("--data", type=Path, default=ROOT / "runs/demo/test.npz")
    parser.add_argument("--phase", default="storm200", choices=["single", "storm16", "storm200", "idle300"])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per round")
    parser.add_argument("--frames", type=int, default=8, help="tracemalloc frames per allocation (0: no tracemalloc)")
    parser.add_argument("--budget-ms", type=float, default=1.0)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("serve_args", nargs="*", help="after --: extra `anytime-edge serve` flags")
    args = parser.parse_args(argv)
    with np.load(args.data, allow_pickle=False) as data:
        x = np.asarray(data["x"], dtype=np.float32)[:512]
    clients, idle = {"single": (1, 0), "storm16": (16, 0), "storm200": (200, 0), "idle300": (16, 300)}[args.phase]
    rows = []
    with tempfile.TemporaryDirectory(prefix="serve_memory.") as out:
        proc, host, port, model = _server(args.bundle, out, args.frames, ["--workers", "1", *args.serve_args])
        try:
            import edge_runtime

            name = edge_runtime.load(args.bundle, warmup=1).manifest.task.input.name
            bodies = _bodies(x, name, {"anytime_budget_ms": args.budget_ms, "anytime_entropy_threshold": "off"})
            path = f"/v2/models/{model}/infer"
            _overload.run_phase(host, port, path, bodies, 1, 2.0, 2000)  # warm up
            rows.append({"round": 0, "requests": 0, "ok": 0, **_dump(proc, out, 1)})
            for k in range(1, args.rounds + 1):
                raw = _overload.run_phase(host, port, path, bodies, clients, args.duration, 10**7, idle=idle)
                time.sleep(1.0)
                ok = sum(1 for status, _ in raw["records"] if status == 200)
                rows.append({"round": k, "requests": len(raw["records"]), "ok": ok, **_dump(proc, out, k + 1)})
            top = []
            if args.frames and args.rounds >= 2:
                first = tracemalloc.Snapshot.load(f"{out}/snap2.bin")
                last = tracemalloc.Snapshot.load(f"{out}/snap{args.rounds + 1}.bin")
                top = [str(stat) for stat in last.compare_to(first, "lineno")[: args.top]]
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    mb = 2**20
    print(
        f"serve_memory: {args.bundle}; phase {args.phase}, {args.duration:g} s x {args.rounds} rounds; "
        f"load average {[round(v, 2) for v in os.getloadavg()]}"
    )
    print(
        f"{'round':>5} {'requests':>9} {'200s':>7} {'RSS MB':>8} {'traced MB':>10} {'arena MB':>9} {'in use MB':>10} "
        f"{'free kept MB':>12} {'mmap MB':>8}"
    )
    for r in rows:
        print(
            f"{r['round']:>5} {r['requests']:>9} {r['ok']:>7} {r['rss_bytes'] / mb:>8.1f} {r['traced_bytes'] / mb:>10.2f} "
            f"{r.get('arena', 0) / mb:>9.1f} {r.get('uordblks', 0) / mb:>10.1f} {r.get('fordblks', 0) / mb:>12.1f} "
            f"{r.get('hblkhd', 0) / mb:>8.1f}"
        )
    print("\ntracemalloc: largest differences, last round vs first round")
    print("\n".join(top))
    if args.json:
        args.json.write_text(
            json.dumps(
                {"phase": args.phase, "duration_s": args.duration, "rounds": rows, "top": top, "load_average": os.getloadavg()},
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
