"""A user's own teachers, built in-process: plain-logits ResNet-style modules and a tiny separable data set.

``SmallResNet`` copies the architecture of ../shared/cases/byo/plain_logits_teacher.py (BatchNorm, residual
blocks with functional ReLUs, a Linear head, forward -> logits only). ``GroupedNet`` adds what a user's
model may also hold: a depthwise conv, a grouped conv with bias, a bias-free Linear, and a Linear the
forward never calls (its weight used functionally).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from distill.data import Dataset
from distill.losses import make_loss
from distill.train import FitConfig, fit
from edge_runtime.bundle import Preprocess


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(y)))


class SmallResNet(nn.Module):
    def __init__(self, in_ch: int = 1, width: int = 8, classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_ch, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.Sequential(Block(width), Block(width))
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x / 16.0))
        return self.head(x.mean(dim=(2, 3)))


class GroupedNet(nn.Module):
    """Head defined first (module order is not execution order); depthwise, grouped, bias-free layers."""

    def __init__(self, width: int = 8, classes: int = 4) -> None:
        super().__init__()
        self.head = nn.Linear(16, classes)
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.block = Block(width)
        self.dw = nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False)
        self.dw_bn = nn.BatchNorm2d(width)
        self.grouped = nn.Conv2d(width, 2 * width, 3, padding=1, groups=2)
        self.grouped_bn = nn.BatchNorm2d(2 * width)
        self.fc = nn.Linear(2 * width, 16, bias=False)
        self.unused = nn.Linear(classes, classes)  # its weight is used functionally, the module is never called

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(self.stem(x / 16.0))
        x = torch.relu(self.dw_bn(self.dw(x)))
        x = torch.relu(self.grouped_bn(self.grouped(x)))
        logits = self.head(torch.relu(self.fc(x.mean(dim=(2, 3)))))
        return logits + 0.0 * nn.functional.linear(logits, self.unused.weight)


def separable_images(n: int = 240, classes: int = 4, seed: int = 0) -> Dataset:
    """8x8 images in 0..16 (digits-like): class k lights quadrant k, plus noise. Linearly separable."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, size=n)
    x = rng.uniform(0, 4, size=(n, 1, 8, 8)).astype(np.float32)
    for k in range(classes):
        r, c = divmod(k, 2)
        x[y == k, 0, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] += 10.0
    a, b = int(0.6 * n), int(0.8 * n)
    return Dataset("separable", x[:a], y[:a], x[a:b], y[a:b], x[b:], y[b:], tuple(f"c{k}" for k in range(classes)), Preprocess())


def trained(model: nn.Module, data: Dataset, epochs: int = 6) -> nn.Module:
    """``model`` trained in place with cross-entropy for a few epochs, in eval mode."""
    torch.manual_seed(0)
    fit(model, data.x_train, data.y_train, make_loss("ce"), FitConfig(epochs=epochs, lr=1e-2, batch_size=32, progress=False))
    return model.eval()


def export_pt2(model: nn.Module, path: Path, example: np.ndarray) -> Path:
    """``model`` saved with ``torch.export.save`` (dynamic batch), as a user would."""
    x = torch.from_numpy(np.ascontiguousarray(example[:2]))
    program = torch.export.export(model.eval(), (x,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    torch.export.save(program, path)
    return path
