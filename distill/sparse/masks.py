"""Mask utilities shared by every sparse method: which layers are pruned, how sparse they are, baking in.

A *prunable layer* is every ``nn.Conv1d/2d`` and ``nn.Linear`` weight (biases stay dense, as in FCPTS and
DSD²). Sparsities are fractions of zeros in ``[0, 1]``; the *global* sparsity is parameter-weighted,
``S = Σ n_l S_l / Σ n_l`` over the prunable weights only. A layer's magnitude mask keeps the weights with
the largest ``|w|``; ties are broken by position, so a mask hits its layer sparsity to the weight.
"""

from __future__ import annotations

import copy
from typing import Mapping

import torch
from torch import nn

from distill.errors import TrainingError

__all__ = [
    "PRUNABLE_TYPES",
    "apply_masks",
    "global_sparsity",
    "layer_sparsities",
    "magnitude_mask",
    "masked_copy",
    "masks_for_sparsities",
    "prunable_layers",
]

PRUNABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Linear)


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The Conv/Linear modules of ``model`` by qualified name, in definition order.

    Raises:
        TrainingError: the model has no Conv/Linear layer to prune.
    """
    layers = {name: m for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}
    if not layers:
        raise TrainingError("the model has no Conv1d/Conv2d/Linear layer; sparse methods prune those weights")
    return layers


def layer_sparsities(model: nn.Module) -> dict[str, float]:
    """Fraction of exactly-zero weights in each prunable layer."""
    return {name: float((m.weight == 0).float().mean()) for name, m in prunable_layers(model).items()}


def global_sparsity(model: nn.Module) -> float:
    """Parameter-weighted fraction of exactly-zero weights over all prunable layers."""
    zeros = total = 0
    for m in prunable_layers(model).values():
        zeros += int((m.weight == 0).sum())
        total += m.weight.numel()
    return zeros / total


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean keep-mask that zeroes the ``round(sparsity * n)`` smallest-magnitude entries of ``weight``."""
    if not 0.0 <= sparsity <= 1.0:
        raise TrainingError(f"a layer sparsity must lie in [0, 1], not {sparsity}")
    n = weight.numel()
    k = int(round(sparsity * n))
    keep = torch.ones(n, dtype=torch.bool)
    if k:
        # argsort is stable, so equal magnitudes are pruned in index order and the count is exact.
        order = torch.argsort(weight.detach().abs().flatten(), stable=True)
        keep[order[:k]] = False
    return keep.view_as(weight)


def masks_for_sparsities(model: nn.Module, sparsities: Mapping[str, float]) -> dict[str, torch.Tensor]:
    """Per-layer magnitude masks for the given layer sparsities.

    Raises:
        TrainingError: ``sparsities`` does not name exactly the prunable layers.
    """
    layers = prunable_layers(model)
    if set(sparsities) != set(layers):
        raise TrainingError(f"sparsities name {sorted(sparsities)}, the model's prunable layers are {sorted(layers)}")
    return {name: magnitude_mask(m.weight, float(sparsities[name])) for name, m in layers.items()}


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """Zero the masked-out weights of ``model`` in place (baked in: the zeros are real parameters)."""
    layers = prunable_layers(model)
    for name, mask in masks.items():
        if name not in layers or layers[name].weight.shape != mask.shape:
            raise TrainingError(f"mask '{name}' does not match a prunable layer of this model")
        layers[name].weight.mul_(mask.to(layers[name].weight.dtype))
    return model


def masked_copy(model: nn.Module, sparsities: Mapping[str, float]) -> nn.Module:
    """A deep copy of ``model`` pruned by magnitude to ``sparsities`` (the original is untouched), eval mode."""
    pruned = copy.deepcopy(model)
    apply_masks(pruned, masks_for_sparsities(pruned, sparsities))
    return pruned.eval()
