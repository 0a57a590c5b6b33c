"""Missing or broken dependencies end in one line naming the install command that works (issue 17, 3 and 5)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from edge_runtime.extras import install_hint
from edge_runtime.session import ORT_FLOOR
from onnx_members import make_bundle

REPO = Path(__file__).resolve().parents[1]

# Makes torch look uninstalled (a runtime-only install), then runs the full CLI.
_NO_TORCH = textwrap.dedent(r"""
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ModuleNotFoundError(f"No module named '{name}'", name=name)
            return None
    sys.meta_path.insert(0, Block())
    from distill.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _env(*paths: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([*map(str, paths), str(REPO)])}


@pytest.mark.parametrize(
    "argv",
    [
        ["demo"],
        ["train-teacher", "--data", "digits", "--out", "OUT"],
        ["export", "teacher.pt", "--data", "digits", "--out", "OUT"],
        ["sparsify", "fcpts", "--data", "digits", "--out", "OUT"],
        ["sparsify", "dsd2", "--data", "digits", "--out", "OUT"],
        ["ensemble", "--data", "digits", "--members", "2", "--out", "OUT"],
        ["lowrank", "--data", "digits", "--rank", "2", "--out", "OUT"],
    ],
)
def test_training_commands_without_torch_name_the_install_command(argv: list[str], tmp_path: Path) -> None:
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]
    proc = subprocess.run(
        [sys.executable, "-c", _NO_TORCH, *argv], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1, proc.stderr
    line = proc.stderr.strip()
    assert "\n" not in line, line
    assert line == f"anytime-edge {argv[0]}: needs torch (the 'train' extra), which is not installed; {install_hint('train')}"
    assert "make install" in line and "anytime-edge[" not in line
    assert not (tmp_path / "out").exists()


def test_light_extras_name_a_constrained_pip_command() -> None:
    assert install_hint("serve") == "pip install -c constraints.txt '.[serve]' in the project checkout (or make install)"
    assert install_hint("") == "pip install . in the project checkout"


def test_no_message_names_an_install_that_is_not_on_the_index() -> None:
    offenders = [
        str(path.relative_to(REPO))
        for package in ("edge_runtime", "exporters", "profiles", "distill", "benchmarks")
        for path in (REPO / package).rglob("*.py")
        if "pip install 'anytime-edge[" in path.read_text(encoding="utf-8")
    ]
    assert offenders == []


def test_the_declared_onnxruntime_floor_is_built_for_numpy_2() -> None:
    tomllib = pytest.importorskip("tomllib")
    deps = [Requirement(d) for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]]
    floors = [Version(spec.version) for d in deps if d.name == "onnxruntime" for spec in d.specifier]
    assert min(floors) == Version(ORT_FLOOR)  # the message names the lowest floor of any Python
    # 1.17.x and 1.18.0 were built for NumPy 1.x, and pip pairs them with numpy 2 (case deploy/04).
    assert Version(ORT_FLOOR) >= Version("1.19")


# An onnxruntime that fails the way 1.17.1 does under numpy 2: numpy's banner and a traceback on stderr,
# then a bare ImportError.
_FAKE_ORT = textwrap.dedent("""
    import sys
    sys.stderr.write("\\nA module that was compiled using NumPy 1.x cannot be run in\\nNumPy 2.4.6 as it may crash.\\n"
                     "Traceback (most recent call last):\\n  File x\\nAttributeError: _ARRAY_API not found\\n")
    raise ImportError
""")


def test_an_onnxruntime_broken_by_numpy_2_is_one_line(tmp_path: Path) -> None:
    fake = tmp_path / "fake"
    (fake / "onnxruntime").mkdir(parents=True)
    (fake / "onnxruntime" / "__init__.py").write_text(_FAKE_ORT)
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 4, 4), np.float32))
    bundle = str(make_bundle(tmp_path / "bundle", num_members=2))
    for argv in (["run", bundle, "--input", str(tmp_path / "x.npy")], ["inspect", bundle]):
        proc = subprocess.run(
            [sys.executable, "-m", "edge_runtime", *argv],
            cwd=tmp_path,
            env=_env(fake),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 1
        line = proc.stderr.strip()
        assert "\n" not in line, line
        assert re.fullmatch(
            rf"python -m edge_runtime {argv[0]}: onnxruntime \S+ cannot import with numpy \S+ \(it was built for "
            rf"NumPy 1\.x\); pip install 'onnxruntime>={re.escape(ORT_FLOOR)}' \(or pip install 'numpy<2'\)",
            line,
        ), line
