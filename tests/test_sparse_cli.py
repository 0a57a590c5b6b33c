"""``anytime-edge sparsify``: both methods end in a loadable bundle with the zeros baked in, and say so."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from distill.cli import main
from distill.data import load_dataset
from distill.models import ModelConfig, build_model
from distill.teacher import save_model
from edge_runtime.bundle import load_bundle


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ds = load_dataset("digits")
    torch.manual_seed(0)
    model = build_model(ModelConfig(ds.input_shape, ds.num_classes, width=4, depth=1, hidden=16))
    return save_model(model, tmp_path_factory.mktemp("teacher"))


def test_fcpts_command_exports_a_sparse_bundle(tiny_teacher: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, report = tmp_path / "bundle", tmp_path / "report.json"
    code = main(
        [
            "sparsify",
            "fcpts",
            "--data",
            "digits",
            "--teacher-dir",
            str(tiny_teacher),
            "--target",
            "0.6",
            "--iterations",
            "10",
            "--calibration",
            "64",
            "--out",
            str(out),
            "--report",
            str(report),
        ]
    )
    text = capsys.readouterr().out
    assert code == 0
    assert "gain no speed from zero weights" in text and "deflated" in text
    member = load_bundle(out).manifest.members[0]
    assert member.info["method"] == "fcpts"
    assert member.info["nonzero_params"] < member.params  # the zeros are in the exported weights
    saved = json.loads(report.read_text())
    assert abs(saved["report"]["final_global"] - 0.6) <= 0.005
    assert saved["deploy"]["sparse_bytes_zip"] < saved["deploy"]["dense_bytes_zip"]


def test_dsd2_command_logs_both_curves(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, log = tmp_path / "bundle", tmp_path / "log.json"
    code = main(
        [
            "sparsify",
            "dsd2",
            "--data",
            "digits",
            "--limit-train",
            "300",
            "--width",
            "8",
            "--depth",
            "1",
            "--family",
            "mlp",
            "--rounds",
            "2",
            "--epochs",
            "1",
            "--dense-epochs",
            "1",
            "--noise",
            "0.2",
            "--out",
            str(out),
            "--log",
            str(log),
        ]
    )
    assert code == 0
    assert "early stopping picks round" in capsys.readouterr().out
    saved = json.loads(log.read_text())
    assert [r["round"] for r in saved["vanilla"]] == [0, 1, 2] == [r["round"] for r in saved["distilled"]]
    assert np.allclose([r["sparsity"] for r in saved["distilled"]], [0.0, 0.2, 0.36], atol=2e-3)
    assert load_bundle(out).manifest.members[0].info["round"] == saved["picked_round"]


def test_bad_target_is_one_line_exit_1(tiny_teacher: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "sparsify",
            "fcpts",
            "--data",
            "digits",
            "--teacher-dir",
            str(tiny_teacher),
            "--target",
            "1.2",
            "--out",
            str(tmp_path / "b"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "target sparsity" in err
    assert not (tmp_path / "b").exists()


def test_channels_command_exports_a_smaller_graph(tiny_teacher: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bundle"
    code = main(
        [
            "sparsify",
            "channels",
            "--data",
            "digits",
            "--teacher-dir",
            str(tiny_teacher),
            "--keep",
            "0.5",
            "--finetune-epochs",
            "1",
            "--finetune-samples",
            "200",
            "--out",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert code == 0 and "ORT latency" in text
    member = load_bundle(out).manifest.members[0]
    assert member.info["method"] == "channels"
    assert member.params == member.info["params_shrunk"] < 0.5 * member.info["params_dense"]
