"""Structured channel pruning: the one kind of sparsity that ONNX Runtime's CPU kernels turn into speed.

Unstructured zeros (FCPTS, DSD²) leave every layer its full shape, so the device multiplies by them. This
module removes whole output channels (Conv) and units (Linear) instead and rebuilds *smaller* layers:
fewer rows in one layer and fewer input columns in the next, so the exported graph really does less work.
Which channels go: the smallest L1 norms of their filters (Li et al., "Pruning Filters for Efficient
ConvNets"), the same share ``1 - keep`` in every hidden layer; the input layer's inputs and the head's
classes are never touched. Without retraining this hurts accuracy badly, so :func:`channel_student`
fine-tunes the shrunk model by distillation from the dense teacher (a few epochs, Hinton KD).

Works for the project's :class:`~distill.models.Classifier` families without connections (mlp, cnn1d,
cnn2d): Conv/Linear + ReLU (+ max-pool) bodies, a Flatten, the penultimate Linear + ReLU and the head.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from distill.errors import TrainingError

__all__ = ["ChannelReport", "ShrunkClassifier", "channel_student", "shrink_channels"]


class ShrunkClassifier(nn.Module):
    """A classifier with physically fewer channels; ``forward(x) -> (logits, features)`` like the original."""

    def __init__(self, body: nn.Sequential, penultimate: nn.Sequential, head: nn.Linear) -> None:
        super().__init__()
        self.body, self.penultimate, self.head = body, penultimate, head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.penultimate(self.body(x))
        return self.head(features), features


def _keep_rows(weight: torch.Tensor, keep: float) -> torch.Tensor:
    """Sorted indices of the output channels/units with the largest L1 norm (at least one)."""
    n = weight.shape[0]
    k = max(1, int(round(keep * n)))
    norms = weight.detach().abs().reshape(n, -1).sum(dim=1)
    return torch.sort(torch.topk(norms, k).indices).values


def _sliced(layer: nn.Module, rows: torch.Tensor | None, cols: torch.Tensor | None) -> nn.Module:
    """A new Conv/Linear holding ``layer``'s weights for the kept outputs (rows) and inputs (cols)."""
    w = layer.weight.detach()
    if cols is not None:
        w = w[:, cols]
    if rows is not None:
        w = w[rows]
    b = layer.bias.detach()[rows] if layer.bias is not None and rows is not None else (None if layer.bias is None else layer.bias.detach())
    if isinstance(layer, nn.Linear):
        new: nn.Module = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    else:
        new = type(layer)(w.shape[1], w.shape[0], layer.kernel_size, stride=layer.stride, padding=layer.padding,
                          dilation=layer.dilation, bias=b is not None)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    return new


def shrink_channels(model: nn.Module, keep: float) -> ShrunkClassifier:
    """A smaller copy of ``model`` keeping the ``keep`` share of channels/units of every hidden layer.

    Args:
        model: a :class:`~distill.models.Classifier` without connections.
        keep: share of channels/units kept per hidden layer, in (0, 1].

    Raises:
        TrainingError: bad ``keep``, or a model this rebuilder does not understand.
    """
    if not 0.0 < keep <= 1.0:
        raise TrainingError(f"keep must lie in (0, 1] (0.5 keeps half the channels), not {keep}")
    if getattr(model, "mixer", None) is not None:
        raise TrainingError("channel pruning does not support members with connections; prune a plain classifier")
    if not all(hasattr(model, a) for a in ("body", "penultimate", "head")):
        raise TrainingError("channel pruning needs a distill.models.Classifier (body, penultimate, head)")
    example = torch.zeros(1, *model.config.input_shape)
    body: list[nn.Module] = []
    kept: torch.Tensor | None = None  # kept channels of the tensor flowing into the next layer
    x = example
    with torch.no_grad():
        for layer in model.body:
            if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                rows = _keep_rows(layer.weight[:, kept] if kept is not None else layer.weight, keep)
                body.append(_sliced(layer, rows, kept))
                kept = rows
            elif isinstance(layer, nn.Flatten):
                if kept is not None and x.dim() > 2:  # channel c owns a contiguous block of the flat vector
                    per_channel = int(torch.tensor(x.shape[2:]).prod())
                    kept = (kept[:, None] * per_channel + torch.arange(per_channel)[None]).flatten()
                body.append(copy.deepcopy(layer))
            elif isinstance(layer, (nn.ReLU, nn.MaxPool1d, nn.MaxPool2d)):
                body.append(copy.deepcopy(layer))
            else:
                raise TrainingError(f"channel pruning does not know layer {type(layer).__name__}; use mlp/cnn1d/cnn2d models")
            x = layer(x)
        linear = model.penultimate[0]
        rows = _keep_rows(linear.weight[:, kept] if kept is not None else linear.weight, keep)
        penultimate = nn.Sequential(_sliced(linear, rows, kept), nn.ReLU())
        head = _sliced(model.head, None, rows)
    return ShrunkClassifier(nn.Sequential(*body), penultimate, head).eval()


@dataclass(frozen=True)
class ChannelReport:
    """What channel pruning kept and what the fine-tune recovered."""

    keep: float
    params_dense: int
    params_shrunk: int
    accuracy_dense: float
    accuracy_shrunk: float  # before fine-tuning
    accuracy_finetuned: float
    finetune_epochs: int
    seconds: float  # shrink + fine-tune wall time

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def channel_student(teacher: nn.Module, dataset: Any, keep: float, *, epochs: int = 2, limit: int = 20000, seed: int = 0) -> tuple[nn.Module, ChannelReport]:
    """Shrink ``teacher`` to ``keep`` of its channels, then distil it from the dense teacher.

    Args:
        teacher: the dense classifier (unchanged).
        dataset: a :class:`distill.data.Dataset`; fine-tuning uses its first ``limit`` training samples.
        keep: share of channels/units kept per hidden layer.
        epochs: KD fine-tuning epochs (alpha 0.9, T 4); 0 = none.
        seed: seeds the batch order.
    """
    from distill.losses import make_loss
    from distill.train import FitConfig, accuracy, fit, predict_logits

    started = time.perf_counter()
    student = shrink_channels(teacher, keep)
    before = accuracy(student, dataset.x_test, dataset.y_test)
    if epochs:
        x, y = dataset.x_train[:limit], dataset.y_train[:limit]
        fit(student, x, y, make_loss("kd", alpha=0.9, temperature=4.0),
            FitConfig(epochs=epochs, lr=1e-3, batch_size=128, seed=seed, progress=False),
            teacher_logits=predict_logits(teacher, x))
    student.eval()
    report = ChannelReport(
        keep=keep,
        params_dense=sum(p.numel() for p in teacher.parameters()),
        params_shrunk=sum(p.numel() for p in student.parameters()),
        accuracy_dense=accuracy(teacher, dataset.x_test, dataset.y_test),
        accuracy_shrunk=before,
        accuracy_finetuned=accuracy(student, dataset.x_test, dataset.y_test),
        finetune_epochs=epochs,
        seconds=time.perf_counter() - started,
    )
    return student, report
