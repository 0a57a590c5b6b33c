"""Structured channel pruning: the one kind of sparsity that ONNX Runtime's CPU kernels turn into speed.

Unstructured zeros (FCPTS, DSD²) leave every layer its full shape, so the device multiplies by them. This
module removes whole output channels (Conv) and units (Linear) and rebuilds *smaller* layers, so the
exported graph really does less work. Which layers must shrink together is a property of the graph, not
of the layer list: a residual block ties the channels of every conv that feeds the sum, BatchNorm follows
its conv, a depthwise conv ties its input to its output, a Flatten ties a channel to a block of the next
Linear's inputs. Torch-Pruning's dependency graph (Fang et al., "DepGraph: Towards Any Structural
Pruning", CVPR 2023; the maintained ``torch-pruning`` package) traces the model on a sample batch and
finds those coupled groups; :class:`torch_pruning.pruner.MetaPruner` removes the same share ``1 - keep``
of every group, ranked by magnitude importance (group L1 norm: the mean over the group's layers of each
channel's weight norm, normalised per group; Li et al.'s filter-L1 criterion carried to coupled groups).

Works on any module whose forward returns logits (:func:`distill.logits.logits_of`): the model's own
forward is kept, only layers shrink. What stays as it is, and is reported (:class:`ChannelReport`
``kept``): the classifier head's outputs (the classes; found by tracing, :mod:`distill.layers`), and
Linear/Conv layers the forward never calls. The input's channels are never touched. A forward that
hard-codes a channel count (``x.view(-1, 512)``), or uses a layer's weight functionally on pruned
channels, breaks after pruning; the pruned copy is run once on the sample batch, so that is caught and
refused in one line rather than returned.
Without retraining this hurts accuracy, so :func:`channel_student` fine-tunes the shrunk model by
distillation from the dense teacher (a few epochs, Hinton KD).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from distill.errors import TrainingError
from distill.layers import candidate_layers, trace_layers
from distill.logits import logits_of
from edge_runtime.errors import error_line
from edge_runtime.extras import missing_dependency_message

__all__ = ["ChannelReport", "channel_student", "prune_channels", "shrink_channels"]


def _example(model: nn.Module, example: np.ndarray | torch.Tensor | None) -> torch.Tensor:
    if example is not None:
        x = example if isinstance(example, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(example, dtype=np.float32))
        return x[:2]
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "input_shape"):  # the toolkit's own models know their input
        return torch.zeros(2, *config.input_shape)
    raise TrainingError("channel pruning traces the model on a sample batch: pass example= (a few model-ready inputs)")


def prune_channels(
    model: nn.Module, keep: float, example: np.ndarray | torch.Tensor | None = None, *, round_to: int | None = None
) -> tuple[nn.Module, dict[str, tuple[int, int]], dict[str, str]]:
    """A smaller copy of ``model`` keeping the ``keep`` share of the channels/units of every coupled group.

    Args:
        model: any classifier module (left unchanged).
        keep: share of channels/units kept, in (0, 1].
        example: a few model-ready inputs for tracing; optional for the toolkit's own models.
        round_to: keep a multiple of this many channels in every pruned group (Torch-Pruning's ``round_to``),
            so ``keep`` is then approximate; None = exactly ``keep``. ONNX Runtime's CPU convolutions work on
            blocks of 8 channels: on the 64x64 cluttered-MNIST ResNet keep 0.35 runs in 0.17 ms with
            ``round_to=8`` (16/32/64/128 channels) against 0.25 ms without (16/33/67/134), at 5% fewer MACs
            (``benchmarks/results/pruned_widths_cluttered.*``). A group that would round to no channel is left
            whole by Torch-Pruning, so a very small ``keep`` can give a *larger* copy: check the widths returned.

    Returns:
        (the pruned copy in eval mode, {layer: (out channels before, after)} for every Linear/Conv the
        forward calls, {layer: why it was not pruned} for the layers left whole on purpose).

    Raises:
        TrainingError: bad ``keep``, a toolkit member with connections, a forward that fails on the
            example, or one that no longer runs after pruning (hard-coded shapes); one line each.
    """
    if not 0.0 < keep <= 1.0:
        raise TrainingError(f"keep must lie in (0, 1] (0.5 keeps half the channels), not {keep}")
    if round_to is not None and round_to < 1:
        raise TrainingError(f"round_to must be a channel count >= 1 (e.g. 8), not {round_to}")
    if getattr(model, "mixer", None) is not None:
        raise TrainingError("channel pruning does not support members with connections; prune a plain classifier")
    try:
        import torch_pruning as tp
    except ImportError:
        raise TrainingError(f"channel pruning {missing_dependency_message('torch_pruning')}") from None
    x = _example(model, example)
    student = copy.deepcopy(model).eval()
    trace = trace_layers(student, x)
    layers = candidate_layers(student)
    kept: dict[str, str] = {}
    if trace.head is not None:
        kept[trace.head] = "classifier head: its outputs are the classes"
    for name in trace.unused:
        kept[name] = "not called by the model's forward"
    before = {name: _width(layers[name]) for name in trace.executed}
    if keep < 1.0:
        pruner = tp.pruner.MetaPruner(
            student,
            x,
            importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=1.0 - keep,
            round_to=round_to,
            ignored_layers=[layers[name] for name in kept],
            output_transform=lambda out: logits_of(out, who="the model"),
        )
        pruner.step()
        try:
            with torch.no_grad():
                logits = logits_of(student(x), who="the pruned model")
        except Exception as exc:  # noqa: BLE001 - a user forward with a hard-coded width fails here
            first = error_line(exc)
            cause = (
                f"layers {list(trace.unused)} are never called as modules (weights used functionally?), "
                "which Torch-Pruning cannot follow"
                if trace.unused
                else "it may hard-code a channel count"
            )
            raise TrainingError(
                f"the model's forward no longer runs after channel pruning ({first[:100]}): "
                f"{cause}; prune another model or use a sparse/low-rank student"
            ) from None
        if logits.shape[1] != trace.classes:
            raise TrainingError(
                f"channel pruning changed the class count {trace.classes} -> {logits.shape[1]}; "
                "the classifier head was not found, report this model"
            )
    after = {name: _width(layers[name]) for name in trace.executed}
    return student.eval(), {n: (before[n], after[n]) for n in trace.executed}, kept


def _width(layer: nn.Module) -> int:
    return int(layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels)


def shrink_channels(
    model: nn.Module, keep: float, example: np.ndarray | torch.Tensor | None = None, *, round_to: int | None = None
) -> nn.Module:
    """The pruned copy of :func:`prune_channels` alone (same arguments and errors)."""
    return prune_channels(model, keep, example, round_to=round_to)[0]


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
    layers: dict[str, list[int]] = field(default_factory=dict)  # layer -> [out channels before, after]
    kept: dict[str, str] = field(default_factory=dict)  # layers left whole on purpose -> why

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def channel_student(
    teacher: nn.Module,
    dataset: Any,
    keep: float,
    *,
    epochs: int = 2,
    limit: int = 20000,
    seed: int = 0,
    teacher_logits: np.ndarray | None = None,
) -> tuple[nn.Module, ChannelReport]:
    """Shrink ``teacher`` to ``keep`` of its channels, then distil it from the dense teacher.

    Args:
        teacher: the dense classifier, any module whose forward returns logits (unchanged).
        dataset: a :class:`distill.data.Dataset`; fine-tuning uses its first ``limit`` training samples.
        keep: share of channels/units kept per coupled group of layers.
        epochs: KD fine-tuning epochs (alpha 0.9, T 4); 0 = none.
        seed: seeds the batch order.
        teacher_logits: the teacher's logits on ``dataset.x_train`` when already computed (a cache);
            only the first ``limit`` rows are used.

    Returns:
        (the student in eval mode, the report: parameters, accuracies, per-layer widths, layers kept whole).

    Raises:
        TrainingError: see :func:`prune_channels`.
    """
    from distill.losses import make_loss
    from distill.train import FitConfig, accuracy, fit, predict_logits

    started = time.perf_counter()
    student, widths, kept = prune_channels(teacher, keep, dataset.x_train[:2])
    before = accuracy(student, dataset.x_test, dataset.y_test)
    if epochs:
        x, y = dataset.x_train[:limit], dataset.y_train[:limit]
        if teacher_logits is None:
            soft = predict_logits(teacher, x)
        elif teacher_logits.shape != (len(dataset.x_train), dataset.num_classes):
            raise TrainingError(
                f"teacher_logits has shape {teacher_logits.shape}, expected "
                f"{(len(dataset.x_train), dataset.num_classes)}: the teacher's logits on dataset.x_train"
            )
        else:
            soft = np.asarray(teacher_logits[:limit], dtype=np.float32)
        fit(
            student,
            x,
            y,
            make_loss("kd", alpha=0.9, temperature=4.0),
            FitConfig(epochs=epochs, lr=1e-3, batch_size=128, seed=seed, progress=False),
            teacher_logits=soft,
        )
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
        layers={name: list(w) for name, w in widths.items()},
        kept=kept,
    )
    return student, report
