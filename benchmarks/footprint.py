"""Footprint of a runtime-only install: venv size, import time, memory after loading a bundle.

A runtime-only virtual environment is assembled from this environment's installed files: ``python -m
venv --without-pip``, then exactly the files (per each distribution's RECORD) of the base requirements'
closure - numpy, onnxruntime, psutil and what they require without extras - plus the ``edge_runtime``
package from this checkout. So torch, onnx and the training code are absent, and everything below runs in
that venv, which is also a check that the runtime works on its base install. Reported:

* ``venv_mb``: the venv on disk (interpreter links + packages); ``packages_mb`` per distribution;
* ``import_s``: ``import edge_runtime`` in a fresh process (median of ``--repeats``; lazy, cheap) and
  ``import_full_s``: the whole serving stack (``edge_runtime.ensemble``: numpy + onnxruntime), plus the
  bare interpreter start for reference; goal <= 0.3 s (judged on the full stack);
* ``rss_mb``: RSS after ``edge_runtime.load(bundle)`` and after 200 requests, USS, and the kernel's
  high-water mark (VmHWM); goal <= 120 MB for an MNIST-size bundle.

    python benchmarks/footprint.py [--bundle B] [--repeats 15] [--json PATH]
    python benchmarks/footprint.py --synthetic 256
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from _runtime_bench import ROOT, add_input_args, device_line, resolve_inputs, table, workdir, write_json

BASE = ("numpy", "onnxruntime", "psutil")  # pyproject's runtime dependencies

_PROBE = r"""
import json, os, sys, time
t0 = time.perf_counter()
import edge_runtime
t1 = time.perf_counter()
import edge_runtime.ensemble
t2 = time.perf_counter()
out = {"import_s": t1 - t0, "import_full_s": t2 - t0, "torch_loaded": "torch" in sys.modules}
if len(sys.argv) > 1:
    import numpy as np, psutil
    proc = psutil.Process()
    out["rss_after_import_mb"] = proc.memory_info().rss / 2**20
    t3 = time.perf_counter()
    runtime = edge_runtime.load(sys.argv[1], entropy_threshold="off")
    out["load_s"] = time.perf_counter() - t3
    out["rss_after_load_mb"] = proc.memory_info().rss / 2**20
    shape = tuple(runtime.manifest.task.input.shape[1:])
    x = np.random.default_rng(0).normal(size=(1, *shape)).astype(np.float32)
    for _ in range(200):
        runtime.predict(x)
    full = proc.memory_full_info()
    out["rss_after_requests_mb"] = full.rss / 2**20
    out["uss_after_requests_mb"] = full.uss / 2**20
    with open("/proc/self/status") as f:
        hwm = [l for l in f if l.startswith("VmHWM")]
    out["vmhwm_mb"] = int(hwm[0].split()[1]) / 1024 if hwm else None
    out["members"] = runtime.num_members
