"""The two baselines B-DISTIL is measured against (Dennis et al., NeurIPS 2023, §5).

* RESCHED: students of the same sizes as the ensemble's members, each distilled from the teacher on
  its own (no boosting, no connections), combined by the running *mean* of their logits (exported with
  ``combine="mean"``). The paper weights the average; a uniform mean is used here.
* NO-RESCHED: for every prefix length t, one student of the same family whose cost (multiply-
  accumulates) is closest to the cumulative cost of members 1..t, distilled on its own. It is an oracle:
  it needs knowing the budget before inference, so it cannot stop early, but it bounds what t members'
  worth of compute can reach.

Both distil with an ordinary loss from :mod:`distill.losses` (default: Hinton KD). Given
:class:`~distill.progressive.inherit.PrunedCandidate` sizes (an ensemble built with ``init="teacher"``), their
students are pruned copies of the teacher too, so the comparison keeps architecture and initialisation equal;
NO-RESCHED's pruned students are sized by :func:`~distill.progressive.inherit.keep_for_macs`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from distill.data import Dataset
from distill.errors import TrainingError
from distill.losses import DistillationLoss, make_loss
from distill.models import build_model
from distill.progressive.inherit import PrunedCandidate, build_student, keep_for_macs
from distill.progressive.members import Candidate, Ensemble, EnsembleReport, MemberReport, combined_logits, count_macs
from distill.train import FitConfig, distil, predict_logits, scaled_epochs

__all__ = ["BaselineConfig", "no_resched_students", "resched_ensemble", "width_for_macs"]

_MAX_WIDTH = 512


@dataclass(frozen=True)
class BaselineConfig:
    """How the baseline students are distilled."""

    loss: str = "kd"  # a name in distill.losses.LOSSES
    loss_params: tuple[tuple[str, Any], ...] = (("alpha", 0.9), ("temperature", 4.0))  # its parameters
    epochs: int = 0  # per student; 0 = scaled to the data (distill.train.scaled_epochs)
    lr: float = 3e-3
    batch_size: int = 128
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "loss_params", tuple((str(k), v) for k, v in self.loss_params))
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise TrainingError("baseline epochs must be >= 0 (0 = scaled to the data), batch_size >= 1 and lr > 0")
        self.make_loss()  # raises TrainingError naming the fix for an unknown loss or parameter

    def make_loss(self) -> DistillationLoss:
        return make_loss(self.loss, **dict(self.loss_params))

    def fit_config(self, k: int, desc: str, n_train: int = 0) -> FitConfig:
        return FitConfig(
            epochs=self.epochs or scaled_epochs(n_train),
            lr=self.lr,
            batch_size=self.batch_size,
            seed=self.seed + k,
            progress=self.progress,
            desc=desc,
        )


def _train_student(
    candidate: Candidate | PrunedCandidate,
    dataset: Dataset,
    teacher: nn.Module,
    teacher_logits: np.ndarray,
    cfg: BaselineConfig,
    k: int,
    desc: str,
) -> tuple[nn.Module, float]:
    torch.manual_seed(cfg.seed * 7919 + 1000 + k)  # independent initialisations: these are separate runs
    student = build_student(candidate, dataset, teacher)
    started = time.perf_counter()
    distil(
        student, dataset.x_train, dataset.y_train, teacher_logits, cfg.make_loss(), cfg.fit_config(k, desc, len(dataset.x_train))
    )
    return student, round(time.perf_counter() - started, 2)


def resched_ensemble(
    teacher: nn.Module, dataset: Dataset, candidates: Sequence[Candidate | PrunedCandidate], cfg: BaselineConfig | None = None
) -> Ensemble:
    """RESCHED: ``len(candidates)`` independently distilled students, combined by the mean of their logits.

    Args:
        teacher: the frozen teacher.
        dataset: training data; validation scores the report.
        candidates: one architecture per member, in evaluation order (B-DISTIL's chosen sizes; pruned
            candidates are copies of ``teacher``).
        cfg: loss and schedule; None = defaults.

    Returns:
        ``Ensemble(members, connections=[()...], report)`` with ``report.combine == "mean"``.
    """
    cfg = cfg or BaselineConfig()
    if len(candidates) == 0:
        raise TrainingError("RESCHED needs at least one member size")
    g_train = predict_logits(teacher, dataset.x_train)
    teacher_val = predict_logits(teacher, dataset.x_val).argmax(1)
    members: list[nn.Module] = []
    own_val: list[np.ndarray] = []
    reports: list[MemberReport] = []
    for k, candidate in enumerate(candidates):
        student, seconds = _train_student(
            candidate, dataset, teacher, g_train, cfg, k, f"resched member {k + 1} ({candidate.describe()})"
        )
        members.append(student)
        own_val.append(predict_logits(student, dataset.x_val))
        running = combined_logits(own_val, "mean")[-1].argmax(1)
        reports.append(
            MemberReport(
                member=k + 1,
                candidate=candidate,
                connections=(),
                params=sum(p.numel() for p in student.parameters()),
                macs=count_macs(student, dataset.input_shape),
                val_accuracy=float((running == dataset.y_val).mean()),
                val_agreement=float((running == teacher_val).mean()),
                seconds=seconds,
            )
        )
    report = EnsembleReport(
        method="resched",
        combine="mean",
        members=tuple(reports),
        teacher_val_accuracy=float((teacher_val == dataset.y_val).mean()),
        settings={**asdict(cfg), "loss_params": dict(cfg.loss_params)},
    )
    return Ensemble(members, [() for _ in members], report)


def width_for_macs(template: Candidate, dataset: Dataset, budget: int) -> Candidate:
    """The width of ``template`` whose one-input cost is closest to ``budget`` MACs (bisection: cost grows with width)."""
    if budget < 1:
        raise TrainingError(f"a MACs budget must be >= 1, not {budget}")

    def cost(width: int) -> int:
        return count_macs(build_model(template.with_width(width).model_config(dataset)), dataset.input_shape)

    low, high = 1, _MAX_WIDTH
    while high - low > 1:
        mid = (low + high) // 2
        if cost(mid) <= budget:
            low = mid
        else:
            high = mid
    best = min((low, high), key=lambda w: abs(cost(w) - budget))
    return template.with_width(best)


def no_resched_students(
    teacher: nn.Module,
    dataset: Dataset,
    budgets: Sequence[int],
    template: Candidate | PrunedCandidate,
    cfg: BaselineConfig | None = None,
) -> tuple[list[nn.Module], EnsembleReport]:
    """NO-RESCHED: for each budget (cumulative MACs of prefix t), one student of that cost, distilled alone.

    Args:
        teacher: the frozen teacher.
        dataset: training data; validation scores the report.
        budgets: MACs per prefix length, e.g. the running sum of the ensemble members' MACs.
        template: the family, depth and width/hidden ratio to scale; a :class:`PrunedCandidate` = pruned
            copies of ``teacher``, the keep of each chosen by MACs (:func:`keep_for_macs`).
        cfg: loss and schedule; None = defaults.

    Returns:
        (one student per budget, the report; ``report.combine == "single"``).
    """
    cfg = cfg or BaselineConfig()
    if len(budgets) == 0:
        raise TrainingError("NO-RESCHED needs at least one budget")
    g_train = predict_logits(teacher, dataset.x_train)
    teacher_val = predict_logits(teacher, dataset.x_val).argmax(1)
    students: list[nn.Module] = []
    reports: list[MemberReport] = []
    for t, budget in enumerate(budgets):
        candidate = (
            keep_for_macs(teacher, dataset, int(budget), round_to=template.round_to)
            if isinstance(template, PrunedCandidate)
            else width_for_macs(template, dataset, int(budget))
        )
        student, seconds = _train_student(
            candidate, dataset, teacher, g_train, cfg, t, f"no-resched t={t + 1} ({candidate.describe()})"
        )
        students.append(student)
        pred = predict_logits(student, dataset.x_val).argmax(1)
        reports.append(
            MemberReport(
                member=t + 1,
                candidate=candidate,
                connections=(),
                params=sum(p.numel() for p in student.parameters()),
                macs=count_macs(student, dataset.input_shape),
                val_accuracy=float((pred == dataset.y_val).mean()),
                val_agreement=float((pred == teacher_val).mean()),
                seconds=seconds,
            )
        )
    report = EnsembleReport(
        method="no_resched",
        combine="single",
        members=tuple(reports),
        teacher_val_accuracy=float((teacher_val == dataset.y_val).mean()),
        settings={**asdict(cfg), "loss_params": dict(cfg.loss_params), "budgets_macs": [int(b) for b in budgets]},
    )
    return students, report
