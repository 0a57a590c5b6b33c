"""`make install` takes torch's CPU build, for torch alone, wherever the usual index has only the CUDA one.

Two file indexes stand in for the network: the "usual" one serves torch 2.13.0 (on Linux x86-64 that is
the package index's CUDA build) and the "CPU" one serves 2.13.0+cpu, each as a tiny placeholder wheel, so the test
checks the Makefile's logic and constraints.txt's pin without downloading anything (issue 17 item 4).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.skipif(shutil.which("make") is None, reason="needs make"),
    pytest.mark.skipif(
        not (sys.platform.startswith("linux") and platform.machine() == "x86_64"),
        reason="the +cpu pin applies on Linux x86-64",
    ),
]


def _wheel(index: Path, version: str) -> None:
    """A placeholder ``torch`` wheel of ``version`` in a PEP 503 file index rooted at ``index``."""
    folder = index / "torch"
    folder.mkdir(parents=True)
    name = f"torch-{version}-py3-none-any.whl"
    info = f"torch-{version}.dist-info"
    with zipfile.ZipFile(folder / name, "w") as whl:
        whl.writestr("torch/__init__.py", f"__version__ = {version!r}\n")
        whl.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n")
        whl.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr(f"{info}/RECORD", "")
    (folder / "index.html").write_text(f'<a href="{name}">{name}</a>\n')


def test_make_installs_torch_cpu_from_the_cpu_index_when_the_usual_index_has_only_cuda(tmp_path: Path) -> None:
    usual, cpu = tmp_path / "usual", tmp_path / "cpu"
    _wheel(usual, "2.13.0")
    _wheel(cpu, "2.13.0+cpu")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL=usual.as_uri(), PIP_NO_CACHE_DIR="1", PIP_DISABLE_PIP_VERSION_CHECK="1")

    # What a user gets with pip and constraints.txt alone: a refusal, never the CUDA build.
    plain = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--no-deps", "-c", "constraints.txt", "torch"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert plain.returncode != 0 and "ResolutionImpossible" in plain.stderr, plain.stderr

    proc = subprocess.run(
        ["make", "--no-print-directory", "torch-cpu", f"VENV={venv}", f"TORCH_INDEX={cpu.as_uri()}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"installing it from {cpu.as_uri()}" in proc.stdout
    version = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import torch; print(torch.__version__)"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert version.stdout.strip() == "2.13.0+cpu"

    # Where the usual index (or a local wheel) has the CPU build, the CPU index is never asked.
    shutil.rmtree(usual / "torch")
    _wheel(usual, "2.13.0+cpu")
    subprocess.run([str(venv / "bin" / "pip"), "uninstall", "-q", "-y", "torch"], env=env, check=True, timeout=60)
    proc = subprocess.run(
        ["make", "--no-print-directory", "torch-cpu", f"VENV={venv}", "TORCH_INDEX=file:///nowhere"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout + proc.stderr


def test_the_runtime_ships_its_type_hints_and_the_declared_license() -> None:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert (REPO / "edge_runtime" / "py.typed").is_file()
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["edge_runtime"]
    assert project["project"]["license"] == "Apache-2.0"
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
