"""DSD²: iterative magnitude pruning that dodges the sparse double descent (docs/methods.md §4).

Quétu & Tartaglione, AAAI 2024 (code: VGCQ/DSD2). With label noise, test accuracy vs sparsity under
iterative magnitude pruning can dip, then rise again, so "stop when validation accuracy drops" stops at
the dip. DSD² distils a student from a teacher taken at its best sparsity; the student's curve then falls
monotonically and early stopping is safe. Two runs, same schedule:

1. *vanilla*: train dense on the (noisy) labels with cross-entropy; then each round prune 20% of the
   remaining Conv/Linear weights by global L1 magnitude (``torch.nn.utils.prune.global_unstructured``,
   which ranks only the still-unpruned weights) and retrain from the pruned weights with a fresh
   optimizer, as the authors do;
2. *distilled*: the same schedule for a freshly initialised student trained with
   ``alpha·T²·KL(teacher || student) + (1 - alpha)·CE`` (alpha = 0.8, T = 10, :mod:`distill.losses`
   ``kd``), the teacher being the vanilla model at its best validation accuracy.

Per round both runs log global sparsity, accuracy on the noisy training labels (memorisation), on the
clean validation split and on the test split, and the ReLU-input entropy (:mod:`distill.sparse.entropy`,
over many batches). Label noise is applied to the training split only; validation and test stay clean.
Early stopping (on validation accuracy, never test): the first round whose validation accuracy falls
more than ``stop_tolerance`` below the best so far triggers the stop; the pick is the sparsest earlier
round within ``stop_tolerance`` of that best. With ``early_stop=True`` the distilled run really stops
there; otherwise every round runs so the whole curve can be plotted, and the pick is computed from the
rounds before the trigger only (what a stopped run would have chosen).
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from distill.errors import TrainingError
from distill.losses import make_loss
from distill.models import ModelConfig, build_model
from distill.sparse.entropy import relu_entropy
from distill.sparse.masks import PRUNABLE_TYPES, global_sparsity
from distill.train import FitConfig, accuracy, fit, predict_logits

__all__ = [
    "DSD2Config",
    "DSD2Result",
    "RoundRecord",
    "early_stopping_pick",
    "find_dip",
    "plot_curves",
    "prune_global_l1",
    "run_dsd2",
    "run_pruning",
    "symmetric_label_noise",
]


@dataclass(frozen=True)
class DSD2Config:
    """Schedule of both pruning runs."""

    rounds: int = 10  # pruning rounds after the dense model (sparsity 1 - 0.8^rounds)
    prune_fraction: float = 0.2  # share of the remaining weights removed per round
    epochs: int = 10  # training epochs of each pruning round
    dense_epochs: int = 0  # epochs of the dense model (round 0); 0 = epochs. Long enough to fit the noise
    lr: float = 1e-3  # Adam peak learning rate per round (cosine to 0 within the round)
    batch_size: int = 128
    noise: float = 0.0  # symmetric label noise on the training split (0.2-0.5 shows the dip)
    alpha: float = 0.8  # weight of the soft teacher term in the distilled run
    temperature: float = 10.0  # distillation temperature
    entropy_samples: int = 2048  # inputs the entropy monitor accumulates over (batches of 256)
    stop_tolerance: float = 0.005  # early stopping: a drop of more than this below the best val accuracy
    early_stop: bool = False  # stop the distilled run when the rule fires (else run every round)
    seed: int = 0  # seeds model init, label noise and batch order
    progress: bool = False  # progress bars on stderr

    def __post_init__(self) -> None:
        if self.dense_epochs < 0:
            raise TrainingError("dense_epochs must be >= 0 (0 = the same as epochs)")
        if self.rounds < 0 or self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise TrainingError("DSD² needs rounds >= 0, epochs >= 1, batch_size >= 1 and lr > 0")
        if not 0.0 < self.prune_fraction < 1.0:
            raise TrainingError(f"prune_fraction must lie in (0, 1) (0.2 = 20% per round), not {self.prune_fraction}")
        if not 0.0 <= self.noise < 1.0:
            raise TrainingError(f"label noise must lie in [0, 1) (e.g. 0.2 for 20% flipped labels), not {self.noise}")
        if not 0.0 <= self.alpha <= 1.0 or self.temperature <= 0:
            raise TrainingError("DSD² needs 0 <= alpha <= 1 and temperature > 0")
        if self.entropy_samples < 1 or self.stop_tolerance < 0:
            raise TrainingError("entropy_samples must be >= 1 and stop_tolerance >= 0")


@dataclass(frozen=True)
class RoundRecord:
    """One point of a pruning curve."""

    round: int  # 0 = dense
    sparsity: float  # global fraction of zero Conv/Linear weights
    train_accuracy: float  # on the noisy training labels (how much noise is memorised)
    val_accuracy: float  # clean validation split: what early stopping sees
    test_accuracy: float
    entropy: float  # mean ReLU-input entropy, bits (NaN: the model has no nn.ReLU module)
    seconds: float  # wall time of the round (prune + retrain + evaluation)


@dataclass(frozen=True)
class DSD2Result:
    """Both curves, the teacher choice and what early stopping picks."""

    vanilla: list[RoundRecord]
    distilled: list[RoundRecord]
    teacher_round: int  # vanilla round used as teacher (best validation accuracy)
    picked_round: int  # early stopping's pick on the distilled curve
    stop_round: int | None  # round that triggered the stop (None: never triggered)
    vanilla_picked_round: int  # the same rule applied to the vanilla curve
    noise: float
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        def row(record: RoundRecord) -> dict[str, Any]:  # NaN is not JSON: an unknown entropy is null
            return {k: (None if isinstance(v, float) and v != v else v) for k, v in asdict(record).items()}

        return {
            "vanilla": [row(r) for r in self.vanilla],
            "distilled": [row(r) for r in self.distilled],
            "teacher_round": self.teacher_round,
            "picked_round": self.picked_round,
            "stop_round": self.stop_round,
            "vanilla_picked_round": self.vanilla_picked_round,
            "noise": self.noise,
            "config": self.config,
        }


def symmetric_label_noise(y: np.ndarray, rate: float, num_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels with a ``rate`` share replaced by a uniformly drawn *different* class (as in VGCQ/DSD2).

    Returns:
        (noisy labels, boolean mask of the flipped samples).
    """
    rng = np.random.default_rng(seed + 991)
    noisy = np.array(y, dtype=np.int64, copy=True)
    flipped = np.zeros(len(noisy), dtype=bool)
    picked = rng.permutation(len(noisy))[: int(round(rate * len(noisy)))]
    # An offset in 1..C-1 always lands on another class, uniformly.
    noisy[picked] = (noisy[picked] + rng.integers(1, num_classes, size=len(picked))) % num_classes
    flipped[picked] = True
    return noisy, flipped


