"""DSD²'s ReLU-input entropy monitor (docs/methods.md §4): flags the sparse double descent without labels.

For every ``nn.ReLU`` module, hook its input ``z``. Each element of ``z`` (one unit of a Linear output,
or one channel-position of a feature map) is a neuron; ``p+`` is the share of inputs for which ``z > 0``,
``H = -p+ log2 p+ - (1 - p+) log2 (1 - p+)`` its binary entropy (0 when the neuron is always on or
always off), and a layer's entropy is the mean over its neurons.

The authors' code estimates ``p+`` on the first batch only. Here the counts of ``z > 0`` are accumulated
over *many* batches — every row passed in, up to ``max_samples`` — and ``p+`` is the ratio over all of
them, so a neuron's estimate rests on thousands of inputs instead of one batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from distill.errors import TrainingError

__all__ = ["EntropyReport", "relu_entropy"]


@dataclass(frozen=True)
class EntropyReport:
    """Binary entropy of ReLU activation patterns, per layer and averaged."""

    layers: dict[str, float]  # ReLU module name -> mean entropy of its neurons, in bits
    mean: float  # mean over layers
    samples: int  # inputs the estimate rests on
    batches: int  # forward passes it took


@torch.no_grad()
def relu_entropy(
    model: nn.Module, x: np.ndarray | torch.Tensor, *, batch_size: int = 256, max_samples: int | None = None
) -> EntropyReport:
    """Entropy of every ReLU's on/off pattern over ``x``, accumulated over all batches.

    Args:
        model: any module with ``nn.ReLU`` modules (functional ReLUs are invisible to hooks).
        x: model-ready inputs (labels are not needed).
        batch_size: inputs per forward pass.
        max_samples: use only the first N inputs; None = all.

    Returns:
        The per-layer and mean entropy.

    Raises:
        TrainingError: the model has no ``nn.ReLU`` module, or ``x`` is empty.
    """
    relus = {name: m for name, m in model.named_modules() if isinstance(m, nn.ReLU)}
    if not relus:
        raise TrainingError("the model has no nn.ReLU module; the entropy monitor hooks ReLU inputs")
    data = torch.as_tensor(np.asarray(x, dtype=np.float32) if not isinstance(x, torch.Tensor) else x)
    if max_samples is not None:
        data = data[:max_samples]
    if len(data) == 0 or batch_size < 1:
        raise TrainingError("the entropy monitor needs at least one input and batch_size >= 1")
    positive: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]:
        def count(_module: nn.Module, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
            on = (inputs[0] > 0).sum(dim=0, dtype=torch.int64)
            positive[name] = positive[name] + on if name in positive else on

        return count

    handles = [m.register_forward_hook(hook(name)) for name, m in relus.items()]
    was_training = model.training
    model.eval()
    batches = 0
    try:
        for i in range(0, len(data), batch_size):
            model(data[i : i + batch_size])
            batches += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    layers = {}
    for name, counts in positive.items():
        p = counts.double() / len(data)
        h = -(torch.xlogy(p, p) + torch.xlogy(1 - p, 1 - p)) / np.log(2.0)
        layers[name] = float(h.mean())
    return EntropyReport(layers=layers, mean=float(np.mean(list(layers.values()))), samples=len(data), batches=batches)
