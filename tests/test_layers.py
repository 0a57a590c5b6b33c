"""Tracing the Linear/Conv layers a user's module calls: execution order, the head, layers never called."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from byo_teachers import GroupedNet, SmallResNet
from distill.errors import TrainingError
from distill.layers import classifier_head, trace_layers


def test_head_is_the_last_layer_called_not_the_last_defined() -> None:
    model = GroupedNet()
    x = torch.randn(3, 1, 8, 8)
    trace = trace_layers(model, x)
    assert trace.head == "head" and trace.classes == 4
    assert trace.executed[0] == "stem.0" and trace.executed[-1] == "head"
    assert trace.unused == ("unused",)
    assert classifier_head(model, x) == "head"
    assert classifier_head(model) == "unused"  # module order alone would pick the wrong layer


def test_tracing_leaves_the_model_as_it_was_and_refuses_bad_forwards() -> None:
    model = SmallResNet().train()
    trace_layers(model, torch.randn(2, 1, 8, 8))
    assert model.training
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(TrainingError, match="fails on inputs of shape"):
        trace_layers(model, torch.randn(2, 3, 8, 8))
    with pytest.raises(TrainingError, match="returned str"):
        trace_layers(nn.Sequential(nn.Linear(4, 2), _Str()), torch.randn(2, 4))


class _Str(nn.Module):
    def forward(self, x: torch.Tensor) -> str:
        return "logits"
