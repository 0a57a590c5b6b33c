"""Post-training sparsity allocations without fine-tuning: uniform, global magnitude, ERK.

Each allocation maps ``(model, target)`` to per-layer sparsities whose parameter-weighted mean is the
target (up to rounding to whole weights); the mask inside each layer is then by magnitude
(:func:`distill.sparse.masks.masks_for_sparsities`). They are the baselines FCPTS is measured against, and
ERK is also FCPTS's initialisation.

* ``uniform`` — every layer at the target.
* ``global`` — one magnitude threshold over all prunable weights (layers with small weights lose more).
* ``erk`` — Erdős–Rényi-Kernel (Evci et al., RigL): layer density ∝ ``Σ dims / Π dims`` of the weight
  shape, scaled so the global density matches; layers whose density would exceed 1 are kept dense and
  the scale is solved again for the rest.
"""

from __future__ import annotations

import abc
from typing import Mapping

import torch
from torch import nn

from distill.errors import TrainingError
from distill.sparse.masks import prunable_layers

__all__ = ["ALLOCATIONS", "Allocation", "ERK", "GlobalMagnitude", "Uniform", "allocate", "check_target"]


def check_target(target: float) -> float:
    """``target`` as a float, or a one-line error when it is not a sparsity in [0, 1)."""
    target = float(target)
    if not 0.0 <= target < 1.0:
        raise TrainingError(f"target sparsity must lie in [0, 1) (e.g. 0.8 for 80% zeros), not {target}")
    return target


class Allocation(abc.ABC):
    """How a global sparsity target is split across the prunable layers."""

    @abc.abstractmethod
    def __call__(self, model: nn.Module, target: float) -> dict[str, float]:
        """Per-layer sparsities (layer name -> fraction of zeros) for the global ``target``."""


class Uniform(Allocation):
    """Every prunable layer pruned to the target."""

    def __call__(self, model: nn.Module, target: float) -> dict[str, float]:
        target = check_target(target)
        return {name: target for name in prunable_layers(model)}


class GlobalMagnitude(Allocation):
    """One |w| threshold over all prunable weights: the ``target`` share of smallest magnitudes goes."""

    def __call__(self, model: nn.Module, target: float) -> dict[str, float]:
        target = check_target(target)
        layers = prunable_layers(model)
        magnitudes = torch.cat([m.weight.detach().abs().flatten() for m in layers.values()])
        k = int(round(target * magnitudes.numel()))
        owner = torch.cat([torch.full((m.weight.numel(),), i) for i, m in enumerate(layers.values())])
        pruned = owner[torch.argsort(magnitudes, stable=True)[:k]]
        counts = torch.bincount(pruned, minlength=len(layers))
        return {name: int(counts[i]) / m.weight.numel() for i, (name, m) in enumerate(layers.items())}


class ERK(Allocation):
    """Erdős–Rényi-Kernel densities, with layers that would be denser than 1 kept dense."""

    def __call__(self, model: nn.Module, target: float) -> dict[str, float]:
        target = check_target(target)
        layers = prunable_layers(model)
        sizes = {name: m.weight.numel() for name, m in layers.items()}
        raw = {name: sum(m.weight.shape) / sizes[name] for name, m in layers.items()}
        dense: set[str] = set()
        while True:
            free = [n for n in layers if n not in dense]
            if not free:
                raise TrainingError(f"ERK cannot reach sparsity {target} without pruning some layer past 100%")
            # Nonzeros the free layers must hold so that the global density is 1 - target.
            budget = (1.0 - target) * sum(sizes.values()) - sum(sizes[n] for n in dense)
            eps = budget / sum(raw[n] * sizes[n] for n in free)
            over = [n for n in free if eps * raw[n] > 1.0]
            if not over:
                break
            dense.update(over)
        return {n: 0.0 if n in dense else max(0.0, 1.0 - eps * raw[n]) for n in layers}


ALLOCATIONS: Mapping[str, Allocation] = {"erk": ERK(), "global": GlobalMagnitude(), "uniform": Uniform()}


def allocate(name: str, model: nn.Module, target: float) -> dict[str, float]:
    """Per-layer sparsities from the allocation registered under ``name``.

    Raises:
        TrainingError: unknown name or bad target.
    """
    if name not in ALLOCATIONS:
        raise TrainingError(f"allocation '{name}' is unknown; choose one of {sorted(ALLOCATIONS)}")
    return ALLOCATIONS[name](model, target)
