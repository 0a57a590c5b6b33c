"""Ensemble members, the candidate students they are built from, and how a chain of them is evaluated.

A member obeys the toolkit's model contract ``forward(x, *connections) -> (logits, features)``;
``connections`` are the ``features`` of earlier members (B-DISTIL's intermediate connections). The
exporter adds ``prev_logits`` inside each member's graph, so what a member returns must already be its
share of the combined logits: a :class:`BoostedMember` returns ``eta * tanh(h)`` with its step size
``eta`` stored as a buffer, and the sum of members 1..t is ``F_t``.

Candidates are the students a round may try, per input rank (MLP for features, 1-D CNN for signals,
2-D CNN for images), ordered by their cost (multiply-accumulates of one input).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Sequence, cast

import numpy as np
import torch
from torch import nn

from distill.data import Dataset
from distill.errors import TrainingError
from distill.models import FAMILIES, ModelConfig, build_model, family_for

if TYPE_CHECKING:
    from distill.progressive.inherit import PrunedCandidate

__all__ = [
    "BoostedMember",
    "Candidate",
    "Ensemble",
    "EnsembleReport",
    "MemberReport",
    "chain_outputs",
    "combined_logits",
    "count_macs",
    "default_candidates",
    "prefix_accuracies",
]


@dataclass(frozen=True)
class Candidate:
    """A student architecture a round may try; the data set fills in input shape and classes."""

    family: str  # "mlp", "cnn1d" or "cnn2d" (see distill.models)
    width: int  # hidden units (MLP) or first conv channels (CNNs): the cost knob
    depth: int = 2  # hidden layers (MLP) or conv blocks (CNNs)
    hidden: int = 0  # CNN penultimate units; 0 = 4 * width

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise TrainingError(f"candidate family '{self.family}' is unknown; use one of {list(FAMILIES)}")
        if self.width < 1 or self.depth < 1 or self.hidden < 0:
            raise TrainingError("a candidate needs width >= 1, depth >= 1 and hidden >= 0")

    def model_config(self, dataset: Dataset, connection_dims: Sequence[int] = ()) -> ModelConfig:
        """The :class:`ModelConfig` of this candidate for ``dataset``, taking ``connection_dims`` features."""
        return ModelConfig.for_data(
            dataset,
            family=self.family,
            width=self.width,
            depth=self.depth,
            hidden=self.hidden,
            connection_dims=tuple(connection_dims),
        )

    def with_width(self, width: int) -> "Candidate":
        return Candidate(self.family, width, self.depth, self.hidden and max(1, round(self.hidden * width / self.width)))

    def describe(self) -> str:
        return f"{self.family} w{self.width} d{self.depth}" + (f" h{self.hidden}" if self.hidden else "")

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "width": self.width, "depth": self.depth, "hidden": self.hidden}


def default_candidates(dataset: Dataset) -> tuple[Candidate, ...]:
    """Students for ``dataset``'s input rank, cheapest first (a round escalates through them in order).

    The sizes keep each one well under a quarter of the default teacher's cost for that data
    (:func:`distill.teacher.default_teacher_config`), which is what makes an anytime ensemble worth it.
    """
    family = family_for(dataset.input_shape)
    if family == "cnn2d":
        ladder = [Candidate("cnn2d", w, 2, h) for w, h in ((4, 32), (6, 48), (8, 64), (12, 96))]
        if min(dataset.input_shape[1:]) >= 24:
            # MNIST-sized images: four w4 members plateau at ~98.0% (teacher 99.2%); w6 costs 1/21 of the
            # default teacher's MACs and stays near a quarter of its ORT latency, where the per-call floor dominates.
            ladder = ladder[1:]
    elif family == "cnn1d":
        ladder = [Candidate("cnn1d", w, 3, h) for w, h in ((8, 32), (12, 48), (16, 64), (24, 96))]
    else:
        ladder = [Candidate("mlp", w, 2) for w in (16, 32, 64, 128)]
    return tuple(sorted(ladder, key=lambda c: count_macs(build_model(c.model_config(dataset)), dataset.input_shape)))


class BoostedMember(nn.Module):
    """A classifier whose logits are bounded and scaled: ``forward`` returns ``(scale * tanh(h), features)``.

    ``scale`` is the round's step size ``eta`` (a buffer, so it travels with the state dict and into
    the exported graph); :meth:`raw` gives ``h`` for the log-barrier loss.
    """

    def __init__(self, body: nn.Module, scale: float = 1.0) -> None:
        super().__init__()
        self.body = body
        self.register_buffer("scale", torch.tensor(float(scale)))

    @property
    def config(self) -> ModelConfig | None:
        """The body's :class:`ModelConfig`; None for a pruned teacher copy (``init="teacher"``)."""
        return getattr(self.body, "config", None)

    @property
    def feature_dim(self) -> int:
        return int(self.body.feature_dim)

    def set_scale(self, scale: float) -> None:
        if not (math.isfinite(scale) and scale >= 0):
            raise TrainingError(f"a member's scale must be a finite number >= 0, not {scale}")
        self.scale.fill_(float(scale))

    def raw(self, x: torch.Tensor, *connections: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(h, features)``: the unbounded logits and the penultimate features."""
        return self.body(x, *connections)

    def forward(self, x: torch.Tensor, *connections: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, features = self.body(x, *connections)
        return self.scale * torch.tanh(h), features


@dataclass(frozen=True)
class MemberReport:
    """How one member (or one NO-RESCHED student) was built and how its prefix scored on validation data."""

    member: int  # 1-based position (for NO-RESCHED: the prefix length it stands in for)
    candidate: "Candidate | PrunedCandidate"  # the architecture chosen (PrunedCandidate: the teacher pruned to a keep ratio)
    connections: tuple[int, ...]  # 0-based earlier members whose features it takes
    params: int
    macs: int  # multiply-accumulates of one input (the cost that orders candidates)
    val_accuracy: float  # accuracy of the prefix ending here (fraction)
    val_agreement: float  # share of validation samples where the prefix agrees with the teacher
    seconds: float  # training wall time, every attempt included
    temperature: float | None = None  # B-DISTIL: the round's residual temperature tau
    step: float | None = None  # B-DISTIL: the member's scale eta
    residual_rms: float | None = None  # B-DISTIL: RMS of g - F on training data after this member
    attempts: tuple[dict[str, Any], ...] = ()  # B-DISTIL: every candidate tried, its edge, accepted or not
    latency_ms: float | None = None  # the candidate's batch-1 ORT p50 measured when sizing (None: not timed)
    head_scale: float | None = None  # teacher-initialised member t > 1: the factor its classifier head started at

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["candidate"] = self.candidate.to_dict()
        d["connections"] = list(self.connections)
        d["attempts"] = [dict(a) for a in self.attempts]
        return d


@dataclass(frozen=True)
class EnsembleReport:
    """What a method built: per-member reports plus how the members combine."""

    method: str  # "bdistil", "resched" or "no_resched"
    combine: str  # "sum" or "mean" (NO-RESCHED: "single", each student stands alone)
    members: tuple[MemberReport, ...]
    teacher_val_accuracy: float
    stopped: str = ""  # why B-DISTIL stopped before the requested number of members ("" = it did not)
    stopped_attempts: tuple[dict[str, Any], ...] = ()  # the rejected attempts of the round that stopped it
    settings: dict[str, Any] = field(default_factory=dict)  # the configuration used, for provenance

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "combine": self.combine,
            "teacher_val_accuracy": self.teacher_val_accuracy,
            "stopped": self.stopped,
            "stopped_attempts": [dict(a) for a in self.stopped_attempts],
            "settings": dict(self.settings),
            "members": [m.to_dict() for m in self.members],
        }


class Ensemble(NamedTuple):
    """Members in evaluation order, each one's connection sources, and the build report."""

    members: list[nn.Module]
    connections: list[tuple[int, ...]]
    report: EnsembleReport


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: Sequence[int], connection_dims: Sequence[int] = ()) -> int:
    """Multiply-accumulates of Conv and Linear layers for one input (a cost proxy; latency is measured)."""
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Linear):
            total += module.in_features * module.out_features
        else:
            conv = cast("nn.Conv1d | nn.Conv2d", module)  # every output element costs (in/groups) * kernel MACs
            kernel = int(np.prod(conv.kernel_size))
            total += int(output[0].numel()) * (conv.in_channels // conv.groups) * kernel

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    try:
        was_training = model.training
        model.eval()
        model(torch.zeros(1, *input_shape), *[torch.zeros(1, d) for d in connection_dims])
        model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    return total


@torch.no_grad()
def chain_outputs(
    members: Sequence[nn.Module],
    connections: Sequence[Sequence[int]],
    x: np.ndarray,
    *,
    batch_size: int = 1024,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Every member's own output and features on ``x``, each fed the features its connections name.

    Returns:
        (own logits per member, features per member): float32 arrays in member order. The combined
        logits of a prefix are the sum (or mean) of the first entries.
    """
    if len(members) != len(connections):
        raise TrainingError(f"{len(members)} members but {len(connections)} connection lists")
    own: list[list[np.ndarray]] = [[] for _ in members]
    feats: list[list[np.ndarray]] = [[] for _ in members]
    states = [m.training for m in members]
    for m in members:
        m.eval()
    try:
        for start in range(0, len(x), batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size]))
            batch_feats: list[torch.Tensor] = []
            for k, m in enumerate(members):
                logits, f = m(xb, *[batch_feats[j] for j in connections[k]])
                batch_feats.append(f)
                own[k].append(logits.numpy())
                feats[k].append(f.numpy())
    finally:
        for m, s in zip(members, states):
            m.train(s)
    return [np.concatenate(o) for o in own], [np.concatenate(f) for f in feats]


def combined_logits(own: Sequence[np.ndarray], combine: str) -> list[np.ndarray]:
    """The logits of every prefix: running sum (``F_t``) or running mean of the members' outputs."""
    if combine not in ("sum", "mean"):
        raise TrainingError(f"combine '{combine}' is unknown; use 'sum' or 'mean'")
    running = np.cumsum(np.stack(own), axis=0)
    if combine == "mean":
        running = running / np.arange(1, len(own) + 1, dtype=np.float32)[:, None, None]
    return list(running)


def prefix_accuracies(ensemble: Ensemble, x: np.ndarray, y: np.ndarray) -> list[float]:
    """Accuracy (fraction) of every prefix 1..K of ``ensemble`` on ``x``, ``y``."""
    own, _ = chain_outputs(ensemble.members, ensemble.connections, x)
    return [float((logits.argmax(1) == y).mean()) for logits in combined_logits(own, ensemble.report.combine)]