print(json.dumps(out))
"""


def _closure() -> list[md.Distribution]:
    from packaging.requirements import Requirement

    seen: dict[str, md.Distribution] = {}
    todo = list(BASE)
    while todo:
        dist = md.distribution(todo.pop())
        key = dist.metadata["Name"].lower()
        if key in seen:
            continue
        seen[key] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return [seen[k] for k in sorted(seen)]


def build_runtime_venv(target: Path) -> dict[str, float]:
    """The runtime-only venv at ``target``; returns MB per distribution copied."""
    venv.EnvBuilder(with_pip=False, symlinks=True).create(target)
    site = next((target / "lib").glob("python*/site-packages"))
    sizes: dict[str, float] = {}
    for dist in _closure():
        total = 0
        for f in dist.files or []:
            src = Path(f.locate())
            if not src.is_file() or ".." in f.parts or f.parts[0].endswith("__pycache__"):
                continue
            dst = site / f
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
            total += src.stat().st_size
        sizes[dist.metadata["Name"].lower()] = total / 2**20
    shutil.copytree(ROOT / "edge_runtime", site / "edge_runtime", ignore=shutil.ignore_patterns("__pycache__", "server"))
    sizes["edge_runtime (this checkout, without the optional server)"] = _du(site / "edge_runtime") / 2**20
    return sizes


def _du(path: Path) -> int:
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() or p.is_symlink())


def _probe(python: Path, bundle: Path | None, cwd: Path) -> dict[str, Any]:
    argv = [str(python), "-c", _PROBE] + ([str(bundle)] if bundle else [])
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    done = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)
    if done.returncode != 0:
        raise SystemExit(f"footprint: the runtime-only venv failed: {done.stderr.strip().splitlines()[-1]}")
    return json.loads(done.stdout)


def _interpreter_start(python: Path, cwd: Path) -> float:
    import time

    t = time.perf_counter()
    subprocess.run([str(python), "-c", "pass"], check=True, cwd=cwd)
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_input_args(parser, data=False)
    parser.add_argument("--repeats", type=int, default=15, help="fresh processes per measurement (default 15)")
    args = parser.parse_args(argv)
    with workdir() as tmp:
        if args.synthetic is not None:
            from _runtime_bench import synthetic_bundle

            bundle, _, _, description = synthetic_bundle(tmp, args.synthetic[0])
        else:
            bundle, _, _, description = resolve_inputs(args, tmp, data=False)
        env_dir = tmp / "runtime-venv"
        packages = build_runtime_venv(env_dir)
        venv_mb = _du(env_dir) / 2**20
        python = env_dir / "bin" / "python"
        cwd = tmp  # not the checkout: only the venv's packages are importable
        _probe(python, None, cwd)  # first run: compiles .pyc files and warms the page cache
        imports = [_probe(python, None, cwd) for _ in range(args.repeats)]
        starts = [_interpreter_start(python, cwd) for _ in range(args.repeats)]
        loads = [_probe(python, bundle.resolve(), cwd) for _ in range(max(3, args.repeats // 3))]
        bundle_mb = _du(bundle) / 2**20 if bundle.is_dir() else bundle.stat().st_size / 2**20

    def med(key: str, rows: list[dict[str, Any]]) -> float:
        return float(np.median([r[key] for r in rows]))

    def spread(key: str, rows: list[dict[str, Any]]) -> list[float]:
        return [float(np.min([r[key] for r in rows])), float(np.max([r[key] for r in rows]))]

    result: dict[str, Any] = {
        "benchmark": "footprint",
        "source": description,
        "device": device_line(),
        "venv_mb": venv_mb,
        "packages_mb": packages,
        "bundle_mb": bundle_mb,
        "interpreter_start_s": float(np.median(starts)),
        "import_s": med("import_s", imports),
        "import_s_range": spread("import_s", imports),
        "import_full_s": med("import_full_s", imports),
        "import_full_s_range": spread("import_full_s", imports),
        "torch_loaded": any(r["torch_loaded"] for r in imports + loads),
        "load_s": med("load_s", loads),
        "rss_mb": {
            key: med(key, loads)
            for key in ("rss_after_import_mb", "rss_after_load_mb", "rss_after_requests_mb", "uss_after_requests_mb", "vmhwm_mb")
        },
        "repeats": args.repeats,
    }
    rss = result["rss_mb"]["rss_after_requests_mb"]
    result["goals"] = {
        "import_full_s <= 0.3": result["import_full_s"] <= 0.3,
        "rss_after_requests_mb <= 120": rss <= 120,
    }
    dev = result["device"]
    print(
        f"footprint of a runtime-only venv ({', '.join(BASE)} + deps + edge_runtime; no torch/onnx), {description}; "
        f"device {dev['cpu_model']} ({dev['logical_cores']} logical cores), load average {dev['load_average_1m']:.2f}; "
        f"medians of {args.repeats} fresh processes (min..max in brackets)"
    )
    rows = [
        ["venv size", f"{venv_mb:.1f} MB", ", ".join(f"{k} {v:.1f}" for k, v in packages.items())],
        ["bundle size", f"{bundle_mb:.2f} MB", ""],
        ["interpreter start", f"{result['interpreter_start_s']:.3f} s", "python -c pass"],
        [
            "import edge_runtime",
            f"{result['import_s']:.3f} s",
            "[{:.3f}..{:.3f}] lazy: errors only".format(*result["import_s_range"]),
        ],
        [
            "import serving stack",
            f"{result['import_full_s']:.3f} s",
            "[{:.3f}..{:.3f}] edge_runtime.ensemble (numpy, onnxruntime); goal <= 0.3 s: {}".format(
                *result["import_full_s_range"], "met" if result["goals"]["import_full_s <= 0.3"] else "missed"
            ),
        ],
        ["load bundle", f"{result['load_s']:.3f} s", "verify, sessions, warm-up"],
        ["RSS after import", f"{result['rss_mb']['rss_after_import_mb']:.1f} MB", ""],
        ["RSS after load", f"{result['rss_mb']['rss_after_load_mb']:.1f} MB", ""],
        [
            "RSS after 200 requests",
            f"{rss:.1f} MB",
            f"goal <= 120 MB: {'met' if result['goals']['rss_after_requests_mb <= 120'] else 'missed'}",
        ],
        ["USS after requests", f"{result['rss_mb']['uss_after_requests_mb']:.1f} MB", "private memory"],
        ["peak (VmHWM)", f"{result['rss_mb']['vmhwm_mb']:.1f} MB", ""],
        ["torch imported", str(result["torch_loaded"]), ""],
    ]
    print(table(["measure", "value", "notes"], rows))
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
