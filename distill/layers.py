"""Which Linear/Conv layers a model really runs, in what order, and which one is its classifier head.

The methods that rewrite layers (low-rank, FCPTS, DSD², channel pruning) take any ``nn.Module``, so they
cannot find layers by attribute name (``model.head``). They trace instead: forward hooks on every
``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` record the calls made while the model classifies a small
sample batch. The *head* is the last such layer called: the one whose output the logits come from
(through at most pooling, flattening or activation). A layer that is never called — its weight used
functionally (``nn.MultiheadAttention.out_proj``), or a module the forward ignores — is *unused*:
replacing it would change nothing or break the functional use, so the methods skip it and say so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from distill.errors import TrainingError
from distill.logits import logits_of
from edge_runtime.errors import error_line

__all__ = ["LAYER_TYPES", "LayerTrace", "candidate_layers", "classifier_head", "trace_layers"]

LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d)


def candidate_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` of ``model`` by dotted name, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LAYER_TYPES)}


@dataclass(frozen=True)
class LayerTrace:
    """The Linear/Conv layers one forward pass ran."""

    executed: tuple[str, ...]  # dotted names, in the order of their first call
    head: str | None  # the last layer called (the classifier head); None when no layer ran
    unused: tuple[str, ...]  # Linear/Conv modules the forward never called
    classes: int  # width of the logits


@torch.no_grad()
def trace_layers(model: nn.Module, example: np.ndarray | torch.Tensor) -> LayerTrace:
    """Run ``model`` on ``example`` in eval mode and record which Linear/Conv layers it calls.

    Args:
        model: any module whose forward returns logits in a form :func:`distill.logits.logits_of` accepts.
        example: a few model-ready inputs, shape ``(n, *input_shape)``.

    Returns:
        The trace.

    Raises:
        TrainingError: the forward fails on the example or returns no logits (one line).
    """
    layers = candidate_layers(model)
    calls: list[str] = []
    handles = [m.register_forward_hook(lambda _m, _i, _o, name=name: calls.append(name)) for name, m in layers.items()]
    x = example if isinstance(example, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(example, dtype=np.float32))
    was_training = model.training
    model.eval()
    try:
        logits = logits_of(model(x), who="the model")
    except TrainingError:
        raise
    except Exception as exc:  # noqa: BLE001 - any user forward; the caller needs one line
        first = error_line(exc)
        raise TrainingError(f"the model's forward fails on inputs of shape {tuple(x.shape)}: {first[:160]}") from None
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    executed = tuple(dict.fromkeys(calls))
    return LayerTrace(
        executed=executed,
        head=calls[-1] if calls else None,
        unused=tuple(n for n in layers if n not in executed),
        classes=int(logits.shape[1]),
    )


def classifier_head(model: nn.Module, example: np.ndarray | torch.Tensor | None = None) -> str | None:
    """Dotted name of the classifier head: the last Linear/Conv the forward calls on ``example``.

    Without an example, the last Linear/Conv in module order (right for models that define layers in
    the order they run). None when the model has no Linear/Conv layer.
    """
    if example is not None:
        return trace_layers(model, example).head
    names = list(candidate_layers(model))
    return names[-1] if names else None
