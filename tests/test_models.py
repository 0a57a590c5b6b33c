"""Model families: the classifier contract every exporter and student relies on."""

from __future__ import annotations

import pytest
import torch

from distill.errors import TrainingError
from distill.models import ModelConfig, build_model, count_params


@pytest.mark.parametrize("shape", [(20,), (2, 32), (1, 12, 12)])
def test_forward_returns_logits_and_features(shape: tuple[int, ...]) -> None:
    model = build_model(ModelConfig(shape, num_classes=5, width=4, depth=2))
    logits, features = model(torch.randn(3, *shape))
    assert logits.shape == (3, 5)
    assert features.shape == (3, model.feature_dim)
    assert torch.all(features >= 0)  # the penultimate ReLU


def test_connections_change_the_output_and_are_required() -> None:
    cfg = ModelConfig((20,), num_classes=3, width=6, depth=1, connection_dims=(4,))
    model = build_model(cfg)
    x = torch.randn(2, 20)
    a, _ = model(x, torch.zeros(2, 4))
    b, _ = model(x, torch.ones(2, 4))
    assert not torch.allclose(a, b)
    with pytest.raises(TrainingError, match="connection tensors"):
        model(x)


def test_width_is_a_cost_knob() -> None:
    small = count_params(build_model(ModelConfig((1, 16, 16), 10, width=4)))
    large = count_params(build_model(ModelConfig((1, 16, 16), 10, width=16)))
    assert large > 4 * small


def test_config_round_trips_and_validates() -> None:
    cfg = ModelConfig((1, 40), 10, width=8, depth=3, connection_dims=(16,))
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.family == "cnn1d"
    with pytest.raises(TrainingError, match="rank"):
        ModelConfig((10,), 3, family="cnn2d")
    with pytest.raises(TrainingError, match="unknown"):
        ModelConfig((10,), 3, family="transformer")
