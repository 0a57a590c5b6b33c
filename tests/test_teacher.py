"""Teacher training: it learns, checkpoints without pickles, resumes, and refuses damaged files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from distill.data import load_dataset
from distill.errors import CheckpointError
from distill.teacher import TeacherConfig, ensure_teacher, load_model, train_teacher
from distill.train import accuracy

TINY = TeacherConfig(width=8, depth=1, hidden=32, epochs=8, lr=5e-3, batch_size=64)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", limit_train=400)


def test_teacher_learns_and_reloads(digits, tmp_path: Path) -> None:
    model, metrics = train_teacher(digits, TINY, tmp_path / "t", progress=False)
    assert metrics["test_accuracy"] > 0.6  # chance is 0.1
    again, config = load_model(tmp_path / "t")
    assert config["data"] == "digits"
    assert accuracy(again, digits.x_test, digits.y_test) == pytest.approx(metrics["test_accuracy"])
    assert not (tmp_path / "t" / "progress.pt").exists()


def test_resume_continues_from_the_last_epoch(digits, tmp_path: Path) -> None:
    out = tmp_path / "t"
    train_teacher(digits, TeacherConfig(**{**TINY.__dict__, "epochs": 1}), out, progress=False)
    # Simulate a run interrupted after epoch 1 of 3: progress files present, matching identity.
    model, _ = load_model(out)
    optimizer = torch.optim.Adam(model.parameters())
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, out / "progress.pt")
    identity = {"teacher": TINY.__dict__, "data": "digits", "data_fingerprint": digits.fingerprint()}
    (out / "progress.json").write_text(json.dumps({"identity": identity, "epoch": 0}))
    _, metrics = train_teacher(digits, TINY, out, progress=False)
    assert metrics["resumed_from_epoch"] == 1


def test_checkpoint_with_pickled_objects_is_refused(digits, tmp_path: Path) -> None:
    train_teacher(digits, TINY, tmp_path / "t", progress=False)
    torch.save({"weights": np.arange(3)}, tmp_path / "t" / "model.pt")  # numpy arrays need unpickling
    with pytest.raises(CheckpointError, match="weights-only"):
        load_model(tmp_path / "t")


def test_missing_checkpoint_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="train-teacher"):
        load_model(tmp_path)


def test_ensure_teacher_caches(digits, tmp_path: Path) -> None:
    _, _, first = ensure_teacher(digits, TINY, runs_dir=tmp_path, progress=False)
    _, _, second = ensure_teacher(digits, TINY, runs_dir=tmp_path, progress=False)
    assert first == second
    assert len(list((tmp_path / "teachers").iterdir())) == 1
