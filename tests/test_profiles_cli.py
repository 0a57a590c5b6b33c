"""The profile and select commands, and the profiler on a runtime-only install (no torch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edge_runtime
from distill.cli import main as anytime_edge
from edge_runtime.device import fingerprint
from profiles import find_profile
from profiles.cli import main

ROOT = Path(__file__).parents[1]
FAST = ["--min-queries", "20", "--min-seconds", "0", "--warmup", "2", "--batch", "2", "--no-memory-probe"]


def _validation(bundle: Path, path: Path) -> Path:
    x = np.random.default_rng(0).normal(size=(60, 1, 4, 4)).astype(np.float32)
    y = edge_runtime.load(bundle, entropy_threshold="off", warmup=0).evaluate_prefixes(x).labels[-1]
    np.savez(path, x=x, y=y)
    return path


def test_profile_prints_a_table_and_stores(tiny_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", str(tiny_bundle), *FAST]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("member_1", "member_3", "p99", "members 1..3", fingerprint()))
    assert "stored in" in out
    assert edge_runtime.load_bundle(tiny_bundle).manifest.member_latency_ms(fingerprint(), "p50") is not None


def test_profile_json_without_storing(tiny_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert anytime_edge(["profile", str(tiny_bundle), *FAST, "--json", "--no-store"]) == 0
    profiles = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in profiles[0]["members"]] == ["member_1", "member_2", "member_3"]
    assert find_profile(tiny_bundle) is None


def test_plain_onnx_is_profiled_not_stored(tiny_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", str(tiny_bundle / "member_2.onnx"), *FAST]) == 0
    out = capsys.readouterr().out
    assert "not stored (plain ONNX file" in out and "member_2" in out


def test_errors_are_one_line_and_exit_1(tmp_path: Path, tiny_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", str(tmp_path / "nowhere"), *FAST]) == 1
    err = capsys.readouterr().err.strip()
    assert "does not exist" in err and "\n" not in err
    np.savez(tmp_path / "val.npz", x=np.zeros((3, 1, 4, 4), np.float32))
    assert main(["select", str(tiny_bundle), "--data", str(tmp_path / "val.npz")]) == 1
    err = capsys.readouterr().err.strip()
    assert "lacks arrays ['y']" in err and "\n" not in err


def test_select_json_and_plot(connected_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _validation(connected_bundle, tmp_path / "val.npz")
    code = main(
        [
            "select",
            str(connected_bundle),
            "--data",
            str(data),
            "--json",
            "--plot",
            str(tmp_path / "f.png"),
            "--min-queries",
            "20",
            "--min-seconds",
            "0",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["chosen"] == "tiny[1..3]"  # labels are the full ensemble's answers
    assert result["front"] and result["plot"] == str(tmp_path / "f.png") and (tmp_path / "f.png").is_file()
    assert main(["select", str(connected_bundle), "--data", str(data), "--budget-ms", "1e-6"]) == 1
    assert "no candidate fits" in capsys.readouterr().err


# Installed as sitecustomize.py, so it acts in every Python process the test starts, the memory probe's too.
_BLOCK_TRAINING_PACKAGES = """
import importlib.abc, sys
BLOCKED = ("torch", "onnx", "onnxscript", "sklearn", "exporters", "distill", "matplotlib")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not installed (runtime-only install)", name=name)
        return None
sys.meta_path.insert(0, Block())
"""


def test_profiler_runs_on_a_runtime_only_install(connected_bundle: Path, tmp_path: Path) -> None:
    data = _validation(connected_bundle, tmp_path / "val.npz")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_BLOCK_TRAINING_PACKAGES)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    check = (
        "import sys; from profiles.cli import main; code = main(sys.argv[1:]); "
        "assert 'torch' not in sys.modules and 'onnx' not in sys.modules; sys.exit(code)"
    )
    fast = [a for a in FAST if a != "--no-memory-probe"]  # the probe process must be runtime-only too
    runs = [
        ["profile", str(connected_bundle), "--json", *fast],
        ["select", str(connected_bundle), "--data", str(data), "--plot", str(tmp_path / "f.png")],
    ]
    results = [
        subprocess.run([sys.executable, "-c", check, *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        for argv in runs
    ]
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    profile = json.loads(results[0].stdout)[0]
    assert profile["memory_mb"]["method"] == "fresh runtime process"
    assert find_profile(connected_bundle) is not None
    assert "needs matplotlib (the 'plot' extra), which is not installed" in results[1].stderr  # one line, not a crash
    assert not (tmp_path / "f.png").exists()


def test_the_one_table_formatter_aligns_and_formats_cells() -> None:
    from profiles.report import format_table

    text = format_table(["name", "ms"], [["a", 0.12345], ["bbb", 1234.5], ["c", None]])
    assert text.splitlines() == ["name      ms", "----  ------", "a     0.1235", "bbb     1234", "c          -"]
