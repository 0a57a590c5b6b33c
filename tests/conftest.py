"""Shared fixtures: tiny bundles built in-process (see onnx_members.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from onnx_members import make_bundle  # noqa: E402

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
