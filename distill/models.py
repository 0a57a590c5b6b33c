"""Model families for every input rank: MLP (N, F), 1-D CNN (N, C, L), 2-D CNN (N, C, H, W), and a
ResNet for images (``resnet``: BatchNorm, residual blocks, global average pooling; :mod:`distill.resnet`).

Every model (teacher, student, ensemble member) obeys one contract, which the exporters rely on:

    forward(x, *connections) -> (logits (N, C), features (N, F))

``features`` is the penultimate activation. ``connections`` are features of earlier ensemble members
(B-DISTIL's intermediate connections); a model built with ``connection_dims`` concatenates them with its
own penultimate activation and mixes them through one more Linear+ReLU, so member t can reuse what
member t-1 computed. ``width`` and ``depth`` are the cost knob (for ``resnet``: base width and stages;
its features are the pooled activation of the last stage, without a penultimate Linear).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from distill.errors import TrainingError
from distill.resnet import resnet_body

__all__ = ["Classifier", "FAMILIES", "ModelConfig", "build_model", "count_params", "family_for"]

FAMILIES = ("mlp", "cnn1d", "cnn2d", "resnet")


def family_for(input_shape: tuple[int, ...]) -> str:
    """The family that fits inputs of this shape (without the batch dimension)."""
    return {1: "mlp", 2: "cnn1d", 3: "cnn2d"}.get(len(input_shape), "mlp")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one classifier. JSON-serialisable (stored beside checkpoints)."""

    input_shape: tuple[int, ...]  # one input, without the batch dimension
    num_classes: int
    family: str = "auto"  # "mlp", "cnn1d", "cnn2d", "resnet", or "auto" (from the input rank; never resnet)
    width: int = 32  # hidden units (MLP) or channels of the first conv block (CNNs, ResNet)
    depth: int = 2  # hidden layers (MLP), conv blocks (CNNs) or residual stages (ResNet)
    hidden: int = 0  # CNNs: units of the penultimate Linear; 0 = 4 * width (ResNet: must be 0)
    connection_dims: tuple[int, ...] = field(default=())  # feature sizes of earlier members this one takes

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
        object.__setattr__(self, "connection_dims", tuple(int(d) for d in self.connection_dims))
        if self.family == "auto":
            object.__setattr__(self, "family", family_for(self.input_shape))
        if self.family not in FAMILIES:
            raise TrainingError(f"model family '{self.family}' is unknown; use one of {list(FAMILIES)} or 'auto'")
        expected_rank = {"mlp": None, "cnn1d": 2, "cnn2d": 3, "resnet": 3}[self.family]
        if expected_rank is not None and len(self.input_shape) != expected_rank:
            raise TrainingError(f"family {self.family} needs inputs of rank {expected_rank}, got shape {self.input_shape}")
        if self.width < 1 or self.depth < 1 or self.num_classes < 2 or self.hidden < 0:
            raise TrainingError("width and depth must be >= 1, hidden >= 0, num_classes >= 2")
        if self.family == "resnet" and self.hidden:
            raise TrainingError(
                "the resnet family has no penultimate Linear (its features are pooled): pass hidden=0 (--hidden 0)"
            )

    @classmethod
    def for_data(cls, data: Any, **architecture: Any) -> "ModelConfig":
        """The config of ``architecture`` (family, width, depth, ...) for a data set's inputs and classes."""
        return cls(input_shape=data.input_shape, num_classes=data.num_classes, **architecture)

    @property
    def feature_dim(self) -> int:
        if self.family == "mlp":
            return self.width
        if self.family == "resnet":
            return self.width * 2 ** (self.depth - 1)
        return self.hidden or 4 * self.width

    def to_dict(self) -> dict[str, object]:
        return {
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "family": self.family,
            "width": self.width,
            "depth": self.depth,
            "hidden": self.hidden,
            "connection_dims": list(self.connection_dims),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
        return cls(
            input_shape=tuple(d["input_shape"]),
            num_classes=int(d["num_classes"]),
            family=str(d.get("family", "auto")),
            width=int(d.get("width", 32)),
            depth=int(d.get("depth", 2)),
            hidden=int(d.get("hidden", 0)),
            connection_dims=tuple(d.get("connection_dims", ())),
        )


def _conv_body(cfg: ModelConfig) -> tuple[nn.Sequential, int]:
    """Conv blocks (conv, ReLU, 2x max-pool while the map is large enough); returns (body, flat size)."""
    two_d = cfg.family == "cnn2d"
    conv, pool = (nn.Conv2d, nn.MaxPool2d) if two_d else (nn.Conv1d, nn.MaxPool1d)
    kernel = 3 if two_d else 5
    channels = cfg.input_shape[0]
    spatial = list(cfg.input_shape[1:])
    layers: list[nn.Module] = []
    for block in range(cfg.depth):
        out = cfg.width * 2 ** min(block, 2)
        layers += [conv(channels, out, kernel, padding=kernel // 2), nn.ReLU()]
        if min(spatial) >= 4:
            layers.append(pool(2))
            spatial = [s // 2 for s in spatial]
        channels = out
    flat = channels
    for s in spatial:
        flat *= s
    return nn.Sequential(*layers, nn.Flatten()), flat


class Classifier(nn.Module):
    """A body, a penultimate Linear+ReLU (the features), an optional connection mixer, and a head."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        if cfg.family == "mlp":
            dims = [int(torch.tensor(cfg.input_shape).prod())] + [cfg.width] * cfg.depth
            layers: list[nn.Module] = [nn.Flatten()]
            for a, b in zip(dims[:-2], dims[1:-1]):
                layers += [nn.Linear(a, b), nn.ReLU()]
            self.body = nn.Sequential(*layers)
            penultimate_in = dims[-2]
        elif cfg.family == "resnet":
            self.body, _ = resnet_body(cfg.input_shape, cfg.width, cfg.depth)
        else:
            self.body, penultimate_in = _conv_body(cfg)
        self.penultimate: nn.Module = (
            nn.Identity() if cfg.family == "resnet" else nn.Sequential(nn.Linear(penultimate_in, cfg.feature_dim), nn.ReLU())
        )
        self.mixer = (
            nn.Sequential(nn.Linear(cfg.feature_dim + sum(cfg.connection_dims), cfg.feature_dim), nn.ReLU())
            if cfg.connection_dims
            else None
        )
        self.head = nn.Linear(cfg.feature_dim, cfg.num_classes)

    @property
    def feature_dim(self) -> int:
        return self.config.feature_dim

    def forward(self, x: torch.Tensor, *connections: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.penultimate(self.body(x))
        if self.mixer is not None:
            if len(connections) != len(self.config.connection_dims):
                raise TrainingError(
                    f"this member takes {len(self.config.connection_dims)} connection tensors, got {len(connections)}"
                )
            features = self.mixer(torch.cat((features, *connections), dim=1))
        return self.head(features), features


def build_model(cfg: ModelConfig) -> Classifier:
    """A freshly initialised classifier for ``cfg``."""
    return Classifier(cfg)


def count_params(model: nn.Module) -> int:
    """Number of parameters (all, trainable or not)."""
    return sum(p.numel() for p in model.parameters())