def _pruned_parameters(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, PRUNABLE_TYPES)]


def prune_global_l1(model: nn.Module, fraction: float) -> None:
    """Prune ``fraction`` of the still-unpruned Conv/Linear weights by global |w| (masks stay attached)."""
    prune.global_unstructured(_pruned_parameters(model), pruning_method=prune.L1Unstructured, amount=fraction)


def _baked(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with the pruning masks folded into plain weights (exported, or used as the teacher).

    Works for any module: a pruned layer holds ``weight`` as a computed tensor, which ``copy.deepcopy``
    refuses, so that attribute is set aside while copying and the copy's pruning is then made permanent
    (``torch.nn.utils.prune.remove``). ``model`` keeps its masks.
    """
    pruned = [m for m in model.modules() if hasattr(m, "weight_orig") and hasattr(m, "weight_mask")]
    computed = {m: m.__dict__.pop("weight") for m in pruned if "weight" in m.__dict__}
    try:
        out = copy.deepcopy(model)
    finally:
        for m, weight in computed.items():
            m.__dict__["weight"] = weight
    for m in out.modules():
        if hasattr(m, "weight_orig") and hasattr(m, "weight_mask"):
            prune.remove(m, "weight")
    return out.eval()


def _entropy(model: nn.Module, x: np.ndarray, samples: int) -> float:
    """Mean ReLU-input entropy, or NaN for a model without ``nn.ReLU`` modules (nothing to hook)."""
    if not any(isinstance(m, nn.ReLU) for m in model.modules()):
        return float("nan")
    return relu_entropy(model, x, max_samples=samples).mean


def run_pruning(
    model: nn.Module,
    data: Any,
    train_labels: np.ndarray,
    cfg: DSD2Config,
    *,
    teacher_logits: np.ndarray | None = None,
    label: str = "vanilla",
    on_round: Callable[[RoundRecord], None] | None = None,
) -> tuple[list[RoundRecord], list[nn.Module]]:
    """Train ``model`` dense, then prune-and-retrain for ``cfg.rounds`` rounds.

    Args:
        model: a fresh classifier (trained in place).
        data: a :class:`distill.data.Dataset` (inputs and clean val/test labels).
        train_labels: the labels to train on (possibly noisy).
        cfg: the schedule.
        teacher_logits: the teacher's logits on ``data.x_train``; given = distilled run (kd loss).
        label: progress bar label.
        on_round: called with each record as it is finished (logging).

    Returns:
        (one record per round including the dense round 0, a baked copy of the model after each round).
    """
    loss = make_loss("kd", alpha=cfg.alpha, temperature=cfg.temperature) if teacher_logits is not None else make_loss("ce")
    records: list[RoundRecord] = []
    snapshots: list[nn.Module] = []
    best_val = -1.0
    for r in range(cfg.rounds + 1):
        started = time.perf_counter()
        if r:
            prune_global_l1(model, cfg.prune_fraction)
        epochs = cfg.epochs if r or not cfg.dense_epochs else cfg.dense_epochs
        fit_cfg = FitConfig(
            epochs=epochs,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            seed=cfg.seed + 17 * r,
            progress=cfg.progress,
            desc=f"{label} round {r}",
        )
        fit(model, data.x_train, train_labels, loss, fit_cfg, teacher_logits=teacher_logits)
        baked = _baked(model)
        record = RoundRecord(
            round=r,
            sparsity=global_sparsity(baked),
            train_accuracy=float((predict_logits(baked, data.x_train).argmax(1) == train_labels).mean()),
            val_accuracy=accuracy(baked, data.x_val, data.y_val),
            test_accuracy=accuracy(baked, data.x_test, data.y_test),
            entropy=_entropy(baked, data.x_val, cfg.entropy_samples),
            seconds=time.perf_counter() - started,
        )
        records.append(record)
        snapshots.append(baked)
        if on_round is not None:
            on_round(record)
        if teacher_logits is not None and cfg.early_stop:
            if record.val_accuracy < best_val - cfg.stop_tolerance:
                break
            best_val = max(best_val, record.val_accuracy)
    return records, snapshots


def early_stopping_pick(val_accuracies: list[float], tolerance: float) -> tuple[int, int | None]:
    """(picked round, round that triggered the stop or None) for "stop when validation accuracy drops".

    Only the rounds before the trigger are looked at: the pick is the sparsest of them whose validation
    accuracy is within ``tolerance`` of their best.
    """
    if not val_accuracies:
        raise TrainingError("early stopping needs at least one round")
    best = val_accuracies[0]
    stop = None
    for r, acc in enumerate(val_accuracies[1:], start=1):
        if acc < best - tolerance:
            stop = r
            break
        best = max(best, acc)
    seen = val_accuracies[: stop if stop is not None else len(val_accuracies)]
    top = max(seen)
    picked = max(r for r, acc in enumerate(seen) if acc >= top - tolerance)
    return picked, stop


def find_dip(accuracies: list[float], margin: float = 0.005) -> tuple[int, int] | None:
    """A sparse-double-descent dip: (dip round, recovery round) or None.

    A dip is a round whose accuracy is more than ``margin`` below an earlier round's and more than
    ``margin`` below a later round's; the deepest such round is returned with the best later round.
    """
    best: tuple[float, int, int] | None = None
    for i in range(1, len(accuracies) - 1):
        before = max(accuracies[:i])
        after_round = max(range(i + 1, len(accuracies)), key=lambda j: accuracies[j])
        depth = min(before, accuracies[after_round]) - accuracies[i]
        if depth > margin and (best is None or depth > best[0]):
            best = (depth, i, after_round)
    return None if best is None else (best[1], best[2])


def run_dsd2(
    data: Any,
    model_cfg: ModelConfig | nn.Module,
    cfg: DSD2Config,
    on_round: Callable[[str, RoundRecord], None] | None = None,
) -> tuple[DSD2Result, nn.Module, nn.Module]:
    """The vanilla run, the teacher at its best sparsity, the distilled run and early stopping's pick.

    Args:
        data: a :class:`distill.data.Dataset`.
        model_cfg: the architecture of both runs (an over-parameterised one shows the dip): a
            :class:`~distill.models.ModelConfig` (both runs start from one fresh seeded initialisation),
            or any module whose forward returns logits (:func:`distill.logits.logits_of`); both runs then
            start from a copy of its weights (pass a freshly initialised module to follow the paper, a
            trained one to prune it). Every Conv1d/Conv2d/Linear weight is pruned.
        cfg: schedule, label noise and distillation settings.
        on_round: called with ("vanilla" | "distilled", record) after every round.

    Returns:
        (the result, the distilled student at the picked round, the dense distilled student of round 0);
        masks baked in, eval mode.
    """
    labels, _ = symmetric_label_noise(data.y_train, cfg.noise, data.num_classes, cfg.seed) if cfg.noise else (data.y_train, None)

    def log(kind: str) -> Callable[[RoundRecord], None] | None:
        return None if on_round is None else (lambda rec: on_round(kind, rec))

    def fresh() -> nn.Module:
        if isinstance(model_cfg, nn.Module):
            return copy.deepcopy(model_cfg)
        return build_model(model_cfg)

    torch.manual_seed(cfg.seed)
    vanilla, vanilla_models = run_pruning(fresh(), data, labels, cfg, label="vanilla", on_round=log("vanilla"))
    teacher_round = max(range(len(vanilla)), key=lambda r: (vanilla[r].val_accuracy, r))
    teacher_logits = predict_logits(vanilla_models[teacher_round], data.x_train)
    del vanilla_models
    torch.manual_seed(cfg.seed)  # the student starts from the same initialisation as the vanilla run
    distilled, student_models = run_pruning(
        fresh(), data, labels, cfg, teacher_logits=teacher_logits, label="distilled", on_round=log("distilled")
    )
    picked, stop = early_stopping_pick([r.val_accuracy for r in distilled], cfg.stop_tolerance)
    vanilla_picked, _ = early_stopping_pick([r.val_accuracy for r in vanilla], cfg.stop_tolerance)
    result = DSD2Result(
        vanilla=vanilla,
        distilled=distilled,
        teacher_round=teacher_round,
        picked_round=picked,
        stop_round=stop,
        vanilla_picked_round=vanilla_picked,
        noise=cfg.noise,
        config={
            **asdict(cfg),
            "model": model_cfg.to_dict() if isinstance(model_cfg, ModelConfig) else {"module": type(model_cfg).__name__},
        },
    )
    return result, student_models[picked], student_models[0]


def plot_curves(result: DSD2Result, path: str | os.PathLike[str]) -> str | None:
    """Accuracy and entropy vs sparsity for both runs as a PNG at ``path``.

    Returns:
        None when written, else a one-line reason (matplotlib is not installed; the JSON holds the same
        numbers): the convention of every plot (:mod:`profiles.plots`).
    """
    from profiles.plots import load_pyplot, save_figure

    plt, reason = load_pyplot()
    if reason is not None:
        return reason
    fig, (acc_ax, ent_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for name, curve, style, color in (
        ("vanilla", result.vanilla, "o-", "tab:blue"),
        ("distilled (DSD²)", result.distilled, "s-", "tab:green"),
    ):
        xs = [100 * r.sparsity for r in curve]
        acc_ax.plot(xs, [100 * r.test_accuracy for r in curve], style, color=color, label=f"{name} test")
        acc_ax.plot(xs, [100 * r.val_accuracy for r in curve], style, color=color, alpha=0.3, label=f"{name} val")
        ent_ax.plot(xs, [r.entropy for r in curve], style, color=color, label=name)
    picked = result.distilled[result.picked_round]
    acc_ax.axvline(100 * picked.sparsity, color="gray", linestyle="--", label="early-stopping pick (DSD²)")
    for ax in (acc_ax, ent_ax):
        # Rounds remove 20% of what remains: a log scale of the remaining weights spaces them evenly.
        ax.set_xscale(
            "function",
            functions=(lambda s: -np.log10(np.clip(1.0001 - s / 100, 1e-4, None)), lambda u: 100 * (1.0001 - 10.0 ** (-u))),
        )
        ax.set_xticks([0, 50, 80, 90, 95, 98, 99])
        last = max(r.sparsity for r in result.vanilla + result.distilled)
        ax.set_xlim(-1, 100 * (1 - 0.8 * (1 - last)))
    acc_ax.set(xlabel="sparsity (%)", ylabel="accuracy (%)", title=f"label noise {result.noise:.0%}")
    ent_ax.set(xlabel="sparsity (%)", ylabel="mean ReLU-input entropy (bits)", title="entropy monitor")
    acc_ax.legend(fontsize=7)
    ent_ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(plt, fig, path)
    return None
