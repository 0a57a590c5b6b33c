"""Sparse students: masks, baseline allocations, FCPTS (both routes, projection), entropy monitor, DSD²."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from distill.errors import TrainingError
from distill.sparse import (
    ALLOCATIONS,
    FCPTSConfig,
    allocate,
    apply_masks,
    early_stopping_pick,
    fcpts_allocate,
    find_dip,
    global_sparsity,
    layer_sparsities,
    magnitude_mask,
    masked_copy,
    masks_for_sparsities,
    prune_global_l1,
    relu_entropy,
    symmetric_label_noise,
)
from distill.sparse.fcpts import _LayerDensity, _LayerSparsity


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 3))


def _trained_mlp() -> tuple[nn.Module, np.ndarray]:
    """A small MLP fitted to a synthetic 3-class problem (so reconstruction has something to lose)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 8)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1).astype(np.int64)
    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        loss = nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), x


def test_magnitude_mask_prunes_exactly_the_smallest_even_with_ties() -> None:
    w = torch.tensor([[0.5, -0.1, 0.1], [0.1, -0.9, 0.3]])
    keep = magnitude_mask(w, 0.5)
    assert int((~keep).sum()) == 3
    assert torch.all(w.abs()[keep].min() >= w.abs()[~keep].max())


def test_global_sparsity_is_parameter_weighted() -> None:
    model = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 1))  # 100 and 10 weights
    with torch.no_grad():
        model[0].weight.zero_()
    assert global_sparsity(model) == pytest.approx(100 / 110)
    assert layer_sparsities(model) == {"0": 1.0, "1": 0.0}


@pytest.mark.parametrize("name", sorted(ALLOCATIONS))
@pytest.mark.parametrize("target", [0.5, 0.9])
def test_allocations_hit_the_global_target(name: str, target: float) -> None:
    model = _mlp()
    sparsities = allocate(name, model, target)
    pruned = masked_copy(model, sparsities)
    assert abs(global_sparsity(pruned) - target) < 2e-3
    assert global_sparsity(model) == 0.0  # the original is untouched


def test_global_magnitude_uses_one_threshold() -> None:
    model = _mlp()
    pruned = masked_copy(model, allocate("global", model, 0.7))
    kept = torch.cat([m.weight[m.weight != 0].abs().flatten() for m in pruned if isinstance(m, nn.Linear)])
    dropped = torch.cat([o.weight[p.weight == 0].abs().flatten() for o, p in zip(model, pruned) if isinstance(o, nn.Linear)])
    assert kept.min() >= dropped.max()


def test_erk_keeps_small_layers_denser_and_caps_them_at_dense() -> None:
    model = _mlp()
    erk = allocate("erk", model, 0.9)
    # Σdims/Πdims: head 3x32 -> 0.36, first 64x8 -> 0.14, middle 32x64 -> 0.05: sparsity in reverse order.
    assert erk["4"] < erk["0"] < erk["2"]
    big = nn.Sequential(nn.Linear(1000, 1000), nn.Linear(1000, 2))
    capped = allocate("erk", big, 0.95)
    assert capped["1"] == 0.0  # 2x1000 head would need density > 1: kept dense
    assert abs(global_sparsity(masked_copy(big, capped)) - 0.95) < 1e-3


def test_bad_targets_and_names_are_one_line_errors() -> None:
    with pytest.raises(TrainingError, match="target sparsity"):
        allocate("uniform", _mlp(), 1.5)
    with pytest.raises(TrainingError, match="unknown"):
        allocate("random", _mlp(), 0.5)
    with pytest.raises(TrainingError):
        FCPTSConfig(route="both")
    with pytest.raises(TrainingError):
        apply_masks(_mlp(), {"0": torch.ones(3, 3, dtype=torch.bool)})


@pytest.mark.parametrize("density", ["histogram", "kde"])
def test_sparsity_gradient_is_the_density_at_plus_and_minus_t(density: str) -> None:
    torch.manual_seed(0)
    w = torch.randn(200_000) * 0.1
    t = torch.tensor(0.1, requires_grad=True)
    s = _LayerSparsity.apply(t, w, _LayerDensity(w, FCPTSConfig(density=density)))
    s.backward()
    gaussian = 2 * math.exp(-0.5) / (0.1 * math.sqrt(2 * math.pi))  # p(0.1) + p(-0.1) of N(0, 0.1²)
    assert float(s.detach()) == pytest.approx(float((w.abs() <= 0.1).float().mean()))
    assert float(t.grad) == pytest.approx(gaussian, rel=0.08)


@pytest.mark.parametrize("route", ["ste", "sparsity-only"])
def test_fcpts_reaches_the_target_within_half_a_point(route: str) -> None:
    model, x = _trained_mlp()
    before = [p.detach().clone() for p in model.parameters()]
    report = fcpts_allocate(model, x, FCPTSConfig(target=0.8, route=route, iterations=80, calibration_samples=256))
    assert abs(report.final_global - 0.8) <= 0.005
    pruned = masked_copy(model, report.final_sparsities)
    assert abs(global_sparsity(pruned) - 0.8) <= 0.005
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # weights are frozen
    assert 0.0 <= report.learned_global <= 1.0 and len(report.history) > 1


