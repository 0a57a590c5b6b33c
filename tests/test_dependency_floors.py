"""The declared runtime dependency floors, installed exactly, in a clean venv (issue 17 item 3).

Slow (a venv and a pip install, about a minute with pip's cache) and needs the package index, so it runs
only where ``CI`` is set: ``CI=true make test``. The fast checks of the same item (the floor's value and
the one-line message for a broken onnxruntime) live in test_cli_dependencies.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from onnx_members import make_bundle

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.environ.get("CI"), reason="installs the declared floors in a clean venv; set CI=true"),
]

REPO = Path(__file__).resolve().parents[1]
PIP_TIMEOUT_S = 240


def runtime_floors() -> dict[str, str]:
    """``{distribution: lowest version}`` of pyproject.toml's runtime dependencies for this Python.

    Each must be ``name>=X`` (with an optional environment marker), exactly one per name applying here.
    """
    tomllib = pytest.importorskip("tomllib")
    floors: dict[str, str] = {}
    for dep in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]:
        req = Requirement(dep)
        if req.marker is not None and not req.marker.evaluate():
            continue
        (spec,) = req.specifier
        assert spec.operator == ">=" and req.name not in floors, f"runtime dependency '{dep}' should be a plain floor"
        floors[req.name] = spec.version
    return floors


def _clean_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the venv must import the installed package, not this checkout
    return env


def _run(args: list[str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def floor_venv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(venv, source copy): the runtime installed from a copy of this checkout at exactly its floors."""
    root = tmp_path_factory.mktemp("floors")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for package in ("edge_runtime", "exporters", "profiles", "distill"):  # a copy: pip's build/ stays out of the checkout
        shutil.copytree(REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pins = [f"{name}=={version}" for name, version in runtime_floors().items()]
    proc = _run([str(venv / "bin" / "pip"), "install", "-q", str(src), *pins], cwd=root, timeout=PIP_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return venv, src


def test_the_runtime_works_at_its_declared_floors(floor_venv: tuple[Path, Path], tmp_path: Path) -> None:
    venv, _ = floor_venv
    python = str(venv / "bin" / "python")
    versions = _run(
        [
            python,
            "-c",
            (
                "import json, importlib.metadata as m; "
                f"print(json.dumps({{d: m.version(d) for d in {sorted(runtime_floors())!r}}}))"
            ),
        ],
        cwd=tmp_path,
    )
    assert versions.returncode == 0, versions.stderr
    installed = json.loads(versions.stdout)
    for name, floor in runtime_floors().items():  # "1.19" is installed as "1.19.0"
        assert Version(installed[name]) == Version(floor), (name, installed[name])

    bundle = make_bundle(tmp_path / "bundle", num_members=2)
    inspect = _run([python, "-m", "edge_runtime", "inspect", str(bundle)], cwd=tmp_path)
    assert inspect.returncode == 0, inspect.stderr
    assert "members  2" in inspect.stdout
    x = np.random.default_rng(0).normal(size=(4, 1, 4, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    run = _run([python, "-m", "edge_runtime", "run", str(bundle), "--input", str(tmp_path / "x.npy"), "--json"], cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    labels = [json.loads(line)["label"] for line in run.stdout.splitlines()]

    import edge_runtime  # the same bundle with this environment's (newest) versions answers the same

    expected = [answer.label for answer in edge_runtime.load(bundle, warmup=1).predict(x, entropy_threshold="off")]
    assert labels == expected


def test_pip_refuses_an_onnxruntime_built_for_numpy_1(floor_venv: tuple[Path, Path], tmp_path: Path) -> None:
    # The case (deploy/04): a device holding onnxruntime 1.17.1 must not get a numpy 2 pairing from our metadata.
    venv, src = floor_venv
    proc = _run(
        [str(venv / "bin" / "pip"), "install", "--dry-run", "onnxruntime==1.17.1", str(src)], cwd=tmp_path, timeout=PIP_TIMEOUT_S
    )
    assert proc.returncode != 0
    assert "ResolutionImpossible" in proc.stderr or "conflict" in proc.stderr.lower(), proc.stderr[-2000:]


def test_a_broken_pair_installed_anyway_is_one_line(floor_venv: tuple[Path, Path], tmp_path: Path) -> None:
    # Forced past the metadata (--no-deps), onnxruntime 1.17.1 with numpy 2 fails in one line naming the fix.
    venv, _ = floor_venv
    broken = venv.parent / "broken"
    shutil.copytree(venv, broken, symlinks=True)
    fix = _run(
        [str(broken / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "onnxruntime==1.17.1", "numpy>=2"],
        cwd=tmp_path,
        timeout=PIP_TIMEOUT_S,
    )
    assert fix.returncode == 0, fix.stderr[-2000:]
    bundle = make_bundle(tmp_path / "bundle", num_members=2)
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 4, 4), np.float32))
    proc = _run(
        [str(broken / "bin" / "python"), "-m", "edge_runtime", "run", str(bundle), "--input", str(tmp_path / "x.npy")],
        cwd=tmp_path,
    )
    assert proc.returncode == 1
    line = proc.stderr.strip()
    assert "\n" not in line, line
    assert re.search(r"onnxruntime 1\.17\.1 cannot import with numpy 2\.\d+\.\d+", line), line
    assert "pip install 'numpy<2'" in line and "onnxruntime>=" in line
