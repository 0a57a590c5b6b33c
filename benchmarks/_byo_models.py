"""A user's own teacher for the bring-your-own benchmarks: the ResNet-style classifier of
shared/cases/byo/plain_logits_teacher.py (BatchNorm, residual blocks, global pooling, forward -> logits),
taking raw inputs and scaling them itself, as a deployed model would. Its residual block is the tests' own
(tests/byo_teachers.py), so the benchmarks measure the model the tests check."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test suite's copy of the case's block

from byo_teachers import Block  # after the path insert


class UserResNet(nn.Module):
    """``forward(x_raw) -> logits``; ``x_raw / input_scale`` is what the layers see."""

    def __init__(self, channels: int = 1, width: int = 32, classes: int = 10, input_scale: float = 16.0) -> None:
        super().__init__()
        self.input_scale = input_scale
        self.stem = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.Sequential(Block(width), Block(width))
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x / self.input_scale)).mean(dim=(2, 3)))


def save_user_files(model: nn.Module, example: torch.Tensor, onnx_path: str, pt2_path: str) -> None:
    """The model as the user would hand it over: ONNX (dynamo, opset 18, one file) and a torch.export program."""
    batch = {"x": {0: torch.export.Dim("batch")}}
    model.eval()
    torch.onnx.export(
        model, (example,), onnx_path, dynamo=True, external_data=False, dynamic_shapes=batch, input_names=["x"], verbose=False
    )
    torch.export.save(torch.export.export(model, (example,), dynamic_shapes=batch), pt2_path)
