"""Members that inherit the teacher's weights: channel-pruned copies of the teacher (``init="teacher"``).

Members built from scratch must learn the task within the round's training budget; on cluttered MNIST
(20k rows x 1 epoch per member) they stop ~6 points under the teacher, while a channel-pruned copy of the
teacher fine-tuned on the same budget loses under a point. A teacher-initialised member is such a copy:
:func:`distill.sparse.structured.prune_channels` (Torch-Pruning's dependency graph, magnitude importance)
keeps the share ``keep`` of every coupled group of channels, so the member starts from the teacher's
features and only the lost channels' contribution must be re-learnt.

* :class:`PrunedCandidate` names a rung by its ``keep`` (what :class:`~distill.progressive.members.Candidate`
  is for students from scratch); :func:`candidate_from_dict` reads either back from a report or manifest;
* :class:`InheritedClassifier` puts the pruned copy under the member contract
  ``forward(x) -> (logits, features)``. It takes no connections (the teacher's forward has no inputs for
  them), so teacher-initialised ensembles use ``connect="none"``;
* :func:`start_head` sets the starting point of member ``t > 1``: its copy outputs the teacher's logits,
  while the round's target is the residual ``g - F_{t-1}``;
* :func:`build_student` builds either kind of candidate; :func:`keep_for_macs` sizes NO-RESCHED's
  pruned students by cumulative cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from distill.data import Dataset
from distill.errors import TrainingError
from distill.layers import trace_layers
from distill.logits import logits_of
from distill.models import build_model
from distill.progressive.members import Candidate, count_macs
from edge_runtime.errors import error_line

__all__ = [
    "HEAD_STARTS",
    "INITS",
    "InheritedClassifier",
    "PrunedCandidate",
    "ROUND_TO",
    "build_student",
    "candidate_from_dict",
    "keep_for_macs",
    "pruned_teacher",
    "start_head",
]

INITS = ("scratch", "teacher")
HEAD_STARTS = ("keep", "zero", "rescale")
ROUND_TO = 8  # pruned members keep multiples of 8 channels (ONNX Runtime's CPU convolution block)


@dataclass(frozen=True)
class PrunedCandidate:
    """A teacher-initialised rung: the teacher with the share ``keep`` of its channels (magnitude-ranked)."""

    keep: float  # share of the channels/units of every coupled group of the teacher's layers kept, (0, 1]
    round_to: int | None = None  # each pruned group keeps a multiple of this many channels; None = exactly keep

    def __post_init__(self) -> None:
        if not 0.0 < self.keep <= 1.0:
            raise TrainingError(f"a pruned candidate keeps a share of channels in (0, 1], not {self.keep}")
        if self.round_to is not None and self.round_to < 1:
            raise TrainingError(f"a pruned candidate rounds to a channel count >= 1, not {self.round_to}")

    def describe(self) -> str:
        return f"teacher keep {self.keep:.3g}" + (f" (x{self.round_to})" if self.round_to else "")

    def to_dict(self) -> dict[str, Any]:
        return {"init": "teacher", "keep": self.keep, **({"round_to": self.round_to} if self.round_to else {})}


def candidate_from_dict(d: Mapping[str, Any]) -> Candidate | PrunedCandidate:
    """The candidate a ``to_dict()`` wrote (a report's or a bundle manifest's ``candidate``).

    Raises:
        TrainingError: neither form (``{"init": "teacher", "keep": k}`` or a :class:`Candidate`'s fields).
    """
    try:
        if d.get("init") == "teacher":
            return PrunedCandidate(float(d["keep"]), int(d["round_to"]) if d.get("round_to") else None)
        return Candidate(**{k: v for k, v in d.items() if k != "init"})
    except (KeyError, TypeError, ValueError) as exc:
        raise TrainingError(f"{dict(d)} is not a candidate written by `anytime-edge ensemble`: {exc}") from None


class InheritedClassifier(nn.Module):
    """A pruned teacher copy under the member contract: ``forward(x) -> (logits, features)``.

    ``features`` are the copy's own second output when it returns ``(logits, features)`` (the toolkit's
    models), else its logits; no later member reads them (teacher-initialised members take no connections).
    """

    def __init__(self, model: nn.Module, keep: float, example: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.keep = keep
        with torch.no_grad():
            was_training = model.training
            model.eval()
            _, features = self(example)
            model.train(was_training)
        self._feature_dim = int(features.shape[1])

    @property
    def feature_dim(self) -> int:
        return self._feature_dim

    def forward(self, x: torch.Tensor, *connections: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if connections:
            raise TrainingError("a teacher-initialised member takes no connections; build the ensemble with connect='none'")
        out = self.model(x)
        logits = logits_of(out, who="the pruned teacher")
        second = out[1] if isinstance(out, (tuple, list)) and len(out) > 1 else None
        features = second if isinstance(second, torch.Tensor) and second.dim() == 2 else logits
        return logits, features


def _example(dataset: Dataset) -> torch.Tensor:
    rows = dataset.x_train if len(dataset.x_train) else dataset.x_val
    return torch.from_numpy(np.ascontiguousarray(rows[:2], dtype=np.float32))


def pruned_teacher(teacher: nn.Module, keep: float, dataset: Dataset, *, round_to: int | None = None) -> InheritedClassifier:
    """A copy of ``teacher`` keeping ``keep`` of its channels (Torch-Pruning, magnitude), as a member body.

    ``round_to``: every pruned group keeps a multiple of that many channels (``keep`` is then approximate);
    members sized by latency use :data:`ROUND_TO`, the channel block of ONNX Runtime's CPU convolutions. On the
    cluttered-MNIST ResNet (ORT, one thread, batch 1) keep 0.45 rounded to 8 (16/40/80/168 channels, 22.1 M
    MACs) ran in 0.26 ms where keep 0.4 unrounded (19/38/76/153, 22.4 M MACs) took 0.38 ms, so members sized by
    latency get wider (:func:`distill.sparse.structured.prune_channels`).

    Raises:
        TrainingError: Torch-Pruning cannot prune ``teacher`` (one line naming ``--init scratch``).
    """
    from distill.sparse.structured import shrink_channels

    example = _example(dataset)
    try:
        model = shrink_channels(teacher, keep, example, round_to=round_to)
        return InheritedClassifier(model, keep, example)
    except Exception as exc:  # noqa: BLE001 - any teacher; the caller needs one line and the fix
        raise TrainingError(
            f"teacher-initialised members need a teacher Torch-Pruning can prune, and this one fails "
            f"({error_line(exc)[:160]}); build the members from scratch (--init scratch)"
        ) from None


def _head(body: InheritedClassifier, example: torch.Tensor) -> nn.Linear:
    trace = trace_layers(body.model, example)
    head = dict(body.model.named_modules()).get(trace.head or "")
    if not isinstance(head, nn.Linear):
        raise TrainingError(
            f"the pruned teacher's last layer is {type(head).__name__}, not a Linear classifier head; use head_start='keep'"
        )
    return head


@torch.no_grad()
def start_head(body: InheritedClassifier, mode: str, x: np.ndarray, target: np.ndarray, dataset: Dataset) -> float:
    """Set the start of a member ``t > 1`` by its classifier head (the last Linear); returns the scale applied.

    Args:
        body: the pruned teacher copy (its head is changed in place).
        mode: ``"keep"`` (the teacher's head: ``h`` starts at the pruned teacher's logits), ``"zero"`` (head
            weights and bias 0: ``h = 0``, ``tanh(h) = 0``, the body keeps the teacher's features) or
            ``"rescale"`` (weights and bias times the least-squares ``s >= 0`` of ``target ~ s * h``).
        x: training rows to fit the rescale on (a few thousand are enough).
        target: the raw output the barrier wants on ``x``: ``atanh(f*)``, f* = (K+ - K-) / (K+ + K-).
        dataset: supplies a tracing example.

    Raises:
        TrainingError: unknown mode, or a head that is not a Linear layer.
    """
    if mode not in HEAD_STARTS:
        raise TrainingError(f"head_start '{mode}' is unknown; use one of {list(HEAD_STARTS)}")
    if mode == "keep":
        return 1.0
    head = _head(body, _example(dataset))
    if mode == "zero":
        scale = 0.0
    else:
        body.eval()
        h = np.concatenate([body(torch.from_numpy(x[s : s + 1024]))[0].numpy() for s in range(0, len(x), 1024)])
        h64, t64 = h.astype(np.float64), np.asarray(target, dtype=np.float64)
        scale = max(float(np.sum(h64 * t64) / max(np.sum(h64 * h64), 1e-12)), 0.0)
    head.weight.mul_(scale)
    if head.bias is not None:
        head.bias.mul_(scale)
    return scale


def build_student(
    candidate: Candidate | PrunedCandidate, dataset: Dataset, teacher: nn.Module, connection_dims: Sequence[int] = ()
) -> nn.Module:
    """A fresh student for ``candidate``: built from scratch, or a pruned copy of ``teacher`` (no connections)."""
    if isinstance(candidate, PrunedCandidate):
        if connection_dims:
            raise TrainingError("a teacher-initialised member takes no connections; build the ensemble with connect='none'")
        return pruned_teacher(teacher, candidate.keep, dataset, round_to=candidate.round_to)
    return build_model(candidate.model_config(dataset, connection_dims))


def keep_for_macs(
    teacher: nn.Module, dataset: Dataset, budget: int, *, round_to: int | None = None, steps: int = 8
) -> PrunedCandidate:
    """The keep whose pruned teacher's one-input MACs are closest to ``budget`` (bisection; cost grows with keep).

    ``round_to`` as for :func:`pruned_teacher` (the candidate returned carries it).

    Raises:
        TrainingError: ``budget < 1`` or a teacher Torch-Pruning cannot prune.
    """
    if budget < 1:
        raise TrainingError(f"a MACs budget must be >= 1, not {budget}")
    costs: dict[float, int] = {}

    def cost(keep: float) -> int:
        if keep not in costs:
            costs[keep] = count_macs(pruned_teacher(teacher, keep, dataset, round_to=round_to), dataset.input_shape)
        return costs[keep]

    low, high = 1.0 / 64, 1.0
    if cost(high) <= budget:
        return PrunedCandidate(1.0, round_to)
    for _ in range(steps):
        mid = round(0.5 * (low + high), 4)
        if cost(mid) <= budget:
            low = mid
        else:
            high = mid
    return PrunedCandidate(min((low, high), key=lambda k: abs(cost(k) - budget)), round_to)
