"""The deep-matrix-factorisation testbed of Kwon et al. (AISTATS 2024, arXiv:2311.05061).

A deep linear network ``W_L ... W_1`` learns a rank-``r`` matrix ``M*`` (``d x d``) by full-batch gradient
descent in float64, either from all entries (factorisation) or from a random subset of them (completion).
Two networks are compared:

* the *original* network: width ``d``, every factor ``eps`` times a random orthogonal matrix;
* the *compressed* network: width ``r^ = 2r``, spectrally initialised from the top-``r^`` SVD of a
  surrogate ``M~`` (``M*`` itself for factorisation, ``(1/p) P_Omega(M*)`` for completion):
  ``W_1 = eps V^T``, every middle factor ``eps I``, ``W_L = eps U``; the outer factors ``W_1`` and ``W_L``
  take a step ``alpha`` times larger than the inner ones.

The paper proves (and the benchmark ``benchmarks/lowrank_dynamics.py`` measures) that the compressed
network's recovery error ``||W_L...W_1 - M*||_F / ||M*||_F`` stays below the original's at every iteration
while each of its steps costs far less, so it reaches a given error sooner in wall time.

Conventions follow the authors' code (checked against soominkwon/comp-deep-nets): the loss is half the
*mean* squared residual over the observed entries (which is why a step of 1 is stable and training takes
~1e5 steps at ``d = 100``), and the target's ``r`` singular values are taken at evenly spaced positions of
a Gaussian matrix's spectrum so that they differ in size. Gradients are written out by hand (no autograd):
the whole update is a handful of BLAS calls.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from distill.errors import TrainingError

__all__ = [
    "DynamicsConfig",
    "MatrixProblem",
    "Trajectory",
    "end_to_end",
    "make_problem",
    "orthogonal_init",
    "recovery_error",
    "spectral_init",
    "train_dln",
]


@dataclass(frozen=True)
class MatrixProblem:
    """A low-rank matrix to recover, and which of its entries the loss sees."""

    target: np.ndarray  # M*, float64, shape (d, d)
    rank: int  # true rank r of the target
    mask: np.ndarray | None = None  # float64 0/1 of M*'s shape: observed entries; None = all (factorisation)

    def __post_init__(self) -> None:
        if self.target.ndim != 2:
            raise TrainingError(f"the target must be a matrix, got shape {self.target.shape}")
        if not 1 <= self.rank <= min(self.target.shape):
            raise TrainingError(f"rank {self.rank} must lie in 1..{min(self.target.shape)}")
        if self.mask is not None:
            if self.mask.shape != self.target.shape:
                raise TrainingError(f"mask shape {self.mask.shape} differs from the target's {self.target.shape}")
            if not self.mask.any():
                raise TrainingError("the mask observes no entry; observe a positive fraction of the target")

    @property
    def observed_fraction(self) -> float:
        """p: the fraction of entries the loss sees (1 for factorisation)."""
        return 1.0 if self.mask is None else float(self.mask.mean())

    @property
    def surrogate(self) -> np.ndarray:
        """M~, whose top singular vectors seed the spectral init: M* or (1/p) P_Omega(M*)."""
        if self.mask is None:
            return self.target
        return self.target * self.mask / self.observed_fraction


def make_problem(d: int, rank: int, *, observed: float = 1.0, seed: int = 0) -> MatrixProblem:
    """A random ``d x d`` rank-``rank`` target, fully observed or with a random fraction ``observed`` seen.

    The singular values come from evenly spaced positions in the upper half of a Gaussian matrix's
    spectrum (the authors' construction), so the target has distinct, well separated singular values.

    Args:
        d: matrix size.
        rank: rank of the target, ``1 <= rank <= d / 2``.
        observed: fraction of entries observed; 1 means matrix factorisation, less means completion.
        seed: random seed (target and mask).

    Returns:
        The problem.

    Raises:
        TrainingError: sizes or fraction out of range.
    """
    if d < 2 or not 1 <= rank <= d // 2:
        raise TrainingError(f"need d >= 2 and 1 <= rank <= d/2, got d={d}, rank={rank}")
    if not 0.0 < observed <= 1.0:
        raise TrainingError(f"observed fraction {observed} must lie in (0, 1]")
    rng = np.random.default_rng(seed)
    u, s, vt = np.linalg.svd(rng.standard_normal((d, d)))
    idx = (np.arange(rank) * (d / (2 * rank))).astype(int)
    target = (u[:, idx] * s[idx]) @ vt[idx]
    mask = None
    if observed < 1.0:
        count = int(round(observed * d * d))
        flat = np.zeros(d * d)
        flat[rng.choice(d * d, size=count, replace=False)] = 1.0
        mask = flat.reshape(d, d)
    return MatrixProblem(target=target, rank=rank, mask=mask)


def orthogonal_init(d: int, depth: int, eps: float, seed: int = 0) -> list[np.ndarray]:
    """The original network: ``depth`` factors, each ``eps`` times a Haar-random ``d x d`` orthogonal matrix."""
    if depth < 2:
        raise TrainingError(f"depth must be >= 2, got {depth}")
    rng = np.random.default_rng(seed)
    weights = []
    for _ in range(depth):
        q, r = np.linalg.qr(rng.standard_normal((d, d)))
        weights.append(eps * q * np.sign(np.diag(r)))  # the sign fix makes Q Haar-distributed
    return weights


def spectral_init(surrogate: np.ndarray, width: int, depth: int, eps: float) -> list[np.ndarray]:
    """The compressed network: ``W_1 = eps V^T``, middle factors ``eps I``, ``W_L = eps U`` (top-``width`` SVD).

    Args:
        surrogate: M~, shape (m, n).
        width: the compressed width r^ (the paper uses 2r).
        depth: number of factors L >= 2.
        eps: init scale.

    Returns:
        Factors ``[W_1 (width x n), W_2 .. W_{L-1} (width x width), W_L (m x width)]``.
    """
    if depth < 2:
        raise TrainingError(f"depth must be >= 2, got {depth}")
    if not 1 <= width <= min(surrogate.shape):
        raise TrainingError(f"width {width} must lie in 1..{min(surrogate.shape)}")
    u, _, vt = np.linalg.svd(surrogate, full_matrices=False)
    middle = [eps * np.eye(width) for _ in range(depth - 2)]
    return [eps * vt[:width].copy(), *middle, eps * u[:, :width].copy()]


def end_to_end(weights: list[np.ndarray]) -> np.ndarray:
    """The product ``W_L ... W_1``."""
    product = weights[0]
    for w in weights[1:]:
        product = w @ product
    return product


def recovery_error(weights: list[np.ndarray], target: np.ndarray) -> float:
    """``||W_L...W_1 - M*||_F / ||M*||_F`` over all entries (observed or not)."""
    return float(np.linalg.norm(end_to_end(weights) - target) / np.linalg.norm(target))


@dataclass(frozen=True)
class DynamicsConfig:
    """Full-batch gradient descent on the deep linear network."""

    steps: int  # maximum number of GD steps
    step_size: float = 1.0  # learning rate of the inner factors
    outer_scale: float = 1.0  # alpha: W_1 and W_L step alpha times further (the paper's larger outer rate)
    log_every: int = 100  # record the error every this many steps
    stop_error: float = 0.0  # stop at the first logged error <= this (0 = run all steps)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.log_every < 1:
            raise TrainingError("steps and log_every must be >= 1")
        if not (self.step_size > 0 and self.outer_scale > 0):
            raise TrainingError("step_size and outer_scale must be > 0")
        if not self.stop_error >= 0:
            raise TrainingError("stop_error must be >= 0")


@dataclass(frozen=True)
class Trajectory:
    """What one training run logged: step, recovery error and training seconds at every log point."""

    steps: np.ndarray  # int64, logged step numbers (0 = at init)
    errors: np.ndarray  # float64, recovery error at each logged step
    seconds: np.ndarray  # float64, cumulative GD time at each logged step (error evaluation excluded)
    weights: list[np.ndarray] = field(repr=False)  # the final factors

    def first_below(self, error: float) -> int | None:
        """Index of the first log point whose error is <= ``error``, or None if it never gets there."""
        hits = np.flatnonzero(self.errors <= error)
        return int(hits[0]) if hits.size else None

    def steps_to(self, error: float) -> int | None:
        """GD steps taken to reach ``error`` (at log resolution), or None."""
        i = self.first_below(error)
        return None if i is None else int(self.steps[i])

    def seconds_to(self, error: float) -> float | None:
        """Training seconds taken to reach ``error`` (at log resolution), or None."""
        i = self.first_below(error)
        return None if i is None else float(self.seconds[i])


def _gradients(weights: list[np.ndarray], residual: np.ndarray) -> list[np.ndarray]:
    """dLoss/dW_i = (W_L..W_{i+1})^T R (W_{i-1}..W_1)^T, from prefix and suffix products."""
    depth = len(weights)
    below: list[np.ndarray | None] = [None] * depth  # W_{i-1}..W_1 (None = identity)
    for i in range(1, depth):
        below[i] = weights[i - 1] if below[i - 1] is None else weights[i - 1] @ below[i - 1]
    grads: list[np.ndarray] = [residual] * depth
    left = residual  # (W_L..W_{i+1})^T R, built from the top down
    for i in range(depth - 1, -1, -1):
        grads[i] = left if below[i] is None else left @ below[i].T
        if i:
            left = weights[i].T @ left
    return grads


def train_dln(weights: list[np.ndarray], problem: MatrixProblem, config: DynamicsConfig) -> Trajectory:
    """Full-batch GD on ``0.5 * mean over observed entries of (W_L...W_1 - M*)^2``.

    Args:
        weights: initial factors ``[W_1, ..., W_L]`` (copied, not modified).
        problem: the target and mask.
        config: steps, step sizes, logging and stopping.

    Returns:
        The logged trajectory and the final factors.

    Raises:
        TrainingError: the factors do not chain to the target's shape, or training diverged.
    """
    weights = [np.array(w, dtype=np.float64, copy=True) for w in weights]
    shape = (weights[-1].shape[0], weights[0].shape[1])
    if shape != problem.target.shape or any(a.shape[0] != b.shape[1] for a, b in zip(weights, weights[1:])):
        raise TrainingError(f"factors {[w.shape for w in weights]} do not multiply to {problem.target.shape}")
    target, mask = problem.target, problem.mask
    count = target.size if mask is None else float(mask.sum())
    rates = [config.step_size] * len(weights)
    rates[0] = rates[-1] = config.step_size * config.outer_scale
    steps, errors, seconds = [0], [recovery_error(weights, target)], [0.0]
    elapsed, done = 0.0, 0
    with np.errstate(over="ignore", invalid="ignore"):  # divergence is detected below and reported once
        while done < config.steps:
            chunk = min(config.log_every, config.steps - done)
            start = time.perf_counter()
            for _ in range(chunk):
                residual = end_to_end(weights) - target
                if mask is not None:
                    residual *= mask
                residual /= count
                for w, g, rate in zip(weights, _gradients(weights, residual), rates):
                    w -= rate * g
            elapsed += time.perf_counter() - start
            done += chunk
            error = recovery_error(weights, target)
            if not math.isfinite(error):
                raise TrainingError(f"gradient descent diverged after {done} steps; lower the step size")
            steps.append(done)
            errors.append(error)
            seconds.append(elapsed)
            if error <= config.stop_error:
                break
    return Trajectory(
        steps=np.asarray(steps, dtype=np.int64),
        errors=np.asarray(errors),
        seconds=np.asarray(seconds),
        weights=weights,
    )