def test_only_the_ste_route_lets_reconstruction_move_thresholds() -> None:
    model, x = _trained_mlp()
    common = dict(target=0.8, iterations=40, calibration_samples=256, sparsity_weight=0.0, project=False)
    frozen = fcpts_allocate(model, x, FCPTSConfig(route="sparsity-only", **common))
    assert frozen.learned_sparsities == frozen.init_sparsities
    moved = fcpts_allocate(model, x, FCPTSConfig(route="ste", **common))
    # Reconstruction alone only ever wants weights back: the learned thresholds fall below ERK's.
    assert moved.learned_global < frozen.learned_global - 0.02
    assert not moved.projected


def test_projection_restores_the_target_after_drift() -> None:
    model, x = _trained_mlp()
    report = fcpts_allocate(
        model, x, FCPTSConfig(target=0.7, route="ste", iterations=40, calibration_samples=256, sparsity_weight=0.0)
    )
    assert report.learned_global < 0.68  # drifted without the sparsity term
    assert report.projected and abs(report.final_global - 0.7) < 1e-3
    # One common logit shift keeps the learned order of layers (the sparser layer stays the sparser).
    names = sorted(report.learned_sparsities, key=report.learned_sparsities.get)
    finals = [report.final_sparsities[n] for n in names]
    assert finals == sorted(finals)


def test_fcpts_student_bakes_the_mask_in() -> None:
    from distill.data import load_dataset
    from distill.models import ModelConfig, build_model
    from distill.sparse import fcpts_student

    ds = load_dataset("digits")
    torch.manual_seed(0)
    teacher = build_model(ModelConfig(ds.input_shape, ds.num_classes, width=4, depth=1, hidden=16)).eval()
    student, report = fcpts_student(teacher, ds, 0.6, FCPTSConfig(iterations=10, calibration_samples=64))
    assert global_sparsity(teacher) == 0.0
    assert global_sparsity(student) == pytest.approx(report.final_global)
    assert report.test_accuracy is not None and 0.0 <= report.test_accuracy <= 1.0


def test_entropy_is_zero_for_always_on_and_one_for_balanced_neurons() -> None:
    layer = nn.Linear(1, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0], [1.0]]))
        layer.bias.copy_(torch.tensor([10.0, 0.0]))
    model = nn.Sequential(layer, nn.ReLU())
    x = np.concatenate([np.linspace(-1, -0.1, 50), np.linspace(0.1, 1, 50)]).astype(np.float32)[:, None]
    report = relu_entropy(model, x, batch_size=7)
    assert report.layers["1"] == pytest.approx(0.5)  # mean of H=0 (always on) and H=1 (half on)
    assert report.samples == 100 and report.batches == 15
    # Counts are pooled over batches, so the batch size does not change the estimate.
    assert relu_entropy(model, x, batch_size=100).mean == pytest.approx(report.mean)
    with pytest.raises(TrainingError, match="nn.ReLU"):
        relu_entropy(nn.Linear(1, 1), x)


def test_symmetric_label_noise_flips_the_share_to_other_classes() -> None:
    y = np.arange(1000) % 10
    noisy, flipped = symmetric_label_noise(y, 0.3, 10, seed=1)
    assert flipped.sum() == 300
    assert np.all(noisy[flipped] != y[flipped]) and np.all(noisy[~flipped] == y[~flipped])


def test_global_l1_pruning_removes_a_fifth_of_what_remains_each_round() -> None:
    model = _mlp()
    prune_global_l1(model, 0.2)
    prune_global_l1(model, 0.2)
    mask_zeros = sum(int((m.weight_mask == 0).sum()) for m in model if isinstance(m, nn.Linear))
    total = sum(m.weight.numel() for m in model if isinstance(m, nn.Linear))
    assert mask_zeros / total == pytest.approx(1 - 0.8**2, abs=1e-3)


def test_early_stopping_stops_at_the_first_drop_and_picks_the_sparsest_good_round() -> None:
    assert early_stopping_pick([0.90, 0.91, 0.912, 0.85, 0.95], 0.005) == (2, 3)  # never sees the late 0.95
    assert early_stopping_pick([0.90, 0.899, 0.898], 0.005) == (2, None)
    assert find_dip([0.90, 0.85, 0.80, 0.88, 0.70]) == (2, 3)
    assert find_dip([0.90, 0.89, 0.88, 0.80]) is None


def test_masks_for_sparsities_requires_every_layer() -> None:
    with pytest.raises(TrainingError, match="prunable layers"):
        masks_for_sparsities(_mlp(), {"0": 0.5})


def test_fcpts_can_start_from_another_allocation() -> None:
    model, x = _trained_mlp()
    report = fcpts_allocate(model, x, FCPTSConfig(target=0.8, init="global", iterations=0, calibration_samples=256))
    assert report.init_sparsities == pytest.approx(allocate("global", model, 0.8), abs=1.5 / 96)
    with pytest.raises(TrainingError, match="init"):
        FCPTSConfig(init="random")


def test_dsd2_plot_follows_the_plot_convention(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from distill.sparse import DSD2Result, RoundRecord, plot_curves

    curve = [RoundRecord(r, 1 - 0.8**r, 0.9, 0.8, 0.8 - 0.01 * r, 0.5, 0.0) for r in range(4)]
    result = DSD2Result(curve, curve, teacher_round=1, picked_round=2, stop_round=3, vanilla_picked_round=2, noise=0.3)
    assert plot_curves(result, tmp_path / "curves.png") is None  # None = written
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)  # as if not installed
    note = plot_curves(result, tmp_path / "none.png")
    assert note is not None and "matplotlib" in note and "\n" not in note
    assert not (tmp_path / "none.png").exists()
