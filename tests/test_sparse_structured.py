"""Structured channel pruning (Torch-Pruning): removing dead channels is exact, on any module."""

from __future__ import annotations

from typing import Callable

import pytest
import torch
from torch import nn

from byo_teachers import GroupedNet, SmallResNet
from distill.errors import TrainingError
from distill.logits import logits_of
from distill.models import ModelConfig, build_model
from distill.sparse.structured import prune_channels, shrink_channels

CONFIGS = [
    ModelConfig((1, 12, 12), 4, width=8, depth=2, hidden=16),
    ModelConfig((2, 40), 4, width=8, depth=3, hidden=16),
    ModelConfig((20,), 4, family="mlp", width=16, depth=3),
]
MODELS = [*(lambda c=c: build_model(c) for c in CONFIGS), SmallResNet, GroupedNet]
IDS = [*(c.family for c in CONFIGS), "resnet", "grouped"]
LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)


def _input(model: nn.Module) -> torch.Tensor:
    shape = model.config.input_shape if hasattr(model, "config") else (1, 8, 8)
    return torch.rand(32, *shape) * 16


@torch.no_grad()
def _kill_odd_channels(model: nn.Module, head: nn.Module, x: torch.Tensor) -> None:
    """Zero every odd output channel of every hidden layer, and everything that reads it.

    Rows (and biases) of the hidden Conv/Linear layers first; then, during one forward pass, each
    layer's inputs that are exactly zero have their weight columns zeroed (BatchNorm: gamma and beta), so
    a dead channel is dead through BatchNorm and residual sums and no later layer reads it.
    """
    for m in model.modules():
        if isinstance(m, LAYERS) and m is not head and m is not getattr(model, "unused", None):
            m.weight[1::2] = 0
            if m.bias is not None:
                m.bias[1::2] = 0

    def zero_dead_inputs(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        z = inputs[0]
        dead = (z == 0).transpose(0, 1).reshape(z.shape[1], -1).all(dim=1).nonzero().flatten()
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.weight[dead] = 0
            module.bias[dead] = 0
        elif isinstance(module, nn.Linear):
            module.weight[:, dead] = 0
        else:  # a conv: input channel c is column c % (in/groups) of the rows of group c // (in/groups)
            per_in, per_out = module.in_channels // module.groups, module.out_channels // module.groups
            for c in dead.tolist():
                g = c // per_in
                module.weight[g * per_out : (g + 1) * per_out, c % per_in] = 0

    handles = [
        m.register_forward_pre_hook(zero_dead_inputs)
        for m in model.modules()
        if isinstance(m, (*LAYERS, nn.modules.batchnorm._BatchNorm))
    ]
    model(x)
    for h in handles:
        h.remove()


@pytest.mark.parametrize("make", MODELS, ids=IDS)
def test_keep_all_is_the_same_function(make: Callable[[], nn.Module]) -> None:
    torch.manual_seed(0)
    model = make().eval()
    x = _input(model)
    torch.testing.assert_close(logits_of(shrink_channels(model, 1.0, x)(x)), logits_of(model(x)))


@pytest.mark.parametrize("make", MODELS, ids=IDS)
def test_dropping_dead_channels_is_exact_and_shrinks_the_layers(make: Callable[[], nn.Module]) -> None:
    torch.manual_seed(0)
    model = make().eval()
    x = _input(model)
    head = model.head
    _kill_odd_channels(model, head, x)
    pruned, widths, kept = prune_channels(model, 0.5, x)
    fresh = _input(model)
    torch.testing.assert_close(logits_of(pruned(fresh)), logits_of(model(fresh)), atol=1e-5, rtol=1e-5)
    assert "head" in kept and widths["head"] == (head.out_features, head.out_features)
    hidden = {n: w for n, w in widths.items() if n != "head"}
    assert hidden and all(after == before // 2 for before, after in hidden.values())
    assert sum(p.numel() for p in pruned.parameters()) < 0.6 * sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("make", MODELS[:3], ids=IDS[:3])
def test_round_to_keeps_a_multiple_of_that_many_channels_in_every_pruned_layer(make: Callable[[], nn.Module]) -> None:
    torch.manual_seed(0)
    model = make().eval()
    x = _input(model)
    _, exact, kept = prune_channels(model, 0.6, x)
    pruned, widths, _ = prune_channels(model, 0.6, x, round_to=4)
    hidden = {n: after for n, (_, after) in widths.items() if n not in kept}
    assert hidden and all(w % 4 == 0 for w in hidden.values())
    assert any(exact[n][1] % 4 for n in hidden)  # without rounding some width is not a multiple of 4
    assert logits_of(pruned(x)).shape == logits_of(model(x)).shape
    with pytest.raises(TrainingError, match="round_to must be a channel count"):
        prune_channels(model, 0.6, x, round_to=0)


def test_uncalled_layers_are_left_whole_and_reported() -> None:
    torch.manual_seed(0)
    model = GroupedNet().eval()
    pruned, widths, kept = prune_channels(model, 0.5, _input(model))
    assert kept["unused"] == "not called by the model's forward" and "unused" not in widths
    assert widths["dw"] == (8, 4) and pruned.dw.groups == 4 and widths["grouped"] == (16, 8)


class _FunctionalUse(nn.Module):
    """A hidden layer's weight also used functionally on its own outputs: not something to prune."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.mix, self.head = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc(x))
        return self.head(h + nn.functional.linear(h, self.mix.weight))


def test_a_weight_used_functionally_on_pruned_channels_is_refused() -> None:
    with pytest.raises(TrainingError, match=r"\['mix'\] are never called as modules"):
        prune_channels(_FunctionalUse(), 0.5, torch.randn(4, 8))


def test_bad_keep_connected_members_and_missing_examples_are_refused() -> None:
    model = build_model(CONFIGS[0])
    with pytest.raises(TrainingError, match="keep must lie"):
        shrink_channels(model, 0.0)
    connected = build_model(ModelConfig((20,), 4, family="mlp", width=8, depth=2, connection_dims=(8,)))
    with pytest.raises(TrainingError, match="connections"):
        shrink_channels(connected, 0.5)
    with pytest.raises(TrainingError, match="example="):
        shrink_channels(SmallResNet(), 0.5)
