"""Distillation objectives shared by every student (PAPERS.md §3 and §4).

Each loss is called as ``loss(student_logits, teacher_logits, targets) -> scalar`` and chosen by name
through :data:`LOSSES` (``make_loss("kd", alpha=0.8, temperature=10)``):

* ``ce`` — hard-label cross-entropy; ignores the teacher.
* ``kd`` — Hinton et al.: ``alpha * T² * KL(softmax(z_t/T) || softmax(z_s/T)) + (1 - alpha) * CE(z_s, y)``,
  KL averaged over the batch ("batchmean"); the T² keeps gradient scale independent of T.
  DSD² uses alpha = 0.8, T = 10.
* ``logit_l2`` — logit regression: ``1/(2N) Σ_i ||z_s,i - z_t,i||²``.
* ``noisy_logit_l2`` — Sau & Balasubramanian's noisy teacher: each sample is picked with probability
  ``alpha`` (per-sample Bernoulli); a picked sample's teacher logits become ``z ⊙ (1 + ξ)``,
  ``ξ ~ N(0, sigma²)`` element-wise; then logit regression. The paper's σ and α are not confirmed
  (PAPERS.md); benchmarks/noisy_teacher.py sweeps them.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
import torch.nn.functional as F

from distill.errors import TrainingError

__all__ = [
    "CrossEntropy",
    "DistillationLoss",
    "HintonKD",
    "LOSSES",
    "LogitRegression",
    "NoisyLogitRegression",
    "make_loss",
]


class DistillationLoss(abc.ABC):
    """A training objective for a student, given the teacher's logits and the hard labels."""

    uses_teacher: bool = True

    @abc.abstractmethod
    def __call__(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Scalar loss for one batch."""


@dataclass(frozen=True)
class CrossEntropy(DistillationLoss):
    """Hard-label cross-entropy (the no-teacher baseline)."""

    uses_teacher = False

    def __call__(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(student_logits, targets)


@dataclass(frozen=True)
class HintonKD(DistillationLoss):
    """Soft-target KL at temperature T (scaled by T²) mixed with hard-label cross-entropy."""

    alpha: float = 0.9  # weight of the soft (teacher) term; 0 = plain cross-entropy
    temperature: float = 4.0  # softens both distributions

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0 or self.temperature <= 0:
            raise TrainingError("kd needs 0 <= alpha <= 1 and temperature > 0")

    def __call__(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        hard = F.cross_entropy(student_logits, targets)
        if self.alpha == 0.0:
            return hard
        soft = F.kl_div(
            F.log_softmax(student_logits / t, dim=1),
            F.log_softmax(teacher_logits / t, dim=1),
            reduction="batchmean",
            log_target=True,
        )
        return self.alpha * t * t * soft + (1.0 - self.alpha) * hard


@dataclass(frozen=True)
class LogitRegression(DistillationLoss):
    """L2 regression of the teacher's logits: 1/(2N) Σ ||z_s - z_t||²."""

    def __call__(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return 0.5 * (student_logits - teacher_logits).pow(2).sum(dim=1).mean()


@dataclass(frozen=True)
class NoisyLogitRegression(DistillationLoss):
    """Logit regression against a teacher whose logits are perturbed for a random share of samples."""

    sigma: float = 0.5  # std of the multiplicative noise ξ
    alpha: float = 0.5  # probability that a sample's teacher logits are perturbed
    generator: torch.Generator | None = None  # seeds the noise; None uses torch's global RNG

    def __post_init__(self) -> None:
        if self.sigma < 0 or not 0.0 <= self.alpha <= 1.0:
            raise TrainingError("noisy_logit_l2 needs sigma >= 0 and 0 <= alpha <= 1")

    def perturb(self, teacher_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The noisy targets and the boolean mask of perturbed samples."""
        n = teacher_logits.shape[0]
        picked = torch.rand(n, generator=self.generator, device=teacher_logits.device) < self.alpha
        xi = torch.randn(teacher_logits.shape, generator=self.generator, device=teacher_logits.device) * self.sigma
        noisy = torch.where(picked[:, None], teacher_logits * (1.0 + xi), teacher_logits)
        return noisy, picked

    def __call__(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        noisy, _ = self.perturb(teacher_logits)
        return 0.5 * (student_logits - noisy).pow(2).sum(dim=1).mean()


LOSSES: Mapping[str, Callable[..., DistillationLoss]] = {
    "ce": CrossEntropy,
    "kd": HintonKD,
    "logit_l2": LogitRegression,
    "noisy_logit_l2": NoisyLogitRegression,
}


def make_loss(name: str, **params: object) -> DistillationLoss:
    """The loss registered under ``name``, configured with ``params``.

    Raises:
        TrainingError: unknown name or parameters.
    """
    if name not in LOSSES:
        raise TrainingError(f"loss '{name}' is unknown; choose one of {sorted(LOSSES)}")
    try:
        return LOSSES[name](**params)
    except TypeError as exc:
        raise TrainingError(f"loss '{name}' does not take {sorted(params)} ({exc})") from exc
