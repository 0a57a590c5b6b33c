"""The runtime commands: outputs, one-line errors and exit codes, and no torch anywhere in the runtime."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.bundle import MANIFEST_NAME, load_bundle
from edge_runtime.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).normal(size=(4, 1, 4, 4)).astype(np.float32))
    return path


def test_run_prints_one_line_per_sample(tiny_bundle: Path, inputs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _cli(["run", str(tiny_bundle), "--input", str(inputs)], capsys)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert len(lines) == 4
    assert all("members=3/3 exit=complete" in line for line in lines)


def test_run_json_has_the_documented_keys(tiny_bundle: Path, inputs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _cli(
        ["run", str(tiny_bundle), "--input", str(inputs), "--json", "--entropy", "10", "--batch-size", "3"], capsys
    )
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 4
    for row in rows:
        assert {"label", "label_name", "members_used", "exit_reason", "entropy", "elapsed_ms", "probabilities"} <= set(row)
        assert (row["members_used"], row["exit_reason"]) == (1, "confident")  # every entropy is below 10 nats


def test_run_with_a_tiny_budget_stops_after_the_first_member(
    tiny_bundle: Path, inputs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _cli(["run", str(tiny_bundle), "--input", str(inputs), "--json", "--budget-ms", "1e-6"], capsys)
    assert code == 0
    assert {(r["members_used"], r["exit_reason"]) for r in map(json.loads, out.splitlines())} == {(1, "budget")}


def _save(tmp_path: Path, name: str, array: np.ndarray) -> Path:
    path = tmp_path / name
    np.save(path, array, allow_pickle=array.dtype == object)
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: _save(d, "shape.npy", np.zeros((3, 2, 2), np.float32)), "shape"),
        (lambda d: _save(d, "nan.npy", np.full((2, 1, 4, 4), np.nan, np.float32)), "NaN"),
        (lambda d: _save(d, "empty.npy", np.zeros((0, 1, 4, 4), np.float32)), "empty"),
        (lambda d: _save(d, "str.npy", np.full((1, 1, 4, 4), "x")), "dtype"),
        (lambda d: _save(d, "pickle.npy", np.array([{"a": 1}], dtype=object)), "not a readable .npy"),
        (lambda d: d / "missing.npy", "does not exist"),
    ],
)
def test_run_bad_input_is_one_line_and_exit_1(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], make, message: str
) -> None:
    code, out, err = _cli(["run", str(tiny_bundle), "--input", str(make(tmp_path))], capsys)
    assert code == 1
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and message in err


def test_run_on_tampered_or_unknown_version_bundle(tiny_bundle: Path, inputs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = tiny_bundle / MANIFEST_NAME
    original = manifest.read_text()
    manifest.write_text(json.dumps({**json.loads(original), "version": 7}))
    code, _, err = _cli(["run", str(tiny_bundle), "--input", str(inputs)], capsys)
    assert code == 1 and "version 7" in err and len(err.strip().splitlines()) == 1
    manifest.write_text(original)
    (tiny_bundle / "member_3.onnx").write_bytes(b"tampered")
    code, _, err = _cli(["run", str(tiny_bundle), "--input", str(inputs)], capsys)
    assert code == 1 and "sha256" in err and len(err.strip().splitlines()) == 1


def test_usage_errors_exit_2(tiny_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = _cli(["run", str(tiny_bundle)], capsys)  # --input is required
    assert code == 2


def test_calibrate_saves_and_prints_the_curve(tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import edge_runtime

    x = np.random.default_rng(4).normal(size=(120, 1, 4, 4)).astype(np.float32)
    y = edge_runtime.load(tiny_bundle).evaluate_prefixes(x).labels[-1]
    data = tmp_path / "val.npz"
    np.savez(data, x=x, y=y)
    code, out, _ = _cli(["calibrate", str(tiny_bundle), "--data", str(data), "--max-mean-members", "2", "--dry-run"], capsys)
    assert code == 0 and "not saved" in out
    assert load_bundle(tiny_bundle).manifest.calibration is None
    code, out, _ = _cli(["calibrate", str(tiny_bundle), "--data", str(data), "--accuracy-drop", "1", "--json"], capsys)
    assert code == 0
    shown = json.loads(out)
    saved = load_bundle(tiny_bundle).manifest.calibration
    assert shown["saved"] and saved.entropy_threshold == shown["entropy_threshold"]
    assert saved.accuracy >= 1.0 - 0.01  # labels are the full ensemble's own answers


def test_calibrate_bad_data_file(tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "val.npz"
    np.savez(data, x=np.zeros((3, 1, 4, 4)))
    code, _, err = _cli(["calibrate", str(tiny_bundle), "--data", str(data)], capsys)
    assert code == 1 and "lacks arrays ['y']" in err
    before = (tiny_bundle / MANIFEST_NAME).read_text()
    np.savez(data, x=np.zeros((3, 1, 4, 4)), y=np.array([0, 1, 9]))
    code, _, err = _cli(["calibrate", str(tiny_bundle), "--data", str(data)], capsys)
    assert code == 1 and "labels must lie in" in err
    assert (tiny_bundle / MANIFEST_NAME).read_text() == before  # nothing half-written


def test_inspect_text_and_json(connected_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _cli(["inspect", str(connected_bundle), "--check"], capsys)
    assert code == 0
    assert "conn_features<-member_1.features" in out and "calibration  none" in out and "loads" in out
    code, out, _ = _cli(["inspect", str(connected_bundle), "--json"], capsys)
    d = json.loads(out)
    assert [m["name"] for m in d["members"]] == ["member_1", "member_2", "member_3"]
    assert d["members"][1]["connections"] == [{"input": "conn_features", "from": "member_1", "output": "features"}]
    assert all(m["size_bytes"] > 0 for m in d["members"])


def test_python_m_edge_runtime_run_never_imports_torch(tiny_bundle: Path, inputs: Path) -> None:
    script = (
        "import sys, runpy\n"
        "import edge_runtime\n"
        f"sys.argv = ['edge_runtime', 'run', {str(tiny_bundle)!r}, '--input', {str(inputs)!r}, '--json']\n"
        "try:\n"
        "    runpy.run_module('edge_runtime', run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('NO_TORCH', file=sys.stderr)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "NO_TORCH" in done.stderr
    assert len(done.stdout.splitlines()) == 4
    plain = subprocess.run(
        [sys.executable, "-m", "edge_runtime", "run", str(tiny_bundle), "--input", str(inputs)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert plain.returncode == 0 and len(plain.stdout.splitlines()) == 4


def test_runtime_sources_have_no_torch_import() -> None:
    offenders = []
    for path in sorted((ROOT / "edge_runtime").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n == "torch" or n.startswith("torch.")]
    assert offenders == []
