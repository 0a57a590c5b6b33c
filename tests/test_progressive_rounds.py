"""The pieces of a B-DISTIL round: weights, log barrier, weak-learning edge, line search."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill.errors import TrainingError
from distill.losses import HintonKD
from distill.progressive.rounds import (
    BarrierLoss,
    BoostedKD,
    barrier_objective,
    boosting_weights,
    kl_step,
    line_search_step,
    pack_weights,
    residual_temperature,
    weak_learning_edge,
)


@pytest.fixture
def residual() -> np.ndarray:
    # Teacher-like magnitudes: one large positive logit per row, the rest spread around zero.
    rng = np.random.default_rng(0)
    r = rng.normal(0.0, 3.0, size=(50, 6))
    r[np.arange(50), rng.integers(0, 6, 50)] += 12.0
    return r


def test_weights_normalise_and_follow_the_residual(residual: np.ndarray) -> None:
    tau = residual_temperature(residual)
    k_plus, k_minus = boosting_weights(residual, tau)
    assert k_plus.shape == k_minus.shape == residual.shape
    assert k_plus.sum() == pytest.approx(1.0) and k_minus.sum() == pytest.approx(1.0)
    assert (k_plus > 0).all() and (k_minus > 0).all()
    order = np.argsort(residual, axis=None)
    assert np.all(np.diff(k_plus.ravel()[order]) >= 0)  # K+ grows with the residual
    assert np.all(np.diff(k_minus.ravel()[order]) <= 0)  # K- shrinks with it


def test_weights_ignore_a_constant_shift_and_survive_huge_residuals(residual: np.ndarray) -> None:
    k_plus, k_minus = boosting_weights(residual, 1.0)
    shifted_plus, shifted_minus = boosting_weights(residual + 500.0, 1.0)  # exp(500) overflows float64 unshifted
    np.testing.assert_allclose(shifted_plus, k_plus, rtol=1e-9)
    np.testing.assert_allclose(shifted_minus, k_minus, rtol=1e-9)


def test_literal_temperature_concentrates_the_weights(residual: np.ndarray) -> None:
    # Why tau defaults to the residual's RMS: at tau = 1 a handful of entries carry nearly all weight.
    literal, _ = boosting_weights(residual, 1.0)
    scaled, _ = boosting_weights(residual, residual_temperature(residual))
    assert np.sort(literal.ravel())[-5:].sum() > 0.5
    assert np.sort(scaled.ravel())[-5:].sum() < 0.2


@pytest.mark.parametrize("tau", [0.0, -1.0, float("nan"), float("inf")])
def test_weights_reject_a_bad_temperature(residual: np.ndarray, tau: float) -> None:
    with pytest.raises(TrainingError, match="temperature"):
        boosting_weights(residual, tau)


def test_residual_checks() -> None:
    with pytest.raises(TrainingError, match="NaN"):
        residual_temperature(np.array([[1.0, np.nan]]))
    assert residual_temperature(np.zeros((3, 2))) > 0  # a perfect ensemble still has a usable scale


def test_barrier_minimiser_stays_strictly_inside_the_bound(residual: np.ndarray) -> None:
    k_plus, k_minus = (torch.from_numpy(k) for k in boosting_weights(residual, residual_temperature(residual)))
    h = torch.zeros_like(k_plus, requires_grad=True)
    optimiser = torch.optim.LBFGS([h], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-15, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        value = barrier_objective(h, k_plus, k_minus) * k_plus.numel()
        value.backward()
        return value

    optimiser.step(closure)
    f = torch.tanh(h.detach())
    expected = (k_plus - k_minus) / (k_plus + k_minus)
    assert torch.allclose(f, expected, atol=1e-4)
    assert f.abs().max() < 1.0


def test_barrier_grows_without_bound_towards_the_wrong_edge() -> None:
    k_plus, k_minus = torch.tensor([0.5]), torch.tensor([0.5])
    values = [float(barrier_objective(torch.tensor([h]), k_plus, k_minus)) for h in (0.0, 5.0, 20.0, 80.0)]
    assert values == sorted(values) and values[-1] > 30.0
    assert all(np.isfinite(values))  # finite in float arithmetic even where tanh(h) rounds to 1


def test_barrier_loss_reads_packed_weights(residual: np.ndarray) -> None:
    k_plus, k_minus = boosting_weights(residual, residual_temperature(residual))
    packed = torch.from_numpy(pack_weights(k_plus, k_minus))
    raw = torch.randn(residual.shape, dtype=torch.float32)
    # The batch mean of the packed (N-scaled) weights equals the full-data objective.
    full = barrier_objective(raw.double(), torch.from_numpy(k_plus), torch.from_numpy(k_minus))
    assert float(BarrierLoss()(raw, packed, torch.zeros(len(raw)))) == pytest.approx(float(full), rel=1e-5)
    with pytest.raises(TrainingError, match="pack_weights"):
        BarrierLoss()(raw, packed[:, :3], torch.zeros(len(raw)))


def test_edge_accepts_an_aligned_learner_and_rejects_a_useless_one(residual: np.ndarray) -> None:
    tau = residual_temperature(residual)
    k_plus, k_minus = boosting_weights(residual, tau)
    gamma = 0.05
    aligned = np.tanh(residual / tau)
    constant = np.zeros_like(residual)
    noise = np.random.default_rng(1).uniform(-0.99, 0.99, residual.shape)
    assert weak_learning_edge(k_plus, k_minus, aligned) >= gamma
    assert weak_learning_edge(k_plus, k_minus, constant) < gamma
    assert weak_learning_edge(k_plus, k_minus, noise) < gamma
    assert weak_learning_edge(k_plus, k_minus, -aligned) < 0.0
    with pytest.raises(TrainingError, match="one shape"):
        weak_learning_edge(k_plus, k_minus, aligned[:, :2])


def test_line_search_recovers_the_scale_of_an_exact_direction() -> None:
    f = np.random.default_rng(2).uniform(-0.9, 0.9, size=(40, 5))
    assert line_search_step(3.7 * f, f, temperature=2.0) == pytest.approx(3.7, rel=1e-6)


def test_line_search_never_steps_uphill(residual: np.ndarray) -> None:
    tau = residual_temperature(residual)
    f = np.tanh(residual / tau)
    assert line_search_step(residual, -f, tau) == 0.0
    step = line_search_step(residual, f, tau)

    def potential(eta: float) -> float:
        return float(np.cosh((residual - eta * f) / tau).sum())

    assert step > 0 and potential(step) < potential(0.0)
    assert potential(step) <= min(potential(step * 0.9), potential(step * 1.1))


def _mean_kl(g: np.ndarray, z: np.ndarray) -> float:
    p = np.exp(g - g.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    log_q = z - z.max(1, keepdims=True)
    log_q -= np.log(np.exp(log_q).sum(1, keepdims=True))
    return float(np.sum(p * (np.log(p) - log_q)))


def test_kl_step_is_the_minimum_of_the_distillation_loss_along_the_member(residual: np.ndarray) -> None:
    rng = np.random.default_rng(3)
    g = residual  # teacher logits
    ensemble = 0.5 * g + rng.normal(0.0, 2.0, g.shape)  # a first member that is half-way and noisy
    f = np.tanh((g - ensemble) / 4.0 + rng.normal(0.0, 0.3, g.shape))
    step = kl_step(g, ensemble, f)
    grid = np.linspace(0.0, 4.0 * step, 401)
    best = grid[np.argmin([_mean_kl(g, ensemble + eta * f) for eta in grid])]
    assert step > 0 and step == pytest.approx(best, abs=4.0 * step / 400)
    assert _mean_kl(g, ensemble + step * f) < _mean_kl(g, ensemble)


def test_kl_step_never_steps_uphill_and_checks_shapes(residual: np.ndarray) -> None:
    g = residual
    f = np.tanh(g / 10.0)
    assert kl_step(g, np.zeros_like(g), -f) == 0.0  # against the teacher: no step
    assert kl_step(g, np.zeros_like(g), f) > 0.0
    with pytest.raises(TrainingError, match="one \\(N, C\\) shape"):
        kl_step(g, g[:, :2], f)


def test_boosted_kd_is_hinton_kd_of_the_prefix_with_the_member() -> None:
    gen = torch.Generator().manual_seed(0)
    g, f_prev, m = (torch.randn(6, 4, generator=gen) for _ in range(3))
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    packed = torch.cat([g, f_prev], dim=1)
    assert BoostedKD()(m, packed, labels).item() == pytest.approx(HintonKD()(f_prev + m, g, labels).item(), rel=1e-6)
    member = m.clone().requires_grad_(True)
    BoostedKD()(member, packed, labels).backward()
    assert member.grad is not None and member.grad.abs().sum() > 0  # trains the member, not the frozen prefix
    with pytest.raises(TrainingError, match="packed"):
        BoostedKD()(m, g, labels)
