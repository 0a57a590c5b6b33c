"""The deep-matrix-factorisation testbed: inits, exact gradients, and the paper's claim on small cases."""

from __future__ import annotations

import numpy as np
import pytest

from distill.errors import TrainingError
from distill.lowrank.dynamics import (
    DynamicsConfig,
    MatrixProblem,
    _gradients,
    end_to_end,
    make_problem,
    orthogonal_init,
    spectral_init,
    train_dln,
)


def test_make_problem_has_the_requested_rank_and_mask() -> None:
    problem = make_problem(30, 3, observed=0.4, seed=1)
    s = np.linalg.svd(problem.target, compute_uv=False)
    assert np.sum(s > 1e-8 * s[0]) == 3
    assert problem.mask is not None
    assert problem.observed_fraction == pytest.approx(0.4, abs=1 / 900)
    np.testing.assert_allclose(problem.surrogate, problem.target * problem.mask / problem.observed_fraction)


def test_spectral_init_is_eps_v_eps_i_eps_u() -> None:
    problem = make_problem(12, 2)
    weights = spectral_init(problem.surrogate, width=4, depth=4, eps=0.1)
    assert [w.shape for w in weights] == [(4, 12), (4, 4), (4, 4), (12, 4)]
    np.testing.assert_allclose(weights[1], 0.1 * np.eye(4))
    u, _, vt = np.linalg.svd(problem.target)
    # Rows of W_1 and columns of W_L are eps times orthonormal singular vectors of the surrogate.
    np.testing.assert_allclose(weights[0] @ weights[0].T, 0.01 * np.eye(4), atol=1e-12)
    np.testing.assert_allclose(np.abs(weights[-1][:, 0]), 0.1 * np.abs(u[:, 0]), atol=1e-12)
    np.testing.assert_allclose(np.abs(weights[0][0]), 0.1 * np.abs(vt[0]), atol=1e-12)


def test_orthogonal_init_is_scaled_orthogonal() -> None:
    for w in orthogonal_init(10, depth=3, eps=0.01, seed=3):
        np.testing.assert_allclose(w @ w.T, 1e-4 * np.eye(10), atol=1e-15)


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_gradients_match_finite_differences(depth: int) -> None:
    rng = np.random.default_rng(depth)
    shapes = [(3, 5)] + [(3, 3)] * (depth - 2) + [(4, 3)]
    weights = [rng.standard_normal(s) for s in shapes]
    target = rng.standard_normal((4, 5))

    def loss(ws: list[np.ndarray]) -> float:
        return 0.5 * float(np.sum((end_to_end(ws) - target) ** 2))

    grads = _gradients(weights, end_to_end(weights) - target)
    h = 1e-6
    for i, w in enumerate(weights):
        for idx in np.ndindex(w.shape):
            plus = [x.copy() for x in weights]
            minus = [x.copy() for x in weights]
            plus[i][idx] += h
            minus[i][idx] -= h
            numeric = (loss(plus) - loss(minus)) / (2 * h)
            assert grads[i][idx] == pytest.approx(numeric, rel=1e-5, abs=1e-7)


def test_compressed_factorisation_beats_the_original_at_every_logged_step() -> None:
    problem = make_problem(20, 2, seed=0)
    config = DynamicsConfig(steps=6000, step_size=2.0, log_every=100, stop_error=1e-3)
    original = train_dln(orthogonal_init(20, 3, 1e-2, seed=1), problem, config)
    compressed = train_dln(spectral_init(problem.surrogate, 4, 3, 1e-2), problem, config)
    reached = original.steps_to(1e-3)
    assert reached is not None, "the original network should converge within the step budget"
    assert compressed.steps_to(1e-3) is not None and compressed.steps_to(1e-3) < reached
    n = min(len(original.errors), len(compressed.errors))
    assert np.all(compressed.errors[1:n] < original.errors[1:n])


def test_compressed_completion_with_a_larger_outer_rate_wins_and_recovers_unseen_entries() -> None:
    problem = make_problem(30, 2, observed=0.5, seed=2)
    original = train_dln(
        orthogonal_init(30, 3, 1e-2, seed=1),
        problem,
        DynamicsConfig(steps=9000, step_size=2.0, log_every=100, stop_error=1e-3),
    )
    compressed = train_dln(
        spectral_init(problem.surrogate, 4, 3, 1e-2),
        problem,
        DynamicsConfig(steps=9000, step_size=2.0, outer_scale=5.0, log_every=100, stop_error=1e-3),
    )
    # The error runs over all entries, so reaching 1e-3 means the unobserved ones were recovered too.
    assert compressed.errors[-1] <= 1e-3 and original.errors[-1] <= 1e-3
    steps_compressed, steps_original = compressed.steps_to(1e-3), original.steps_to(1e-3)
    assert steps_compressed is not None and steps_original is not None and steps_compressed < steps_original
    n = min(len(original.errors), len(compressed.errors))
    assert np.all(compressed.errors[1:n] < original.errors[1:n])


def test_completion_ignores_unobserved_entries() -> None:
    problem = make_problem(16, 2, observed=0.5, seed=4)
    assert problem.mask is not None
    noisy = problem.target + (1 - problem.mask) * np.random.default_rng(0).standard_normal(problem.target.shape)
    changed = MatrixProblem(target=noisy, rank=2, mask=problem.mask)
    config = DynamicsConfig(steps=300, step_size=10.0, log_every=100)
    init = orthogonal_init(16, 3, 1e-1, seed=0)
    a = train_dln(init, problem, config)
    b = train_dln(init, changed, config)
    for wa, wb in zip(a.weights, b.weights):
        np.testing.assert_array_equal(wa, wb)


def test_divergence_and_bad_shapes_are_reported() -> None:
    problem = make_problem(10, 2)
    with pytest.raises(TrainingError, match="diverged"):
        train_dln(orthogonal_init(10, 3, 1.0), problem, DynamicsConfig(steps=200, step_size=1e4, log_every=50))
    with pytest.raises(TrainingError, match="multiply"):
        train_dln(orthogonal_init(8, 3, 1e-2), problem, DynamicsConfig(steps=1))
    with pytest.raises(TrainingError):
        DynamicsConfig(steps=0)
    with pytest.raises(TrainingError):
        make_problem(10, 6)
