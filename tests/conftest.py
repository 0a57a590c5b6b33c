"""Shared fixtures: tiny bundles built in-process (see onnx_members.py).

Test helpers (onnx_members.py, byo_teachers.py, other test modules) import by their plain names because
pyproject.toml sets pytest's ``pythonpath = ["tests"]``; a subprocess that needs them is given this
folder on its own ``sys.path`` or ``PYTHONPATH`` (see test_server_process.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from onnx_members import make_bundle

try:  # tiny models train fastest on one thread, and the suite must fit 2 cores
    import torch

    torch.set_num_threads(1)
except ImportError:  # a runtime-only environment: the runtime tests still run
    pass


@pytest.fixture
def tiny_bundle(tmp_path: Path) -> Path:
    """Three plain members, 1x4x4 inputs, 3 classes."""
    return make_bundle(tmp_path / "bundle", num_members=3)


@pytest.fixture
def connected_bundle(tmp_path: Path) -> Path:
    """Three members where each takes the previous member's features (B-DISTIL connections)."""
    return make_bundle(tmp_path / "connected", num_members=3, connections=True)
