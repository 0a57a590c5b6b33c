"""The distillation losses' defining properties (docs/methods.md §3, §4) and the ``--loss`` CLI helper."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distill.cli._loss_args import add_loss_arguments, loss_from_args, parse_loss_params
from distill.errors import TrainingError
from distill.losses import (
    LOSSES,
    CrossEntropy,
    HintonKD,
    LogitRegression,
    NoisyLogitRegression,
    make_loss,
)
from distill.models import ModelConfig, build_model
from distill.train import FitConfig, fit, predict_logits

NAMES = sorted(LOSSES)


def _batch(n: int = 16, c: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(n, c, generator=g) * 3
    teacher = torch.randn(n, c, generator=g) * 3
    targets = torch.randint(0, c, (n,), generator=g)
    return student, teacher, targets


def _seeded(name: str, seed: int = 0) -> object:
    """The loss ``name`` with deterministic noise where it has any (so two instances agree call by call)."""
    return make_loss(name, seed=seed) if name == "noisy_logit_l2" else make_loss(name)


# --- the registry -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_make_loss_round_trips_every_registered_name(name: str) -> None:
    loss = make_loss(name)
    assert isinstance(loss, LOSSES[name])
    assert loss.name == name
    assert make_loss(loss.name, **loss.params()) == loss


@pytest.mark.parametrize("name", NAMES)
def test_every_loss_is_a_differentiable_finite_scalar(name: str) -> None:
    student, teacher, targets = _batch()
    student.requires_grad_(True)
    value = _seeded(name)(student, teacher, targets)
    assert value.shape == ()
    assert torch.isfinite(value)
    value.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_the_teacher_matters_exactly_when_the_loss_says_it_uses_it(name: str) -> None:
    student, teacher, targets = _batch()
    a = _seeded(name)(student, teacher, targets)
    b = _seeded(name)(student, teacher + torch.randn_like(teacher), targets)
    assert bool(a != b) == LOSSES[name].uses_teacher


@pytest.mark.parametrize("name", NAMES)
def test_shape_mistakes_raise_instead_of_broadcasting(name: str) -> None:
    student, teacher, targets = _batch(n=8, c=4)
    loss = _seeded(name)
    with pytest.raises(TrainingError, match=r"\(N, C\)"):
        loss(student[0], teacher[0], targets[:1])
    if loss.uses_teacher:
        with pytest.raises(TrainingError, match="do not match"):
            loss(student, teacher[:, :1], targets)  # (8, 1) would broadcast silently
    if name in ("ce", "kd"):
        with pytest.raises(TrainingError, match="targets"):
            loss(student, teacher, targets[:, None])


def test_unknown_name_lists_the_choices() -> None:
    with pytest.raises(TrainingError, match=r"'hinton' is unknown; choose one of \['ce', 'kd', 'logit_l2', 'noisy_logit_l2'\]"):
        make_loss("hinton")


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("ce", {"alpha": 0.5}, "has no parameter alpha; it takes no parameters"),
        ("kd", {"tau": 3.0}, r"has no parameter tau; it takes \['alpha', 'temperature'\]"),
        ("kd", {"alpha": 1.5}, "alpha must be >= 0.0 and <= 1.0"),
        ("kd", {"alpha": -0.1}, "alpha must be >= 0.0"),
        ("kd", {"temperature": 0.0}, "temperature must be > 0.0"),
        ("kd", {"temperature": float("inf")}, "temperature must be a finite number"),
        ("kd", {"alpha": "0.5"}, "alpha must be a finite number"),
        ("kd", {"alpha": True}, "alpha must be a finite number"),
        ("noisy_logit_l2", {"sigma": -0.1}, "sigma must be >= 0.0"),
        ("noisy_logit_l2", {"sigma": float("nan")}, "sigma must be a finite number"),
        ("noisy_logit_l2", {"alpha": 1.01}, "alpha must be >= 0.0 and <= 1.0"),
        ("noisy_logit_l2", {"seed": 1.5}, "seed must be a whole number"),
        ("noisy_logit_l2", {"seed": 1, "generator": torch.Generator()}, "seed or generator, not both"),
        ("noisy_logit_l2", {"generator": 7}, "generator must be a torch.Generator"),
    ],
)
def test_bad_parameters_raise_a_training_error_naming_the_problem(name: str, params: dict, message: str) -> None:
    with pytest.raises(TrainingError, match=message):
        make_loss(name, **params)


# --- logit regression and the noisy teacher (§3) ------------------------------------------------------


def test_logit_regression_is_half_the_mean_squared_norm() -> None:
    student, teacher, targets = _batch(n=7, c=3)
    expected = sum(float(((s - t) ** 2).sum()) for s, t in zip(student, teacher)) / (2 * 7)
    assert float(LogitRegression()(student, teacher, targets)) == pytest.approx(expected, rel=1e-6)
    assert float(LogitRegression()(teacher, teacher, targets)) == 0.0


@pytest.mark.parametrize("alpha", [0.3, 1.0])
def test_noisy_with_sigma_zero_equals_logit_regression(alpha: float) -> None:
    student, teacher, targets = _batch()
    noisy = NoisyLogitRegression(sigma=0.0, alpha=alpha, seed=0)
    for _ in range(3):
        assert torch.equal(noisy(student, teacher, targets), LogitRegression()(student, teacher, targets))


@pytest.mark.parametrize("sigma", [0.5, 2.0])
def test_noisy_with_alpha_zero_equals_logit_regression(sigma: float) -> None:
    student, teacher, targets = _batch()
    noisy = NoisyLogitRegression(sigma=sigma, alpha=0.0, seed=0)
    for _ in range(3):
        assert torch.equal(noisy(student, teacher, targets), LogitRegression()(student, teacher, targets))


@pytest.mark.parametrize("alpha", [0.3, 0.5, 0.9])
def test_noise_hits_about_an_alpha_fraction_of_samples(alpha: float) -> None:
    # 200k Bernoulli draws: the fraction's std is <= 0.0012, so a 0.01 tolerance is > 8 standard deviations.
    teacher = torch.rand(200_000, 4) + 1.0  # no zero logits: a picked row always changes
    noisy, picked = NoisyLogitRegression(sigma=0.5, alpha=alpha, seed=1).perturb(teacher)
    assert abs(picked.float().mean().item() - alpha) < 0.01
    assert torch.equal(noisy[~picked], teacher[~picked])  # the rest keep the teacher's logits exactly
    assert bool((noisy[picked] != teacher[picked]).all(dim=1).all())


def test_selection_is_per_sample_and_fresh_at_every_call() -> None:
    loss = NoisyLogitRegression(sigma=0.5, alpha=0.5, seed=2)
    teacher = torch.ones(256, 3)
    _, first = loss.perturb(teacher)
    _, second = loss.perturb(teacher)
    assert 0 < int(first.sum()) < 256  # neither all nor none: a per-sample choice, not per batch
    assert not torch.equal(first, second)


def test_noise_is_multiplicative_with_std_sigma() -> None:
    sigma = 0.4
    teacher = torch.rand(50_000, 10) * 4 + 0.5
    noisy, picked = NoisyLogitRegression(sigma=sigma, alpha=1.0, seed=3).perturb(teacher)
    assert bool(picked.all())
    xi = noisy / teacher - 1.0  # z~ = z (1 + ξ)  =>  ξ = z~ / z - 1, whatever the size of z
    # 500k draws: the sample mean's std is sigma/707 and the sample std's about sigma/1000.
    assert abs(xi.mean().item()) < 0.01
    assert xi.std().item() == pytest.approx(sigma, rel=0.02)


def test_a_zero_teacher_logit_stays_zero() -> None:
    teacher = torch.randn(1000, 6)
    teacher[:, [0, 3]] = 0.0
    noisy, picked = NoisyLogitRegression(sigma=1.0, alpha=1.0, seed=4).perturb(teacher)
    assert bool(picked.all())
    assert bool((noisy[:, [0, 3]] == 0).all())
    assert bool((noisy[:, [1, 2, 4, 5]] != teacher[:, [1, 2, 4, 5]]).all())


def test_the_same_seed_gives_the_same_noise_and_another_seed_other_noise() -> None:
    student, teacher, targets = _batch()
    a, b, c = (NoisyLogitRegression(sigma=0.5, alpha=0.5, seed=s) for s in (7, 7, 8))
    values_a = [a(student, teacher, targets) for _ in range(3)]
    values_b = [b(student, teacher, targets) for _ in range(3)]
    values_c = [c(student, teacher, targets) for _ in range(3)]
    assert values_a == values_b
    assert values_a != values_c
    shared = NoisyLogitRegression(sigma=0.5, alpha=0.5, generator=torch.Generator().manual_seed(7))
    assert [shared(student, teacher, targets) for _ in range(3)] == values_a


def test_the_noisy_targets_carry_no_gradient_to_the_teacher() -> None:
    student, teacher, targets = _batch()
    teacher.requires_grad_(True)
    NoisyLogitRegression(sigma=0.5, alpha=1.0, seed=0)(student.requires_grad_(True), teacher, targets).backward()
    assert teacher.grad is None


# --- Hinton KD (§4) -----------------------------------------------------------------------------------


def test_kd_with_alpha_zero_equals_cross_entropy() -> None:
    student, teacher, targets = _batch()
    kd = HintonKD(alpha=0.0, temperature=4.0)
    assert torch.equal(kd(student, teacher, targets), CrossEntropy()(student, teacher, targets))
    assert torch.equal(kd(student, teacher * 5, targets), F.cross_entropy(student, targets))


def test_kd_with_identical_logits_has_zero_soft_term() -> None:
    student, _, targets = _batch()
    assert float(HintonKD(alpha=1.0, temperature=3.0)(student, student.clone(), targets)) == pytest.approx(0.0, abs=1e-6)
    mixed = HintonKD(alpha=0.6, temperature=3.0)(student, student.clone(), targets)
    assert float(mixed) == pytest.approx(0.4 * float(F.cross_entropy(student, targets)), rel=1e-5)


@pytest.mark.parametrize(("alpha", "temperature"), [(0.8, 10.0), (0.5, 2.0), (1.0, 1.0)])
def test_kd_is_alpha_t2_batchmean_kl_plus_weighted_cross_entropy(alpha: float, temperature: float) -> None:
    student, teacher, targets = _batch(n=9, c=4)
    log_ps = torch.log_softmax(student / temperature, dim=1)
    log_pt = torch.log_softmax(teacher / temperature, dim=1)
    kl_per_sample = (log_pt.exp() * (log_pt - log_ps)).sum(dim=1)  # KL(p_t || p_s), summed over classes
    expected = alpha * temperature**2 * kl_per_sample.mean() + (1 - alpha) * F.cross_entropy(student, targets)
    got = HintonKD(alpha=alpha, temperature=temperature)(student, teacher, targets)
    assert float(got) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
def test_kd_soft_gradient_is_t_times_the_probability_gap(temperature: float) -> None:
    # d/dz_s [T² KL] = T² * (1/T) (p_s - p_t) / N: the T² undoes the 1/T² that softening costs the gradient.
    student, teacher, targets = _batch(n=6, c=5)
    student.requires_grad_(True)
    HintonKD(alpha=1.0, temperature=temperature)(student, teacher, targets).backward()
    gap = torch.softmax(student.detach() / temperature, 1) - torch.softmax(teacher / temperature, 1)
    torch.testing.assert_close(student.grad, temperature * gap / 6, rtol=1e-4, atol=1e-7)


def test_kd_soft_gradient_scale_does_not_depend_on_the_temperature() -> None:
    # Hinton et al.: with zero-mean logits the soft gradient tends to (z_s - z_t) / (N C) as T grows (the
    # error is O(|z| / T)), so its size stays put across temperatures; without the T² it would fall as 1/T².
    student, teacher, targets = _batch(n=6, c=5)
    student, teacher = student - student.mean(1, keepdim=True), teacher - teacher.mean(1, keepdim=True)
    limit = (student - teacher) / (6 * 5)
    for temperature, tolerance in ((5.0, 0.5), (10.0, 0.3), (50.0, 0.08), (200.0, 0.02), (1000.0, 0.005)):
        z = student.clone().requires_grad_(True)
        HintonKD(alpha=1.0, temperature=temperature)(z, teacher, targets).backward()
        assert float((z.grad - limit).norm() / limit.norm()) < tolerance
        assert float(z.grad.norm()) == pytest.approx(float(limit.norm()), rel=0.05)


# --- every loss trains a student ----------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_every_loss_trains_a_student_to_follow_the_teacher(name: str) -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(8, 3)).astype(np.float32) * 2
    x = rng.normal(size=(640, 8)).astype(np.float32)
    teacher_logits = x @ weights  # a linear teacher; its argmax is the label
    y = teacher_logits.argmax(1).astype(np.int64)
    student = build_model(ModelConfig(input_shape=(8,), num_classes=3, family="mlp", width=32, depth=1))
    loss = make_loss(name, seed=0) if name == "noisy_logit_l2" else make_loss(name)
    cfg = FitConfig(epochs=25, lr=1e-2, batch_size=64, seed=0, progress=False)
    fit(student, x[:512], y[:512], loss, cfg, teacher_logits=teacher_logits[:512])
    held_out = (predict_logits(student, x[512:]).argmax(1) == y[512:]).mean()
    assert held_out >= 0.9


# --- the command line ---------------------------------------------------------------------------------


def _parser(**kwargs: object) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anytime-edge test", exit_on_error=False)
    add_loss_arguments(parser, **kwargs)  # type: ignore[arg-type]  # the tests pass its own keyword arguments
    return parser


@pytest.mark.parametrize("name", NAMES)
def test_every_registered_loss_round_trips_through_the_command_line(name: str) -> None:
    reference = make_loss(name, seed=5) if name == "noisy_logit_l2" else make_loss(name)
    argv = ["--loss", name]
    for key, value in reference.params().items():
        if value is not None and not isinstance(value, torch.Generator):
            argv += ["--loss-param", f"{key}={value}"]
    assert loss_from_args(_parser().parse_args(argv)) == reference


def test_values_take_the_parameter_type() -> None:
    loss = loss_from_args(_parser().parse_args(["--loss", "kd", "--loss-param", "alpha=1", "--loss-param", "temperature= 8"]))
    assert loss == HintonKD(alpha=1.0, temperature=8.0)
    assert isinstance(loss.alpha, float)
    params = parse_loss_params("noisy_logit_l2", [("seed", "none"), ("sigma", "0.25")])
    assert params == {"seed": None, "sigma": 0.25}


def test_a_command_default_loss_and_params_apply_until_overridden() -> None:
    parser = _parser(default="kd", default_params={"kd": {"alpha": 0.8, "temperature": 10.0}})
    assert loss_from_args(parser.parse_args([])) == HintonKD(alpha=0.8, temperature=10.0)
    assert loss_from_args(parser.parse_args(["--loss-param", "alpha=0.3"])) == HintonKD(alpha=0.3, temperature=10.0)
    assert loss_from_args(parser.parse_args(["--loss", "logit_l2"])) == LogitRegression()


def test_a_malformed_loss_param_is_a_usage_error() -> None:
    with pytest.raises(argparse.ArgumentError, match="KEY=VALUE"):
        _parser().parse_args(["--loss-param", "alpha"])
    with pytest.raises(argparse.ArgumentError, match="invalid choice"):
        _parser().parse_args(["--loss", "hinton"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--loss", "ce", "--loss-param", "alpha=0.5"], "'ce' has no command-line parameter 'alpha'; it takes no parameters"),
        (["--loss", "noisy_logit_l2", "--loss-param", "generator=1"], r"it takes \['alpha', 'seed', 'sigma'\]"),
        (
            ["--loss", "kd", "--loss-param", "alpha=high"],
            "alpha='high' is not a valid float; pass e.g. --loss-param alpha=<float>",
        ),
        (["--loss", "noisy_logit_l2", "--loss-param", "seed=1.5"], "seed='1.5' is not a valid int"),
        (["--loss", "kd", "--loss-param", "alpha=0.1", "--loss-param", "alpha=0.2"], "alpha= is given twice"),
        (["--loss", "kd", "--loss-param", "alpha=2"], "alpha must be >= 0.0 and <= 1.0"),
    ],
)
def test_bad_loss_params_raise_one_line_training_errors(argv: list[str], message: str) -> None:
    with pytest.raises(TrainingError, match=message) as info:
        loss_from_args(_parser().parse_args(argv))
    assert "\n" not in str(info.value)


def test_a_command_cannot_register_bad_defaults() -> None:
    with pytest.raises(TrainingError, match="default loss 'hinton' is unknown"):
        _parser(default="hinton")
    with pytest.raises(TrainingError, match="has no parameter tau"):
        _parser(default_params={"kd": {"tau": 2.0}})


def test_help_lists_every_loss_with_its_defaults() -> None:
    text = _parser(default_params={"kd": {"alpha": 0.8}}).format_help()
    for name in NAMES:
        assert name in text
    assert "sigma=0.5" in " ".join(text.split())
