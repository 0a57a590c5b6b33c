"""Distillation objectives shared by every student (docs/methods.md §3 and §4).

Each loss is called as ``loss(student_logits, teacher_logits, targets) -> scalar`` and chosen by name
through :data:`LOSSES` (``make_loss("kd", alpha=0.8, temperature=10)``); on the command line through
:mod:`distill.cli._loss_args` (``--loss kd --loss-param alpha=0.8 --loss-param temperature=10``).

* ``ce`` — hard-label cross-entropy; ignores the teacher.
* ``kd`` — Hinton et al.: ``alpha * T² * KL(softmax(z_t/T) || softmax(z_s/T)) + (1 - alpha) * CE(z_s, y)``,
  KL averaged over the batch ("batchmean"); the T² keeps the soft term's gradient scale independent of T.
  DSD² uses alpha = 0.8, T = 10.
* ``logit_l2`` — logit regression: ``1/(2N) Σ_i ||z_s,i - z_t,i||²``.
* ``noisy_logit_l2`` — Sau & Balasubramanian's noisy teacher (arXiv:1610.09650): each sample of a batch is
  picked with probability ``alpha`` (per-sample Bernoulli, drawn afresh at every call, so every epoch
  sees different noise); a picked sample's teacher logits become ``z ⊙ (1 + ξ)``, ``ξ ~ N(0, sigma²)``
  element-wise; then logit regression. The paper's σ and α are UNVERIFIED (docs/methods.md §3):
  benchmarks/noisy_teacher.py sweeps σ in 0.1..1.0 and α in 0.3..0.9 and reports what it measured.

Every loss is a frozen dataclass whose fields are its parameters, so ``make_loss(loss.name,
**loss.params())`` rebuilds an equal loss.
"""

from __future__ import annotations

import abc
import math
import numbers
from dataclasses import dataclass, fields
from typing import Callable, ClassVar, Mapping

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


def _check_number(loss: str, name: str, value: object, low: float, high: float = math.inf, low_open: bool = False) -> None:
    """Raise unless ``value`` is a finite real number in [low, high] (or (low, high] when ``low_open``)."""
    # bool is an int subclass: alpha=True is a typo, not 1.0.
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise TrainingError(f"{loss}: {name} must be a finite number, got {value!r}")
    if value < low or value > high or (low_open and value == low):
        bounds = f"{'>' if low_open else '>='} {low}" + ("" if high == math.inf else f" and <= {high}")
        raise TrainingError(f"{loss}: {name} must be {bounds}, got {value!r}")


def _check_logits(loss: str, student: torch.Tensor, teacher: torch.Tensor | None, targets: torch.Tensor | None) -> None:
    """Catch shape mistakes that broadcasting would otherwise turn into a silently wrong loss."""
    if student.dim() != 2:
        raise TrainingError(f"{loss}: student logits must be (N, C), got shape {tuple(student.shape)}")
    if teacher is not None and teacher.shape != student.shape:
        raise TrainingError(
            f"{loss}: teacher logits {tuple(teacher.shape)} do not match student logits {tuple(student.shape)}; "
            "pass the teacher's logits for the same batch"
        )
    if targets is not None and targets.shape != student.shape[:1]:
        raise TrainingError(f"{loss}: targets must be (N,) class ids for {student.shape[0]} samples, got {tuple(targets.shape)}")


class DistillationLoss(abc.ABC):
    """A training objective for a student, given the teacher's logits and the hard labels.

    Subclasses are frozen dataclasses whose fields are the loss's parameters, and set ``name`` (the key
    in :data:`LOSSES`) and ``uses_teacher`` (False when the teacher's logits are ignored).
    """

    name: ClassVar[str]
    uses_teacher: ClassVar[bool] = True

    @abc.abstractmethod
    def __call__(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Scalar loss for one batch.

        Args:
            student_logits: (N, C) logits of the model being trained.
            teacher_logits: (N, C) logits of the frozen teacher on the same batch (ignored by ``ce``).
            targets: (N,) int64 class ids (ignored by the pure regression losses).

        Returns:
            A scalar tensor that is differentiable with respect to ``student_logits``.

        Raises:
            TrainingError: the shapes do not fit together.
        """

    def params(self) -> dict[str, object]:
        """The loss's parameters by name: ``make_loss(self.name, **self.params()) == self``."""
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]  # subclasses are dataclasses


