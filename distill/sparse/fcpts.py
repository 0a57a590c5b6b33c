"""FCPTS: learned per-layer sparsity under a global target, post-training, label-free (docs/methods.md §2).

Gong et al., "Fast and Controllable Post-training Sparsity", AAAI 2024 (code: ModelTC/FCPTS + msbench).
Only the allocation is learned; the weights stay frozen. Per prunable layer ``l``:

* one learnable score ``s_l``; threshold ``t_l = sigmoid(s_l)`` applied to the *raw* ``|w|`` — as in the
  authors' code (their "v1" threshold: no normalisation of ``|w|``). Raw |w| of the toolkit's
  Conv/Linear layers lie well inside (0, 1), the range a sigmoid can reach. Deviation, for any model: a
  layer with some ``|w| >= 1`` (common before BatchNorm) could not be pruned past those weights, so its
  ``|w|`` is divided by its largest ``|w|`` first; layers with every ``|w| < 1`` are unchanged. Scores are
  clamped below at -30 (the authors' floor) so a dense layer's score stays finite;
* hard mask ``m = 1[|w| > t]`` in the forward pass; layer sparsity ``S_l = mean(|w| <= t)`` is exact;
* ``dS_l/dt = p_l(t) + p_l(-t)``, ``p_l`` the density of the layer's *signed* weights, estimated by a
  100-bin histogram over ``[min w, max w]`` (the authors' box kernel, the default) or by a Gaussian KDE
  with Silverman's bandwidth ``1.06 · std · n^(-1/5)`` (``density="kde"``);
* global sparsity ``S = Σ n_l S_l / Σ n_l``; loss ``L_rec + λ |S - S*|`` with ``L_rec`` = Σ over blocks of
  the MSE between sparse and dense block outputs on unlabeled calibration inputs. A *block* ends at each
  ``nn.ReLU`` module (a functional ``torch.relu`` is invisible, so such a model has fewer, longer blocks);
  the last block's output is the logits, found by :func:`distill.logits.logits_of`. Deviation, measured: each block's MSE is divided by
  the dense block's mean square. With the authors' plain MSE (their blocks end in BatchNorm'd ResNet
  stages) the un-normalised activations of these BN-free models gave ``L_rec`` ~10-30, which swamped
  ``λ|S - S*|`` under the STE route: the learned global sparsity drifted from 70-90% down to ~49% on the
  digits CNN. Relative MSE keeps ``L_rec`` ~1 and the learned sparsity on target with λ = 1;
* scores start from the ERK allocation for ``S*`` (logit of the k-th smallest ``|w|`` of each layer);
  ``init="global"`` starts from the global-magnitude allocation instead (a measured variant, not the
  paper's);
  SGD with momentum 0.9, lr 0.01, cosine schedule, no weight decay, ~1600 iterations, 1024 samples.

Two gradient routes (``route``), both measured by benchmarks/sparsity_allocation.py:

* ``"ste"`` — the paper's joint optimisation: the mask's gradient reaches the thresholds through a
  straight-through estimator (the authors' BinActive: ``m = ½ sign(|w| - t) + ½`` with the sign's
  gradient passed where ``||w| - t| < 1``), so reconstruction error pulls thresholds down;
* ``"sparsity-only"`` — the authors' released code: the mask is computed under ``no_grad``, so the
  thresholds get gradient from ``λ|S - S*|`` alone. With frozen weights the reconstruction term then
  cannot change anything, so it is computed only on logged steps (for the history), and this route
  stays at its ERK start up to the oscillation of the sparsity term.

BatchNorm (a deviation, measured): zeroing 80% of a BatchNorm ResNet's conv weights moves every
normalised layer's input statistics, and the dense model's running statistics then wreck the sparse
model — the plain-logits ResNet of ../shared/cases/byo given as ``.pt2`` fell from 100% to 8.6% (200
iterations) and 9.2% (1600) test accuracy on digits at 80% sparsity. :func:`fcpts_student` therefore
re-estimates the running mean/variance of every BatchNorm on the same unlabeled calibration inputs after
baking the mask in (``recalibrate_bn``; no labels, no weight changes): 100% and 96.4% on that model.
Models without BatchNorm are unaffected.

After training, the learned thresholds give the *learned* global sparsity. If it misses the target, a
final exact projection shifts every score by one common offset (found by bisection; this keeps the
learned allocation's shape in logit space) so the global sparsity matches the target to the weight. The
report keeps both numbers.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from distill.errors import TrainingError
from distill.logits import logits_of
from distill.sparse.baselines import ALLOCATIONS, check_target
from distill.sparse.masks import apply_masks, masks_for_sparsities, prunable_layers

__all__ = ["DENSITIES", "FCPTSConfig", "FCPTSReport", "ROUTES", "fcpts_allocate", "fcpts_student", "recalibrate_batchnorm"]

ROUTES = ("ste", "sparsity-only")
DENSITIES = ("histogram", "kde")
_MIN_SCORE = -30.0  # the authors' floor on scores: sigmoid(-30) ~ 1e-13, i.e. a dense layer


@dataclass(frozen=True)
class FCPTSConfig:
    """How FCPTS learns the allocation."""

    target: float = 0.8  # global sparsity S* (fraction of zeros over all Conv/Linear weights)
    route: str = "ste"  # "ste": mask gradient reaches thresholds; "sparsity-only": authors' code
    iterations: int = 1600  # SGD steps on the scores
    batch_size: int = 32  # calibration inputs per step
    calibration_samples: int = 1024  # unlabeled inputs drawn from the training split
    lr: float = 0.01  # peak SGD learning rate (cosine-annealed to 0)
    momentum: float = 0.9
    sparsity_weight: float = 1.0  # λ in L_rec + λ|S - S*|
    init: str = "erk"  # starting allocation: "erk" (the paper) or another baseline ("global", "uniform")
    density: str = "histogram"  # estimator of p_l for dS/dt: "histogram" or "kde"
    bins: int = 100  # histogram bins over [min w, max w]
    bandwidth: float = 0.0  # KDE bandwidth; 0 = Silverman's rule per layer
    project: bool = True  # shift all scores by one offset at the end so S hits the target exactly
    recalibrate_bn: bool = True  # re-estimate BatchNorm running statistics of the sparse model (module doc)
    seed: int = 0  # seeds the calibration draw and batch order

    def __post_init__(self) -> None:
        check_target(self.target)
        if self.route not in ROUTES:
            raise TrainingError(f"FCPTS route '{self.route}' is unknown; use one of {list(ROUTES)}")
        if self.init not in ALLOCATIONS:
            raise TrainingError(f"FCPTS init '{self.init}' is unknown; use one of {sorted(ALLOCATIONS)}")
        if self.density not in DENSITIES:
            raise TrainingError(f"FCPTS density '{self.density}' is unknown; use one of {list(DENSITIES)}")
        if self.iterations < 0 or self.batch_size < 1 or self.calibration_samples < 1:
            raise TrainingError("FCPTS needs iterations >= 0, batch_size >= 1 and calibration_samples >= 1")
        if self.lr <= 0 or not 0.0 <= self.momentum < 1.0 or self.sparsity_weight < 0:
            raise TrainingError("FCPTS needs lr > 0, 0 <= momentum < 1 and sparsity_weight >= 0")
        if self.bins < 2 or self.bandwidth < 0:
            raise TrainingError("FCPTS needs bins >= 2 and bandwidth >= 0 (0 = Silverman's rule)")


@dataclass(frozen=True)
class FCPTSReport:
    """What one FCPTS allocation learned and how it ended."""

    target: float
    route: str
    density: str
    init_sparsities: dict[str, float]  # start (ERK by default), per layer, as realised by the initial thresholds
    learned_sparsities: dict[str, float]  # from the learned thresholds, per layer
    final_sparsities: dict[str, float]  # after the exact projection (= learned when not projected)
    learned_global: float  # global sparsity of the learned thresholds
    final_global: float  # global sparsity of the mask actually applied
    projected: bool  # whether the final projection changed the thresholds
    seconds: float  # wall time of the allocation (calibration forward passes included)
    iterations: int
    history: list[dict[str, float]] = field(default_factory=list)  # every ~1/16 of the run
    test_accuracy: float | None = None  # filled by fcpts_student
    recalibrated_bn: int = 0  # BatchNorm layers whose running statistics fcpts_student re-estimated
    accuracy_before_recalibration: float | None = None  # test accuracy with the dense model's statistics

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class _LayerDensity:
    """p(x) of one layer's signed weights, for dS/dt = p(t) + p(-t)."""

    def __init__(self, weight: torch.Tensor, cfg: FCPTSConfig) -> None:
        w = weight.detach().flatten().double()
        self.kind = cfg.density
        if self.kind == "histogram":
            lo, hi = float(w.min()), float(w.max())
            hi = hi if hi > lo else lo + 1e-12
            counts = torch.histc(w, bins=cfg.bins, min=lo, max=hi)
            self.lo, self.width = lo, (hi - lo) / cfg.bins
            self.density = counts / (counts.sum() * self.width)
        else:
            self.w = w
            std = float(w.std()) if w.numel() > 1 else 0.0
            self.h = cfg.bandwidth or max(1.06 * std * w.numel() ** -0.2, 1e-12)

    def __call__(self, x: float) -> float:
        if self.kind == "histogram":
            i = math.floor((x - self.lo) / self.width)
            return float(self.density[i]) if 0 <= i < len(self.density) else 0.0
        z = (x - self.w) / self.h
        return float(torch.exp(-0.5 * z * z).sum()) / (self.w.numel() * self.h * math.sqrt(2 * math.pi))


