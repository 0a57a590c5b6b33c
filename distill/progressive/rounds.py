"""The maths of one B-DISTIL boosting round (Dennis et al., NeurIPS 2023; docs/methods.md §1).

docs/methods.md §1 marks this reconstruction unverified; these are the exact formulas implemented here.
For the round that builds member ``t``, with teacher logits ``g`` and the running ensemble ``F_{t-1}``
(``F_0 = 0``) on training sample ``i`` and class ``j``:

* residual: ``r(i,j) = g_j(x_i) - F_{t-1,j}(x_i)``;
* residual temperature: ``tau = sqrt(mean_ij r(i,j)^2)`` (the residual's RMS) unless fixed by the
  caller. ``tau = 1`` is the literal formula; with MNIST teacher logits of magnitude ~10 it puts nearly all
  weight on a handful of entries (``exp(15) / exp(5)`` ~ 2e4), which SGD cannot train on. Dividing by the
  RMS keeps every round's problem at unit scale as the residual shrinks;
* weights: ``K+(i,j) = exp(+r/tau) / Z+`` and ``K-(i,j) = exp(-r/tau) / Z-``, each normalised so it
  sums to 1 over all ``(i, j)`` (computed in float64 with the log-sum-exp shift);
* the student's raw output ``h`` is bounded by ``f = tanh(h)``, so ``|f| < 1``;
* log-barrier objective (minimised over the student):
  ``L(f) = -sum_ij [ K+(i,j) log(1 + f_ij) + K-(i,j) log(1 - f_ij) ]``, evaluated through
  ``log(1 ± tanh h) = log 2 - softplus(∓2h)`` so it stays finite in float32. Its minimiser per entry is
  ``f* = (K+ - K-) / (K+ + K-) = tanh(r/tau - c)``, ``c = ½ log(Z+/Z-)``: strictly inside (-1, 1), so the
  barrier itself keeps the student away from the bound;
* weak-learning check (the edge), on held-out data with the weights of that data's residual:
  ``edge = sum_ij (K+ - K-)(i,j) f_ij >= gamma``; a learner that ignores its input scores ~0 and fails;
* step size (the member's scale ``eta``): a line search on the residual under the same exponential
  potential the weights come from, ``eta = argmin_{eta >= 0} sum_ij cosh((r_ij - eta f_ij) / tau)``
  (convex in ``eta``; solved by bisection on its derivative). The member then outputs ``eta * tanh(h)``
  and ``F_t = F_{t-1} + eta_t f_t``;
* or (``ProgressiveConfig.step = "kl"``, not in the paper) the step that best matches the teacher's
  *distribution*: ``eta = argmin_{eta >= 0} sum_i KL(softmax(g_i) || softmax(F_{t-1,i} + eta f_i))``
  (:func:`kl_step`; convex in ``eta``, bisection on its derivative). The cosh potential is dominated by the
  largest residual entries, the confident samples' extreme logits, so its step can make ``F_t`` agree less
  with the teacher on the uncertain samples that decide the argmax; this one cannot raise the mean KL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from distill.errors import TrainingError
from distill.losses import DistillationLoss, HintonKD

__all__ = [
    "BarrierLoss",
    "BoostedKD",
    "barrier_objective",
    "boosting_weights",
    "kl_step",
    "line_search_step",
    "pack_weights",
    "residual_temperature",
    "weak_learning_edge",
]

_LOG2 = math.log(2.0)


def residual_temperature(residual: np.ndarray) -> float:
    """The residual's RMS, the default ``tau`` of a round (see the module docstring).

    Raises:
        TrainingError: the residual is empty or not finite.
    """
    r = np.asarray(residual, dtype=np.float64)
    if r.size == 0 or not np.all(np.isfinite(r)):
        raise TrainingError("the residual is empty or holds NaN/inf; check the teacher's logits")
    # A residual of exact zeros (a student equal to its teacher) still needs a positive scale.
    return max(float(np.sqrt(np.mean(r * r))), 1e-6)


def boosting_weights(residual: np.ndarray, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """``(K+, K-)``: ``exp(±r/tau)``, each normalised to sum to 1 over every sample and class.

    Args:
        residual: ``g - F_{t-1}``, shape (N, C).
        temperature: ``tau`` > 0.

    Returns:
        Two float64 arrays of the residual's shape.

    Raises:
        TrainingError: a non-positive temperature or a bad residual.
    """
    if not (math.isfinite(temperature) and temperature > 0):
        raise TrainingError(f"the residual temperature must be a finite number > 0, not {temperature}")
    r = np.asarray(residual, dtype=np.float64)
    if r.ndim != 2 or r.size == 0 or not np.all(np.isfinite(r)):
        raise TrainingError("the residual must be a finite (samples, classes) array")
    z = r / temperature
    plus = np.exp(z - z.max())
    minus = np.exp(-z - (-z).max())
    return plus / plus.sum(), minus / minus.sum()


def pack_weights(k_plus: np.ndarray, k_minus: np.ndarray) -> np.ndarray:
    """``[N·K+ | N·K-]`` as one float32 (N, 2C) array, the per-sample targets :class:`BarrierLoss` reads.

    The factor N makes a minibatch mean an unbiased estimate of the full-data objective at unit scale.
    """
    n = k_plus.shape[0]
    return np.concatenate([k_plus * n, k_minus * n], axis=1).astype(np.float32)


def _log1p_tanh(h: torch.Tensor, sign: float) -> torch.Tensor:
    """``log(1 + sign * tanh(h))`` without forming tanh (exact, finite for every finite h)."""
    return _LOG2 - F.softplus(-2.0 * sign * h)


def barrier_objective(raw: torch.Tensor, k_plus: torch.Tensor, k_minus: torch.Tensor) -> torch.Tensor:
    """``-sum [K+ log(1 + tanh h) + K- log(1 - tanh h)]`` for raw outputs ``h`` (any matching shapes)."""
    return -(k_plus * _log1p_tanh(raw, 1.0) + k_minus * _log1p_tanh(raw, -1.0)).sum()


@dataclass(frozen=True)
class BarrierLoss(DistillationLoss):
    """The log-barrier objective as a training loss for :func:`distill.train.fit`.

    Called as ``loss(raw, packed, targets)``: ``raw`` is the member's pre-tanh output (N, C), ``packed``
    the rows of :func:`pack_weights` for the batch (N, 2C); the labels are ignored.
    """

    name: ClassVar[str] = "bdistil_barrier"

    def __call__(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        n, c = student_logits.shape
        if teacher_logits.shape != (n, 2 * c):
            raise TrainingError(
                f"the barrier loss needs packed weights of shape {(n, 2 * c)}, got {tuple(teacher_logits.shape)}; "
                "build them with pack_weights"
            )
        return barrier_objective(student_logits, teacher_logits[:, :c], teacher_logits[:, c:]) / n


@dataclass(frozen=True)
class BoostedKD(DistillationLoss):
    """Hinton KD of the running ensemble *with* the member against the teacher (not in the paper).

    Called as ``loss(m, packed, labels)``: ``m`` is the member's scaled output ``eta tanh(h)`` (N, C),
    ``packed`` the rows of ``[g | F_{t-1}]`` (teacher logits, then the ensemble's so far; N, 2C). The loss is
    ``kd(F_{t-1} + m, g, labels)``, so the member is trained for what the prefix answers, with the loss
    and labels that RESCHED and NO-RESCHED students get (:class:`distill.losses.HintonKD`).
    """

    name: ClassVar[str] = "bdistil_boosted_kd"
    kd: HintonKD = HintonKD()

    def __call__(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        n, c = student_logits.shape
        if teacher_logits.shape != (n, 2 * c):
            raise TrainingError(
                f"boosted KD needs packed [teacher | ensemble] logits of shape {(n, 2 * c)}, got {tuple(teacher_logits.shape)}"
            )
        return self.kd(teacher_logits[:, c:] + student_logits, teacher_logits[:, :c], targets)


def weak_learning_edge(k_plus: np.ndarray, k_minus: np.ndarray, f: np.ndarray) -> float:
    """``sum_ij (K+ - K-)(i,j) f_ij``: how well bounded outputs ``f`` align with the residual's sign."""
    if not (k_plus.shape == k_minus.shape == np.shape(f)):
        raise TrainingError(f"weights {k_plus.shape} and outputs {np.shape(f)} must have one shape")
    return float(np.sum((k_plus - k_minus) * np.asarray(f, dtype=np.float64)))


def line_search_step(residual: np.ndarray, f: np.ndarray, temperature: float, *, max_step: float = 1e4) -> float:
    """``argmin_{eta >= 0} sum cosh((r - eta f) / tau)``; 0 when ``f`` does not descend.

    Args:
        residual: ``g - F_{t-1}`` on the training data, (N, C).
        f: the new member's bounded outputs ``tanh(h)`` on the same data.
        temperature: the round's ``tau``.
        max_step: an upper bound for the bisection.

    Returns:
        The step ``eta`` (the member's scale).
    """
    r = np.asarray(residual, dtype=np.float64) / temperature
    g = np.asarray(f, dtype=np.float64) / temperature

    def slope(eta: float) -> float:
        # d/d(eta) of sum cosh(r - eta g), computed with a shared shift so large arguments cannot overflow.
        z = r - eta * g
        shift = np.abs(z).max()
        return float(-np.sum(g * (np.exp(z - shift) - np.exp(-z - shift)))) * 0.5

    return _descent_minimum(slope, max_step)


def _descent_minimum(slope: Callable[[float], float], max_step: float, iterations: int = 60) -> float:
    """The minimiser over ``eta >= 0`` of a convex function of ``eta`` given its increasing derivative ``slope``.

    0 when the function does not descend at 0; otherwise the root of ``slope``, bracketed by doubling up to
    ``max_step`` and found by bisection (``iterations`` halvings; 60 is far below float32 resolution).
    """
    if slope(0.0) >= 0.0:
        return 0.0
    low, high = 0.0, 1.0
    while slope(high) < 0.0 and high < max_step:
        low, high = high, high * 2.0
    for _ in range(iterations):
        mid = 0.5 * (low + high)
        if slope(mid) < 0.0:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


def kl_step(teacher_logits: np.ndarray, ensemble_logits: np.ndarray, f: np.ndarray, *, max_step: float = 1e4) -> float:
    """``argmin_{eta >= 0} sum_i KL(softmax(g_i) || softmax(F_i + eta f_i))``; 0 when ``f`` does not descend.

    Args:
        teacher_logits: ``g``, (N, C).
        ensemble_logits: ``F_{t-1}``, the running sum of the members so far (zeros for the first), (N, C).
        f: the new member's bounded outputs ``tanh(h)`` on the same data, (N, C).
        max_step: an upper bound for the bisection.

    Returns:
        The step ``eta`` (the member's scale). The objective is convex in ``eta`` (a log-sum-exp minus a
        linear term), so its derivative ``sum_ij (softmax(F + eta f) - softmax(g))_ij f_ij`` is increasing.

    Raises:
        TrainingError: the three arrays differ in shape.
    """
    g = np.asarray(teacher_logits, dtype=np.float64)
    z = np.asarray(ensemble_logits, dtype=np.float64)
    d = np.asarray(f, dtype=np.float64)
    if not (g.shape == z.shape == d.shape) or g.ndim != 2:
        raise TrainingError(f"teacher logits {g.shape}, ensemble logits {z.shape} and outputs {d.shape} must be one (N, C) shape")
    p = np.exp(g - g.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    target = float(np.sum(p * d))

    def slope(eta: float) -> float:
        u = z + eta * d
        q = np.exp(u - u.max(axis=1, keepdims=True))
        q /= q.sum(axis=1, keepdims=True)
        return float(np.sum(q * d)) - target

    return _descent_minimum(slope, max_step)