@dataclass(frozen=True)
class CrossEntropy(DistillationLoss):
    """Hard-label cross-entropy (the no-teacher baseline)."""

    name: ClassVar[str] = "ce"
    uses_teacher: ClassVar[bool] = False

    def __call__(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        _check_logits(self.name, student_logits, None, targets)
        return F.cross_entropy(student_logits, targets)


@dataclass(frozen=True)
class HintonKD(DistillationLoss):
    """Soft-target KL at temperature T (scaled by T²) mixed with hard-label cross-entropy."""

    name: ClassVar[str] = "kd"

    alpha: float = 0.9  # weight of the soft (teacher) term; 0 = plain cross-entropy, 1 = teacher only
    temperature: float = 4.0  # softens both distributions; > 1 exposes the teacher's "dark knowledge"

    def __post_init__(self) -> None:
        _check_number(self.name, "alpha", self.alpha, 0.0, 1.0)
        _check_number(self.name, "temperature", self.temperature, 0.0, low_open=True)

    def __call__(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        _check_logits(self.name, student_logits, teacher_logits, targets)
        t = self.temperature
        if self.alpha == 0.0:  # skip the soft term's work: it has zero weight
            return F.cross_entropy(student_logits, targets)
        # batchmean = the true KL per sample; "mean" would also divide by C and shrink the term.
        soft = F.kl_div(
            F.log_softmax(student_logits / t, dim=1),
            F.log_softmax(teacher_logits / t, dim=1),
            reduction="batchmean",
            log_target=True,
        )
        if self.alpha == 1.0:
            return t * t * soft
        return self.alpha * t * t * soft + (1.0 - self.alpha) * F.cross_entropy(student_logits, targets)


def _half_squared_error(student_logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """1/(2N) Σ_i ||z_s,i - z_t,i||²: the sum over classes, the mean over samples (as in the paper)."""
    return 0.5 * (student_logits - target_logits).pow(2).sum(dim=1).mean()


@dataclass(frozen=True)
class LogitRegression(DistillationLoss):
    """L2 regression of the teacher's logits: 1/(2N) Σ ||z_s - z_t||²."""

    name: ClassVar[str] = "logit_l2"

    def __call__(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        _check_logits(self.name, student_logits, teacher_logits, None)
        return _half_squared_error(student_logits, teacher_logits)


@dataclass(frozen=True)
class NoisyLogitRegression(DistillationLoss):
    """Logit regression against a teacher whose logits are perturbed for a random share of samples.

    The noise is multiplicative, ``z ⊙ (1 + ξ)``, so it scales with the teacher's confidence in each
    class and a zero logit stays zero. The Bernoulli picks and ξ are drawn from ``generator``, else from a
    private generator seeded with ``seed``, else from torch's global RNG.
    """

    name: ClassVar[str] = "noisy_logit_l2"

    sigma: float = 0.5  # std of the multiplicative noise ξ; 0 = plain logit regression
    alpha: float = 0.5  # probability that a sample's teacher logits are perturbed; 0 = plain logit regression
    generator: torch.Generator | None = None  # a shared noise source (Python API); compared by identity
    seed: int | None = None  # seeds a private noise generator (reproducible runs from the command line)

    def __post_init__(self) -> None:
        _check_number(self.name, "sigma", self.sigma, 0.0)
        _check_number(self.name, "alpha", self.alpha, 0.0, 1.0)
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral)):
            raise TrainingError(f"{self.name}: seed must be a whole number, got {self.seed!r}")
        if self.seed is not None and self.generator is not None:
            raise TrainingError(f"{self.name}: pass seed or generator, not both")
        if self.generator is not None and not isinstance(self.generator, torch.Generator):
            raise TrainingError(f"{self.name}: generator must be a torch.Generator, got {type(self.generator).__name__}")
        rng = self.generator
        if rng is None and self.seed is not None:
            rng = torch.Generator().manual_seed(int(self.seed))
        # Not a field: the RNG's state is not part of the loss's configuration (equality, params()).
        object.__setattr__(self, "_rng", rng)

    def perturb(self, teacher_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The noisy targets and the boolean mask of perturbed samples.

        Args:
            teacher_logits: (N, C) teacher logits of one batch.

        Returns:
            ``(noisy (N, C), picked (N,) bool)``; rows where ``picked`` is False are ``teacher_logits``
            unchanged.
        """
        rng: torch.Generator | None = self._rng  # type: ignore[attr-defined]  # set in __post_init__, not a field
        # Draw on the generator's device (CPU unless the caller passed another) and move: a CPU
        # generator cannot sample a CUDA tensor directly.
        device = rng.device if rng is not None else teacher_logits.device
        n = teacher_logits.shape[0]
        picked = (torch.rand(n, generator=rng, device=device) < self.alpha).to(teacher_logits.device)
        xi = torch.randn(teacher_logits.shape, generator=rng, device=device, dtype=teacher_logits.dtype)
        xi = xi.to(teacher_logits.device) * self.sigma
        noisy = torch.where(picked[:, None], teacher_logits * (1.0 + xi), teacher_logits)
        return noisy, picked

    def __call__(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        _check_logits(self.name, student_logits, teacher_logits, None)
        # The teacher is frozen: its (noisy) logits are targets, never a path for gradients.
        noisy, _ = self.perturb(teacher_logits.detach())
        return _half_squared_error(student_logits, noisy)


LOSSES: Mapping[str, Callable[..., DistillationLoss]] = {
    cls.name: cls for cls in (CrossEntropy, HintonKD, LogitRegression, NoisyLogitRegression)
}


def make_loss(name: str, **params: object) -> DistillationLoss:
    """The loss registered under ``name``, configured with ``params``.

    Args:
        name: a key of :data:`LOSSES` ("ce", "kd", "logit_l2", "noisy_logit_l2").
        **params: the loss's parameters (its dataclass fields), e.g. ``alpha=0.8, temperature=10``.

    Returns:
        The configured loss.

    Raises:
        TrainingError: unknown name, unknown parameter, or a parameter out of range.
    """
    if name not in LOSSES:
        raise TrainingError(f"loss '{name}' is unknown; choose one of {sorted(LOSSES)}")
    cls = LOSSES[name]
    accepted = sorted(f.name for f in fields(cls))  # type: ignore[arg-type]  # every loss class is a dataclass
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        takes = f"it takes {accepted}" if accepted else "it takes no parameters"
        raise TrainingError(f"loss '{name}' has no parameter {', '.join(unknown)}; {takes}")
    return cls(**params)