class _LayerSparsity(torch.autograd.Function):
    """Exact fraction of |w| <= t forward; density-based gradient p(t) + p(-t) backward."""

    @staticmethod
    def forward(ctx: Any, threshold: torch.Tensor, weight: torch.Tensor, density: _LayerDensity) -> torch.Tensor:
        ctx.density, ctx.t = density, float(threshold)
        return (weight.abs() <= threshold).float().mean()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        slope = ctx.density(ctx.t) + ctx.density(-ctx.t)
        return grad * slope, None, None


class _HardMaskSTE(torch.autograd.Function):
    """m = 1[x > 0] forward; the authors' BinActive gradient ½·1[|x| < 1] backward (x = |w| - t)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * 0.5 * (x.abs() < 1).to(grad.dtype)


def _kth_smallest_logit(weight: torch.Tensor, sparsity: float) -> float:
    """Score whose threshold prunes exactly round(sparsity * n) weights of ``weight`` (barring ties).

    The threshold sits halfway between the k-th and (k+1)-th smallest ``|w|``, so the float round trip
    through logit and sigmoid cannot move it across either weight.
    """
    k = int(round(sparsity * weight.numel()))
    if k == 0:
        return _MIN_SCORE
    ordered = torch.sort(weight.detach().abs().flatten().double()).values
    t = float(ordered[k - 1]) if k == len(ordered) else 0.5 * float(ordered[k - 1] + ordered[k])
    t = min(max(t, 1e-13), 1 - 1e-7)
    return max(math.log(t / (1 - t)), _MIN_SCORE)


def _counts(weights: dict[str, torch.Tensor], scores: dict[str, float]) -> dict[str, int]:
    return {n: int((w.abs() <= torch.sigmoid(torch.tensor(scores[n], dtype=w.dtype))).sum()) for n, w in weights.items()}


def _global(counts: dict[str, int], sizes: dict[str, int]) -> float:
    return sum(counts.values()) / sum(sizes.values())


def _project(weights: dict[str, torch.Tensor], scores: dict[str, float], target: float) -> dict[str, float]:
    """Scores shifted by one common offset so the global sparsity is as close to ``target`` as it gets."""
    sizes = {n: w.numel() for n, w in weights.items()}
    want = int(round(target * sum(sizes.values())))

    def pruned(delta: float) -> int:
        return sum(_counts(weights, {n: max(s + delta, _MIN_SCORE) for n, s in scores.items()}).values())

    lo, hi = -60.0, 60.0  # pruned(lo) = 0 weights... pruned(hi) = all weights below 1
    for _ in range(80):  # monotone in delta; 80 halvings reach float resolution
        mid = 0.5 * (lo + hi)
        if pruned(mid) < want:
            lo = mid
        else:
            hi = mid
    best = min((lo, hi), key=lambda d: abs(pruned(d) - want))
    return {n: max(s + best, _MIN_SCORE) for n, s in scores.items()}


def fcpts_allocate(model: nn.Module, calibration: np.ndarray | torch.Tensor, cfg: FCPTSConfig) -> FCPTSReport:
    """Learn per-layer sparsities for ``model`` under the global target; the model is not modified.

    Args:
        model: any trained classifier whose forward returns logits in a form
            :func:`distill.logits.logits_of` accepts; every Conv1d/Conv2d/Linear weight is pruned
            (grouped and depthwise convs too: masks need no particular layer shape).
        calibration: unlabeled model-ready inputs; the first ``cfg.calibration_samples`` are used.
        cfg: target, route, schedule and density estimator.

    Returns:
        The report; ``final_sparsities`` is what :func:`distill.sparse.masks.masked_copy` takes.

    Raises:
        TrainingError: bad configuration, or fewer calibration inputs than one batch.
    """
    started = time.perf_counter()
    x = torch.as_tensor(np.asarray(calibration, dtype=np.float32))[: cfg.calibration_samples]
    if len(x) < cfg.batch_size:
        raise TrainingError(f"FCPTS got {len(x)} calibration inputs, fewer than one batch of {cfg.batch_size}")
    dense = copy.deepcopy(model).eval()
    for p in dense.parameters():
        p.requires_grad_(False)
    layers = prunable_layers(dense)
    raw = {n: m.weight.detach() for n, m in layers.items()}
    # Thresholds live in (0, 1): a layer with some |w| >= 1 is compared in units of its largest |w|
    # (module doc); layers with all |w| < 1, as the paper's, keep the raw |w|.
    weights = {n: w / max(1.0, float(w.abs().max()) * (1 + 1e-6)) for n, w in raw.items()}
    sizes = {n: w.numel() for n, w in weights.items()}
    total = sum(sizes.values())
    densities = {n: _LayerDensity(w, cfg) for n, w in weights.items()}
    init = ALLOCATIONS[cfg.init](dense, cfg.target)
    init_scores = {n: _kth_smallest_logit(w, init[n]) for n, w in weights.items()}
    scores = {n: torch.tensor(v, requires_grad=True) for n, v in init_scores.items()}
    optimizer = torch.optim.SGD(list(scores.values()), lr=cfg.lr, momentum=cfg.momentum, weight_decay=0.0)

    relus = [m for m in dense.modules() if isinstance(m, nn.ReLU)]
    captured: list[torch.Tensor] = []
    handles = [r.register_forward_hook(lambda _m, _i, out: captured.append(out)) for r in relus]

    def blocks(params: dict[str, torch.Tensor] | None, inputs: torch.Tensor) -> list[torch.Tensor]:
        captured.clear()
        out = functional_call(dense, params, (inputs,)) if params is not None else dense(inputs)
        return [*captured, logits_of(out, who="the teacher")]

    generator = torch.Generator().manual_seed(cfg.seed)
    history: list[dict[str, float]] = []
    log_every = max(1, cfg.iterations // 16)
    try:
        for step in range(cfg.iterations):
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * 0.5 * (1.0 + math.cos(math.pi * step / max(cfg.iterations, 1)))
            batch = x[torch.randint(len(x), (cfg.batch_size,), generator=generator)]
            thresholds = {n: torch.sigmoid(s) for n, s in scores.items()}
            logging = step % log_every == 0 or step == cfg.iterations - 1
            if cfg.route == "sparsity-only" and not logging:
                # Nothing flows from L_rec to the scores on this route: skip both forward passes.
                rec = torch.zeros(())
            else:
                with torch.no_grad():
                    reference = blocks(None, batch)
                params = {}
                for n, w in weights.items():
                    if cfg.route == "ste":
                        mask = _HardMaskSTE.apply(w.abs() - thresholds[n])
                    else:
                        with torch.no_grad():
                            mask = (w.abs() > thresholds[n]).to(w.dtype)
                    params[f"{n}.weight"] = raw[n] * mask
                sparse = blocks(params, batch)
                # Each block's MSE is divided by the dense block's mean square, so blocks of different
                # activation scale weigh alike and L_rec is comparable to the λ|S - S*| term (module doc).
                rec = sum(torch.mean((a - b) ** 2) / (torch.mean(b * b) + 1e-12) for a, b in zip(sparse, reference))
            global_s = sum(_LayerSparsity.apply(thresholds[n], w, densities[n]) * sizes[n] for n, w in weights.items()) / total
            gap = (global_s - cfg.target).abs()
            loss = rec + cfg.sparsity_weight * gap
            optimizer.zero_grad(set_to_none=True)
            if loss.requires_grad:
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                for s in scores.values():
                    s.clamp_(min=_MIN_SCORE)
            if logging:
                history.append({"step": step, "reconstruction": float(rec.detach()), "global_sparsity": float(global_s.detach())})
    finally:
        for h in handles:
            h.remove()

    learned_scores = {n: float(s.detach()) for n, s in scores.items()}
    init_counts = _counts(weights, init_scores)
    learned_counts = _counts(weights, learned_scores)
    learned_global = _global(learned_counts, sizes)
    final_scores = learned_scores
    if cfg.project and round(learned_global * total) != round(cfg.target * total):
        final_scores = _project(weights, learned_scores, cfg.target)
    final_counts = _counts(weights, final_scores)
    return FCPTSReport(
        target=cfg.target,
        route=cfg.route,
        density=cfg.density,
        init_sparsities={n: init_counts[n] / sizes[n] for n in weights},
        learned_sparsities={n: learned_counts[n] / sizes[n] for n in weights},
        final_sparsities={n: final_counts[n] / sizes[n] for n in weights},
        learned_global=learned_global,
        final_global=_global(final_counts, sizes),
        projected=final_scores is not learned_scores,
        seconds=time.perf_counter() - started,
        iterations=cfg.iterations,
        history=history,
    )


def fcpts_student(
    teacher: nn.Module, dataset: Any, target: float | None = None, cfg: FCPTSConfig | None = None
) -> tuple[nn.Module, FCPTSReport]:
    """A sparse copy of ``teacher`` with the FCPTS allocation baked in (zeros in the weights).

    Args:
        teacher: the trained model to sparsify (left unchanged).
        dataset: a :class:`distill.data.Dataset`; calibration inputs come from its training split
            (a seeded draw, labels unused), accuracy from its test split.
        target: global sparsity; overrides ``cfg.target`` when given.
        cfg: the FCPTS configuration (default: :class:`FCPTSConfig`).

    Returns:
        (the sparse model in eval mode, the report with ``test_accuracy`` filled in; for a model with
        BatchNorm, after re-estimating its statistics on the calibration inputs when
        ``cfg.recalibrate_bn``, the accuracy before that in ``accuracy_before_recalibration``).
    """
    cfg = cfg or FCPTSConfig()
    if target is not None and target != cfg.target:
        cfg = FCPTSConfig(**{**cfg.__dict__, "target": target})
    order = np.random.default_rng(cfg.seed).permutation(len(dataset.x_train))[: cfg.calibration_samples]
    report = fcpts_allocate(teacher, dataset.x_train[order], cfg)
    student = copy.deepcopy(teacher).eval()
    apply_masks(student, masks_for_sparsities(student, report.final_sparsities))
    from distill.train import accuracy  # the training loop module; imported here to keep this one light

    before = None
    recalibrated = 0
    if cfg.recalibrate_bn and any(_tracks_statistics(m) for m in student.modules()):
        before = accuracy(student, dataset.x_test, dataset.y_test)
        recalibrated = recalibrate_batchnorm(student, dataset.x_train[order])
    acc = accuracy(student, dataset.x_test, dataset.y_test)
    return student, FCPTSReport(
        **{**report.__dict__, "test_accuracy": acc, "recalibrated_bn": recalibrated, "accuracy_before_recalibration": before}
    )


def _tracks_statistics(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, x: np.ndarray, batch_size: int = 128) -> int:
    """Re-estimate every BatchNorm's running mean and variance on ``x`` (no labels, no weight change).

    Each statistic becomes the plain average of its per-batch values over ``x`` (``momentum=None``), so
    with equal batches the running mean is the mean over all of ``x``; only the BatchNorm modules run in
    training mode (dropout and the rest stay in eval). The model is left in eval mode.

    Returns:
        The number of BatchNorm modules re-estimated.
    """
    norms = [m for m in model.modules() if _tracks_statistics(m)]
    model.eval()
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        data = np.asarray(x, dtype=np.float32)
        for i in range(0, len(data), batch_size):
            if len(data[i : i + batch_size]) > 1:  # BatchNorm needs two rows for a variance
                model(torch.from_numpy(np.ascontiguousarray(data[i : i + batch_size])))
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum
        model.eval()
    return len(norms)
