"""The B-DISTIL loop: distil a teacher into a progressive (anytime) ensemble by boosting against its logits.

Dennis, Shetty, Sevekari, Koishida, Smith, "Progressive Ensemble Distillation: Building Ensembles for
Efficient Inference", NeurIPS 2023 (arXiv:2302.10093; no public code). docs/methods.md §1 marks the
round's formulas unverified; :mod:`distill.progressive.rounds` states the exact ones implemented.

Round ``t`` (members ``1..t-1`` frozen):

1. residual ``r = g - F_{t-1}`` on the training data, its temperature ``tau`` and the weights
   ``K+, K-`` (:func:`~distill.progressive.rounds.boosting_weights`);
2. for each rung of the escalation ladder — every candidate student in increasing cost, first with
   the configured connections (default: the features of member ``t-1``), then with the features of
   *every* earlier member (a connection costs one small Linear, much less than a wider student) —
   train a fresh :class:`~distill.progressive.members.BoostedMember` on the log-barrier objective and
   compute the weak-learning edge on the validation split; accept the first with
   ``edge >= gamma`` and a positive line-search step;
3. set the member's scale to the step ``eta_t`` so it outputs ``eta_t tanh(h)``, and
   ``F_t = F_{t-1} + eta_t tanh(h_t)`` (exported with ``combine="sum"``).

If no rung passes, boosting stops with the members found so far (the report says why).

Refinement, off by default and labelled ``refined`` in the report when used: ``refine_epochs > 0``
fine-tunes each accepted member's scaled output before the next round, by least squares to the residual
(``refine_loss="logits"``) or by Hinton KD of the prefix with the member against the teacher, with labels
(``refine_loss="kd"``, :class:`~distill.progressive.rounds.BoostedKD`). Neither is part of the paper's round.
On cluttered MNIST (teacher init, KL step, 20k x 1 epoch, ``benchmarks/anytime_value.py ... --refine-epochs 1
--refine-loss kd``) the KD refinement lifted F_1..F_4 from 96.16 / 96.20 / 96.31 / 96.38% to 96.98 / 97.03 /
97.07 / 97.02% (teacher 97.95%; RESCHED of the same sizes 96.69 / 96.88 / 97.27 / 97.31%): the barrier round
trains a member for the residual's extreme logits, the KD pass for the prefix's softmax. It doubles each
member's training, and later members still add little. Why not, tried one change at a time with
``benchmarks/bdistil_init.py`` (20k x 1 epoch, one torch thread, the fixed keep ladder 0.35 / 0.5 / 0.6 of that run;
a fourth member never passed the check): as is, 97.02 / 97.13 / 97.21%; member ``t > 1`` starting from the teacher's
head instead of a zeroed one, 97.02 / 97.10 / 97.10%; a trained gain on the step during the refinement (so the KD pass
may enlarge a member the KL step made small, e.g. member 2's 0.36), 96.98 / 97.04 / 97.04% (the gain grew member 2's
step only to 0.53: the prefix's KD loss does not ask for more); a fixed ``temperature=8``, 96.75% and no second
member. What does move F_K is member 1's size: a run whose timing (disturbed by a second job) sized every member at
keep 0.5 (0.41 ms instead of 0.25 ms) gave 97.45 / 97.43 / 97.47 / 97.50%. So on this workload F_K is about F_1, and F_1 at
keep 0.35 is 0.3 point above the same copy distilled plainly for half as long (NO-RESCHED t = 1, 96.69%). With
members that keep multiples of 8 channels (wider at the same latency, :data:`~distill.progressive.inherit.ROUND_TO`)
the same command gave 97.23 / 97.26 / 97.27 / 97.20% (RESCHED 96.79 / 96.98 / 96.92 / 97.33%, NO-RESCHED 96.79 /
97.54 / 97.72 / 97.82%; ``benchmarks/results/anytime_value_cluttered_round8.*``).

Measured on MNIST (20k training images, 3 epochs per member, cnn2d w8 members): the refinement lowers
the training residual's RMS from 2.5 (three members; no fourth passed the check) to 1.3 (four members)
but not the test accuracy (98.4% and 98.3%). What closed F_K's gap to the teacher was training: with
w6 members (the MACs ladder) F_4 is 98.14% after 3 epochs on 20k images and 98.98% after 6 epochs on all
54k (teacher 99.28%); members sized by latency instead (wider at the same time) gave 97.91% at 20k x 3
(``benchmarks/results/anytime_value_mnist*.json``, ``bdistil_mnist_54k6ep.json``).

Teacher-initialised members (``init="teacher"``, :mod:`distill.progressive.inherit`): every rung is a
channel-pruned copy of the teacher (keep ratios sized by measured latency,
:func:`~distill.progressive.sizing.keep_candidates`), trained on the same barrier objective; they take no
connections (``connect="none"``); member 1 starts from the head set by ``first_head``, member ``t > 1`` from
``head_start``. Measured on MNIST (``benchmarks/bdistil_init.py``, 4 members, one epoch; teacher 99.28%,
keep 0.45 each, sized by MACs as the teacher takes < 0.1 ms here): on 5k rows F_1..F_4 = 98.33 / 97.99 / 98.24 %
(a fourth member failed the check) keeping the teacher's head everywhere, 98.33 / 98.37 / 98.39 / 98.25 with
t > 1 zeroed, 98.89 / 98.42 / 98.39 / 98.35 with every head rescaled (least squares to the round's target
``atanh(f*)``, here ~0.28 at t = 1, ~0.08 then ~0.03 then 0 later); from scratch 80.84 / 81.52 / 88.30 / 89.99.
On 20k rows, rescaled: 99.10 / 98.60 / 98.65 / 98.58 (t > 1 zeroed: 99.10 / 98.52 / 98.54 / 98.59), against
RESCHED 98.97 at every t and NO-RESCHED 98.97 / 99.22 / 99.22 / 99.26 of the same (pruned-teacher) students.
Member 1 is then within 0.2 point of the teacher and later members *lower* accuracy: they reach edges ~1.0 on
the residual, but its exponential weights sit on the extreme logits of confident samples, so their outputs on
the uncertain samples, which decide the argmax, are barely constrained (a fixed ``temperature=8`` flattens the
weights: F_2 98.81%, but member 3 then fails the edge check).

The RESCHED and NO-RESCHED baselines live in :mod:`distill.progressive.baselines`; given the ensemble's
candidates they get the same initialisation.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from distill.data import Dataset
from distill.errors import TrainingError
from distill.losses import LogitRegression
from distill.progressive.inherit import HEAD_STARTS, INITS, PrunedCandidate, build_student, start_head
from distill.progressive.members import (
    BoostedMember,
    Candidate,
    Ensemble,
    EnsembleReport,
    MemberReport,
    count_macs,
    default_candidates,
)
from distill.progressive.rounds import (
    BarrierLoss,
    BoostedKD,
    boosting_weights,
    kl_step,
    line_search_step,
    pack_weights,
    residual_temperature,
    weak_learning_edge,
)
from distill.progressive.sizing import MIN_TEACHER_MS, MemberSizing, keep_candidates, latency_candidates
from distill.train import FitConfig, fit, predict_logits, scaled_epochs

__all__ = ["CONNECT_RULES", "SIZINGS", "ProgressiveConfig", "limit_training", "progressive_ensemble"]

CONNECT_RULES = ("none", "previous", "all")
SIZINGS = ("macs", "latency", "auto")
STEPS = ("potential", "kl")
REFINE_LOSSES = ("logits", "kd")


@dataclass(frozen=True)
class ProgressiveConfig:
    """How B-DISTIL builds an ensemble."""

    members: int = 4  # K: members to build (fewer if no candidate passes the check)
    # escalation ladder, cheapest first; () = chosen by ``sizing``. Candidate for init="scratch",
    # PrunedCandidate (a keep ratio of the teacher) for init="teacher"
    candidates: tuple[Candidate | PrunedCandidate, ...] = ()
    # "scratch": members are fresh students; "teacher": channel-pruned copies of the teacher (distill.progressive.inherit)
    init: str = "scratch"
    # init="teacher", members t > 1: start of the pruned copy's classifier head ("keep", "zero", "rescale"; see
    # inherit.start_head); "rescale" measured best (module docstring)
    head_start: str = "rescale"
    # init="teacher", member 1: "keep" (h starts at the pruned teacher's logits) or "rescale" (to the barrier's target)
    first_head: str = "rescale"
    # how an empty ladder is chosen: "macs" (default_candidates), "latency" (distill.progressive.sizing: each
    # member ~1/K of the teacher's measured ORT latency), "auto" (latency where the teacher takes >= 0.1 ms)
    sizing: str = "macs"
    # first-try connections of member t: "none", "previous" (t-1) or "all"; "" = "previous", or "none" for
    # init="teacher" (a pruned teacher's forward has no connection inputs, so it takes no other rule)
    connect: str = ""
    gamma: float = 0.05  # weak-learning margin: accept a member when its validation edge >= gamma
    # the member's scale: "potential" (the cosh line search of the reconstruction) or "kl" (the step that best
    # matches the teacher's softmax; rounds.kl_step, not in the paper)
    step: str = "potential"
    temperature: float = 0.0  # residual temperature tau; 0 = the residual's RMS, recomputed every round
    epochs: int = 0  # training epochs per attempt; 0 = scaled to the data (scaled_epochs)
    lr: float = 3e-3  # peak Adam learning rate (cosine to 0)
    batch_size: int = 128
    refine_epochs: int = 0  # > 0: the labelled refinement of each accepted member (not in the paper)
    # the refinement's loss: "logits" (least squares of the scaled output to the residual) or "kd" (Hinton KD of
    # the prefix F_{t-1} + member against the teacher, with labels: rounds.BoostedKD)
    refine_loss: str = "logits"
    center: bool = False  # subtract each sample's mean teacher logit (softmax-invariant); no gain measured on MNIST
    seed: int = 0
    progress: bool = True  # progress bars on stderr

    def __post_init__(self) -> None:
        object.__setattr__(self, "candidates", tuple(self.candidates))
        if self.members < 1:
            raise TrainingError("an ensemble needs --members >= 1")
        if self.sizing not in SIZINGS:
            raise TrainingError(f"sizing '{self.sizing}' is unknown; use one of {list(SIZINGS)}")
        if self.refine_loss not in REFINE_LOSSES:
            raise TrainingError(f"refine_loss '{self.refine_loss}' is unknown; use one of {list(REFINE_LOSSES)}")
        if self.step not in STEPS:
            raise TrainingError(f"step '{self.step}' is unknown; use one of {list(STEPS)}")
        if self.init not in INITS:
            raise TrainingError(f"init '{self.init}' is unknown; use one of {list(INITS)}")
        if self.head_start not in HEAD_STARTS:
            raise TrainingError(f"head_start '{self.head_start}' is unknown; use one of {list(HEAD_STARTS)}")
        if self.first_head not in ("keep", "rescale"):
            raise TrainingError(f"first_head '{self.first_head}' is unknown; use 'keep' or 'rescale'")
        if not self.connect:
            object.__setattr__(self, "connect", "none" if self.init == "teacher" else "previous")
        if self.connect not in CONNECT_RULES:
            raise TrainingError(f"connect '{self.connect}' is unknown; use one of {list(CONNECT_RULES)}")
        if self.init == "teacher" and self.connect != "none":
            raise TrainingError(
                "teacher-initialised members take no connections (the pruned teacher's forward has no inputs for "
                "them); use connect='none' (--connect none) or init='scratch'"
            )
        if not 0.0 <= self.gamma < 2.0:
            raise TrainingError(f"gamma must be in [0, 2) (the edge of |f| < 1 lies in (-2, 2)), not {self.gamma}")
        if self.temperature < 0 or self.epochs < 0 or self.refine_epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise TrainingError(
                "temperature must be >= 0, epochs >= 0 (0 = scaled to the data), refine_epochs >= 0, batch_size >= 1 and lr > 0"
            )
        kind = PrunedCandidate if self.init == "teacher" else Candidate
        if not all(isinstance(c, kind) for c in self.candidates):
            raise TrainingError(f"with init='{self.init}' the candidates must be {kind.__name__} instances")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["candidates"] = [c.to_dict() for c in self.candidates]
        return d


def limit_training(dataset: Dataset, rows: int | None) -> Dataset:
    """``dataset`` with only the first ``rows`` training samples (a random subset: the split is shuffled).

    Trim *after* the teacher is resolved: the teacher cache is keyed by the full data's fingerprint.
    """
    if rows is None or rows >= len(dataset.x_train):
        return dataset
    if rows < 1:
        raise TrainingError(f"--limit-train must be >= 1, not {rows}")
    return replace(dataset, x_train=dataset.x_train[:rows], y_train=dataset.y_train[:rows])


class _IndexedMember(nn.Module):
    """Feeds a member by row index so :func:`distill.train.fit` can train it on cached connections.

    ``fit`` passes a batch of its ``x``; here ``x`` is ``arange(N)``, and the member gets the real inputs
    and the earlier members' (frozen, precomputed) features of those rows.
    """

    def __init__(self, member: BoostedMember, x: torch.Tensor, connections: Sequence[torch.Tensor], *, scaled: bool) -> None:
        super().__init__()
        self.member = member
        self.inputs = x  # plain tensors, not parameters: nothing here is trained but the member
        self.connections = list(connections)
        self.scaled = scaled  # True: train eta * tanh(h) (refinement); False: h for the barrier

    def forward(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        args = (self.inputs[idx], *[c[idx] for c in self.connections])
        return self.member(*args) if self.scaled else self.member.raw(*args)


@torch.no_grad()
def _raw_outputs(
    member: BoostedMember, x: np.ndarray, connections: Sequence[np.ndarray], batch_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """``(h, features)`` of ``member`` on ``x`` with cached connection features (float32 numpy)."""
    member.eval()
    hs, fs = [], []
    for s in range(0, len(x), batch_size):
        h, f = member.raw(
            torch.from_numpy(x[s : s + batch_size]), *[torch.from_numpy(c[s : s + batch_size]) for c in connections]
        )
        hs.append(h.numpy())
        fs.append(f.numpy())
    return np.concatenate(hs), np.concatenate(fs)


def _ladder(
    t: int, candidates: Sequence[Candidate | PrunedCandidate], connect: str, *, escalate: bool = True
) -> Iterator[tuple[Candidate | PrunedCandidate, tuple[int, ...]]]:
    """The escalation order of round ``t`` (0-based): per candidate, base connections, then all earlier.

    ``escalate=False`` (teacher-initialised members, which take no connections): each candidate once, as is.
    """
    every = tuple(range(t))
    base = {"none": (), "previous": every[-1:], "all": every}[connect]
    for candidate in candidates:
        yield candidate, base
        if escalate and base != every:
            yield candidate, every


def _barrier_target(k_plus: np.ndarray, k_minus: np.ndarray) -> np.ndarray:
    """``atanh(f*)`` = ``0.5 log(K+ / K-)``: the raw output whose tanh minimises the barrier entry by entry."""
    tiny = np.finfo(np.float64).tiny
    return 0.5 * (np.log(np.maximum(k_plus, tiny)) - np.log(np.maximum(k_minus, tiny)))


def _fit(
    model: nn.Module,
    n: int,
    targets: np.ndarray,
    loss: Any,
    cfg: ProgressiveConfig,
    *,
    epochs: int,
    seed: int,
    desc: str,
    labels: np.ndarray | None = None,
) -> None:
    index = np.arange(n, dtype=np.int64)
    fit_cfg = FitConfig(epochs=epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=seed, progress=cfg.progress, desc=desc)
    fit(model, index, index if labels is None else labels, loss, fit_cfg, teacher_logits=targets)


def progressive_ensemble(teacher: nn.Module, dataset: Dataset, cfg: ProgressiveConfig | None = None) -> Ensemble:
    """Build a B-DISTIL ensemble of ``teacher`` on ``dataset``'s training split.

    Args:
        teacher: the frozen teacher (``forward(x) -> (logits, features)``).
        dataset: training data for the rounds; the validation split scores the weak-learning check.
        cfg: rounds, candidates, connections, margin, schedule; None = defaults.

    Returns:
        ``Ensemble(members, connections, report)``: members output ``eta_t tanh(h_t)`` and combine by
        sum; ``connections[t]`` lists the earlier members whose features member ``t`` takes.

    Raises:
        TrainingError: not even the first member passes the weak-learning check.
    """
    cfg = cfg or ProgressiveConfig()
    sizing: MemberSizing | None = None
    candidates: Sequence[Candidate | PrunedCandidate]
    if cfg.candidates:
        candidates = cfg.candidates
    elif cfg.init == "teacher":
        sizing = keep_candidates(teacher, dataset, cfg.members, basis=cfg.sizing)
        candidates = sizing.candidates
    elif cfg.sizing == "macs":
        candidates = default_candidates(dataset)
    else:
        sizing = latency_candidates(
            teacher, dataset, cfg.members, min_teacher_ms=0.0 if cfg.sizing == "latency" else MIN_TEACHER_MS
        )
        candidates = sizing.candidates
    epochs = cfg.epochs or scaled_epochs(len(dataset.x_train))
    x_train, x_val = dataset.x_train, dataset.x_val
    g_train, g_val = predict_logits(teacher, x_train).astype(np.float64), predict_logits(teacher, x_val).astype(np.float64)
    if cfg.center:
        g_train = g_train - g_train.mean(axis=1, keepdims=True)
        g_val = g_val - g_val.mean(axis=1, keepdims=True)
    teacher_val_pred = g_val.argmax(1)
    x_tensor = torch.from_numpy(np.ascontiguousarray(x_train))
    f_train, f_val = np.zeros_like(g_train), np.zeros_like(g_val)
    feats_train: list[np.ndarray] = []
    feats_val: list[np.ndarray] = []
    members: list[nn.Module] = []
    sources: list[tuple[int, ...]] = []
    reports: list[MemberReport] = []
    stopped, stopped_attempts = "", []
    for t in range(cfg.members):
        r_train, r_val = g_train - f_train, g_val - f_val
        tau = cfg.temperature or residual_temperature(r_train)
        packed = pack_weights(*boosting_weights(r_train, tau))
        val_plus, val_minus = boosting_weights(r_val, tau)
        attempts: list[dict[str, Any]] = []
        accepted: tuple[BoostedMember, tuple[int, ...], Candidate | PrunedCandidate, float] | None = None
        started = time.perf_counter()
        head_scale: float | None = None
        inherit = cfg.init == "teacher"
        for attempt, (candidate, conns) in enumerate(_ladder(t, candidates, cfg.connect, escalate=not inherit)):
            torch.manual_seed(cfg.seed * 7919 + 100 * t + attempt)
            dims = [feats_train[j].shape[1] for j in conns]
            body = build_student(candidate, dataset, teacher, dims)
            start = (cfg.head_start if t else cfg.first_head) if inherit else "keep"
            if start != "keep":  # the copy outputs the teacher's logits; the round's target is atanh(f*)
                rows = slice(0, min(len(x_train), 4096))
                target = _barrier_target(*boosting_weights(r_train[rows], tau))
                head_scale = start_head(body, start, x_train[rows], target, dataset)
            elif inherit:
                head_scale = 1.0
            member = BoostedMember(body)
            trainable = _IndexedMember(member, x_tensor, [torch.from_numpy(feats_train[j]) for j in conns], scaled=False)
            _fit(
                trainable,
                len(x_train),
                packed,
                BarrierLoss(),
                cfg,
                epochs=epochs,
                seed=cfg.seed + t,
                desc=f"bdistil member {t + 1} ({candidate.describe()})",
            )
            h_val, _ = _raw_outputs(member, x_val, [feats_val[j] for j in conns])
            edge = weak_learning_edge(val_plus, val_minus, np.tanh(h_val.astype(np.float64)))
            step = 0.0
            if edge >= cfg.gamma and cfg.step == "kl":  # on held-out rows, like the edge: a step that overfits is not taken
                step = kl_step(g_val, f_val, np.tanh(h_val.astype(np.float64)))
            elif edge >= cfg.gamma:
                h_train, _ = _raw_outputs(member, x_train, [feats_train[j] for j in conns])
                step = line_search_step(r_train, np.tanh(h_train.astype(np.float64)), tau)
            ok = edge >= cfg.gamma and step > 0.0
            attempts.append(
                {"candidate": candidate.describe(), "connections": list(conns), "edge": edge, "step": step, "accepted": ok}
            )
            if ok:
                accepted = (member, conns, candidate, step)
                break
        if accepted is None:
            stopped = f"no candidate reached a validation edge >= gamma={cfg.gamma} for member {t + 1}"
            stopped_attempts = attempts
            break
        member, conns, candidate, step = accepted
        member.set_scale(step)
        if cfg.refine_epochs:
            trainable = _IndexedMember(member, x_tensor, [torch.from_numpy(feats_train[j]) for j in conns], scaled=True)
            kd = cfg.refine_loss == "kd"
            _fit(
                trainable,
                len(x_train),
                np.concatenate([g_train, f_train], axis=1).astype(np.float32) if kd else r_train.astype(np.float32),
                BoostedKD() if kd else LogitRegression(),
                cfg,
                epochs=cfg.refine_epochs,
                seed=cfg.seed + t,
                desc=f"bdistil refine {t + 1}",
                labels=dataset.y_train if kd else None,
            )
        h_train, phi_train = _raw_outputs(member, x_train, [feats_train[j] for j in conns])
        h_val, phi_val = _raw_outputs(member, x_val, [feats_val[j] for j in conns])
        scale = float(member.scale)
        f_train = f_train + scale * np.tanh(h_train.astype(np.float64))
        f_val = f_val + scale * np.tanh(h_val.astype(np.float64))
        feats_train.append(phi_train)
        feats_val.append(phi_val)
        members.append(member)
        sources.append(conns)
        dims = [feats_train[j].shape[1] for j in conns]
        reports.append(
            MemberReport(
                member=t + 1,
                candidate=candidate,
                connections=conns,
                params=sum(p.numel() for p in member.parameters()),
                macs=count_macs(member, dataset.input_shape, dims),
                val_accuracy=float((f_val.argmax(1) == dataset.y_val).mean()),
                val_agreement=float((f_val.argmax(1) == teacher_val_pred).mean()),
                seconds=round(time.perf_counter() - started, 2),
                temperature=tau,
                step=scale,
                residual_rms=float(np.sqrt(np.mean((g_train - f_train) ** 2))),
                attempts=tuple(attempts),
                latency_ms=sizing.latency_of(candidate) if sizing is not None else None,
                head_scale=head_scale,
            )
        )
    if not members:
        raise TrainingError(f"{stopped}; lower --gamma or add larger candidate students")
    report = EnsembleReport(
        method="bdistil" + ("+refined" if cfg.refine_epochs else ""),
        combine="sum",
        members=tuple(reports),
        teacher_val_accuracy=float((teacher_val_pred == dataset.y_val).mean()),
        stopped=stopped,
        stopped_attempts=tuple(stopped_attempts),
        settings={
            **cfg.to_dict(),
            "candidates": [c.to_dict() for c in candidates],
            **({"member_sizing": sizing.to_dict()} if sizing is not None else {}),
        },
    )
    return Ensemble(members, sources, report)
