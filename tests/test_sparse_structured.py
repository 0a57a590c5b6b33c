"""Structured channel pruning: the shrunk model computes what the original computes on the kept channels."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distill.errors import TrainingError
from distill.models import ModelConfig, build_model
from distill.sparse.structured import shrink_channels

CONFIGS = [
    ModelConfig((1, 12, 12), 4, width=8, depth=2, hidden=16),
    ModelConfig((2, 40), 4, width=8, depth=3, hidden=16),
    ModelConfig((20,), 4, family="mlp", width=16, depth=3),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.family)
def test_keep_all_is_the_same_function(cfg: ModelConfig) -> None:
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    x = torch.randn(5, *cfg.input_shape)
    assert torch.allclose(shrink_channels(model, 1.0)(x)[0], model(x)[0], atol=1e-5)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.family)
def test_dropping_dead_channels_is_exact_and_shrinks_the_layers(cfg: ModelConfig) -> None:
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    hidden = [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)) and m is not model.head]
    with torch.no_grad():
        for layer in hidden:  # kill every other output channel: weights and bias, so ReLU gives exactly 0
            layer.weight[1::2] = 0
            layer.bias[1::2] = 0
    shrunk = shrink_channels(model, 0.5)
    x = torch.randn(5, *cfg.input_shape)
    assert torch.allclose(shrunk(x)[0], model(x)[0], atol=1e-5)
    kept = [m for m in shrunk.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))][:-1]
    assert [m.weight.shape[0] for m in kept] == [m.weight.shape[0] // 2 for m in hidden]
    assert sum(p.numel() for p in shrunk.parameters()) < 0.5 * sum(p.numel() for p in model.parameters())


def test_bad_keep_and_connected_members_are_refused() -> None:
    model = build_model(CONFIGS[0])
    with pytest.raises(TrainingError, match="keep must lie"):
        shrink_channels(model, 0.0)
    connected = build_model(ModelConfig((20,), 4, family="mlp", width=8, depth=2, connection_dims=(8,)))
    with pytest.raises(TrainingError, match="connections"):
        shrink_channels(connected, 0.5)
