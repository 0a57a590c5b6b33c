"""Size B-DISTIL's candidate members by measured latency on this device, so each costs about 1/K of the teacher.

The default ladder (:func:`~distill.progressive.members.default_candidates`) orders students by
multiply-accumulates (MACs). MACs predict ONNX Runtime latency badly on a CPU: at 64x64 inputs a 12M-MAC
ResNet and a 6M-MAC plain CNN take the same ~0.12 ms, and below ~0.1 ms a call's fixed costs dominate. An
anytime ensemble only pays when its K members together cost about one teacher, so the ladder here is
chosen by timing:

1. the teacher and a grid of widths of one student family (the teacher's own when it is a toolkit model,
   else the data's default) are exported untrained (latency does not depend on the weights) and timed at
   batch 1 side by side, interleaved (:func:`distill.lowrank.latency.measure_side_by_side`), so a busy
   machine slows them alike;
2. the target of a member is ``teacher p50 / K``; the first rung is the *widest* student whose p50 is at
   most the target (the most capacity for the time), the next rungs the widest at 1.5x and 2x the target
   (what a round escalates to when the first fails the weak-learning check).

Below :data:`MIN_TEACHER_MS` the teacher is too fast for its 1/K to be timed apart from ONNX Runtime's
per-call floor (~4 us here); :func:`latency_candidates` then says so and returns the MACs ladder.

Teacher-initialised members (:mod:`distill.progressive.inherit`) are sized the same way by
:func:`keep_candidates`: the grid is of *keep ratios* of the channel-pruned teacher instead of widths, and
each rung takes the largest keep whose exported p50 fits (below :data:`MIN_TEACHER_MS`, or with
``basis="macs"``, the largest keep whose MACs fit ``teacher MACs / K`` times the rung).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from distill.data import Dataset
from distill.errors import TrainingError
from distill.lowrank.latency import LatencyConfig, measure_side_by_side
from distill.models import build_model, family_for
from distill.progressive.inherit import ROUND_TO, PrunedCandidate, pruned_teacher
from distill.progressive.members import Candidate, count_macs, default_candidates

__all__ = ["KEEPS", "MIN_TEACHER_MS", "MemberSizing", "keep_candidates", "latency_candidates"]

MIN_TEACHER_MS = 0.1  # below this teacher p50 the MACs ladder is used (the per-call floor dominates 1/K of it)
RUNGS = (1.0, 1.5, 2.0)  # ladder rungs as multiples of the per-member target latency
SIZING_TIMING = LatencyConfig(rounds=8, calls_per_round=10, warmup=10)
KEEPS = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7, 0.8, 0.9)  # keep ratios timed


@dataclass(frozen=True)
class MemberSizing:
    """The ladder chosen and what was measured to choose it (latencies in ms, p50 at batch 1, one thread)."""

    candidates: tuple[Candidate | PrunedCandidate, ...]
    basis: str  # "latency" or "macs" (why in ``note``)
    teacher_ms: float
    target_ms: float
    measured: tuple[dict[str, Any], ...] = ()  # one row per timed width: candidate, macs, p50_ms
    note: str = ""
    settings: dict[str, Any] = field(default_factory=dict)

    def latency_of(self, candidate: Candidate | PrunedCandidate) -> float | None:
        """The measured p50 (ms) of ``candidate``; None when it was not timed."""
        name = candidate.describe()
        return next((float(r["p50_ms"]) for r in self.measured if r["candidate"] == name and "p50_ms" in r), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "basis": self.basis,
            "teacher_ms": self.teacher_ms,
            "target_ms": self.target_ms,
            "candidates": [c.to_dict() for c in self.candidates],
            "measured": [dict(r) for r in self.measured],
            "note": self.note,
            "settings": dict(self.settings),
        }


def _template(teacher: nn.Module, dataset: Dataset) -> Candidate:
    """The family members are grown from: the teacher's (toolkit ResNet / CNN) where it has one, else the data's."""
    config = getattr(teacher, "config", None)
    family = getattr(config, "family", None)
    if family == "resnet":
        return Candidate("resnet", 8, int(config.depth))
    if family == "cnn2d" or family_for(dataset.input_shape) == "cnn2d":
        return Candidate("cnn2d", 8, 3 if min(dataset.input_shape[1:]) >= 48 else 2)
    return default_candidates(dataset)[0]


def _widths(template: Candidate, teacher: nn.Module) -> list[int]:
    top = int(getattr(getattr(teacher, "config", None), "width", 0)) or 64
    return sorted({w for w in (4, 6, 8, 10, 12, 16, 20, 24, 28, 32, 40, 48, 64, 96) if w <= top} | {top})


def _rungs(
    measured: Sequence[dict[str, Any]], size: str, cost: str, target: float, rungs: Sequence[float]
) -> list[dict[str, Any]]:
    """Per rung, the largest ``size`` whose ``cost`` is within ``target * rung`` (else the cheapest row); no repeats."""
    chosen: list[dict[str, Any]] = []
    for rung in rungs:
        fits = [r for r in measured if r[cost] <= target * rung]
        row = max(fits, key=lambda r: r[size]) if fits else min(measured, key=lambda r: r[cost])
        if row not in chosen:
            chosen.append(row)
    return chosen


def _time_teacher(
    teacher: nn.Module, rows: np.ndarray, example: torch.Tensor, timing: LatencyConfig
) -> tuple[dict[str, bytes], float]:
    from exporters import export_onnx  # torch -> ONNX lives with the exporters

    blobs = {"teacher": export_onnx(teacher.eval(), example)}
    return blobs, measure_side_by_side(blobs, rows[:64], timing)["teacher"][1]["p50"]


def latency_candidates(
    teacher: nn.Module,
    dataset: Dataset,
    members: int,
    *,
    template: Candidate | None = None,
    widths: Sequence[int] = (),
    rungs: Sequence[float] = RUNGS,
    timing: LatencyConfig = SIZING_TIMING,
    min_teacher_ms: float = MIN_TEACHER_MS,
) -> MemberSizing:
    """The escalation ladder of a ``members``-member ensemble, each rung sized by measured latency.

    Args:
        teacher: the frozen teacher (a module returning logits in any form ``logits_of`` accepts).
        dataset: its data; validation rows are the timing inputs.
        members: K, the number of members the teacher's latency is divided among.
        template: the family/depth to size (width is searched); None = the teacher's family or the data's.
        widths: widths to time; () = a grid up to the teacher's width.
        rungs: multiples of the target ``teacher_ms / K`` (first = the member's own size).
        timing: rounds and calls of the side-by-side timing.
        min_teacher_ms: below this teacher p50 return the MACs ladder (0 = always size by latency).

    Returns:
        A :class:`MemberSizing`: candidates cheapest first (a rung with no width under its limit takes the
        fastest width measured), the measurements, and ``basis="macs"`` with the reason when the teacher is
        under :data:`MIN_TEACHER_MS`.

    Raises:
        TrainingError: ``members < 1`` or no rungs.
    """
    from exporters import export_onnx  # torch -> ONNX lives with the exporters

    if members < 1 or not rungs:
        raise TrainingError("sizing members needs members >= 1 and at least one rung")
    template = template or _template(teacher, dataset)
    rows = dataset.x_val if len(dataset.x_val) else dataset.x_train
    example = torch.from_numpy(np.ascontiguousarray(rows[:2], dtype=np.float32))
    grid = list(widths) or _widths(template, teacher)
    settings = {"rungs": list(rungs), "timing": timing.describe(), "members": members}
    blobs, teacher_alone = _time_teacher(teacher, rows, example, timing)
    if teacher_alone < min_teacher_ms:  # the students are not even exported
        return MemberSizing(
            default_candidates(dataset),
            "macs",
            teacher_alone,
            teacher_alone / members,
            (),
            f"teacher p50 {teacher_alone:.3f} ms < {min_teacher_ms} ms: 1/K of it is within ONNX Runtime's "
            "per-call floor, so the ladder is ordered by MACs",
            settings,
        )
    students = {w: build_model(template.with_width(w).model_config(dataset)).eval() for w in grid}
    for w, model in students.items():
        blobs[f"w{w}"] = export_onnx(model, example)
    stats = measure_side_by_side(blobs, rows[:64], timing)  # the teacher again, now beside the students
    teacher_ms = stats["teacher"][1]["p50"]
    target = teacher_ms / members
    measured = tuple(
        {
            "candidate": template.with_width(w).describe(),
            "width": w,
            "p50_ms": round(stats[f"w{w}"][1]["p50"], 4),
            "macs": count_macs(students[w], dataset.input_shape),
        }
        for w in grid
    )
    ladder = [template.with_width(int(row["width"])) for row in _rungs(measured, "width", "p50_ms", target, rungs)]
    note = f"member target {target:.3f} ms = teacher p50 {teacher_ms:.3f} ms / {members}"
    return MemberSizing(tuple(ladder), "latency", teacher_ms, target, measured, note, settings)


def keep_candidates(
    teacher: nn.Module,
    dataset: Dataset,
    members: int,
    *,
    keeps: Sequence[float] = KEEPS,
    rungs: Sequence[float] = RUNGS,
    basis: str = "auto",
    timing: LatencyConfig = SIZING_TIMING,
    min_teacher_ms: float = MIN_TEACHER_MS,
    round_to: int | None = ROUND_TO,
) -> MemberSizing:
    """The escalation ladder of teacher-initialised members: keep ratios of the pruned teacher, by latency.

    Rung ``i`` is the largest keep whose exported batch-1 p50 is at most ``rungs[i] * teacher p50 / K``
    (timed side by side with the teacher, as :func:`latency_candidates` times widths); a rung nothing fits
    takes the fastest keep. With ``basis="macs"``, or ``"auto"`` and a teacher under ``min_teacher_ms``,
    nothing is timed past the teacher and the cost is MACs against ``teacher MACs / K``.

    Args:
        teacher: the frozen teacher; must be prunable by Torch-Pruning.
        dataset: its data; validation rows are the timing inputs.
        members: K.
        keeps: the keep ratios tried, each in (0, 1].
        rungs: multiples of the per-member target.
        basis: "latency", "macs" or "auto" (latency unless the teacher is under ``min_teacher_ms``).
        timing: rounds and calls of the side-by-side timing.
        min_teacher_ms: the "auto" threshold.
        round_to: on the latency basis, copies keep multiples of this many channels (the candidates carry it;
            keeps that give the same copy are timed once, the smallest keeping it); None = exact keeps. The
            MACs basis always prunes exactly.

    Returns:
        A :class:`MemberSizing` of :class:`~distill.progressive.inherit.PrunedCandidate` (fewest channels
        first); ``measured`` has keep, macs and (when timed) p50_ms per keep.

    Raises:
        TrainingError: ``members < 1``, no rungs or keeps, an unknown basis, or a teacher that cannot be pruned.
    """
    from exporters import export_onnx  # torch -> ONNX lives with the exporters

    if members < 1 or not rungs or not keeps:
        raise TrainingError("sizing members needs members >= 1, at least one rung and at least one keep ratio")
    if basis not in ("latency", "macs", "auto"):
        raise TrainingError(f"basis '{basis}' is unknown; use 'latency', 'macs' or 'auto'")
    rows = dataset.x_val if len(dataset.x_val) else dataset.x_train
    example = torch.from_numpy(np.ascontiguousarray(rows[:2], dtype=np.float32))
    settings = {"rungs": list(rungs), "members": members, "init": "teacher", "keeps": list(keeps)}
    teacher_macs = count_macs(teacher, dataset.input_shape)
    teacher_ms = 0.0
    blobs: dict[str, bytes] = {}
    if basis != "macs":
        blobs, teacher_ms = _time_teacher(teacher, rows, example, timing)
    by_macs = basis == "macs" or teacher_ms < min_teacher_ms
    # sized by latency, copies keep whole blocks of channels (faster per MAC); by MACs, exact keeps
    round_to = None if by_macs else round_to
    settings["round_to"] = round_to
    copies = {k: pruned_teacher(teacher, k, dataset, round_to=round_to).eval() for k in sorted(set(keeps))}
    macs = {k: count_macs(m, dataset.input_shape) for k, m in copies.items()}
    # Rounding can give two keeps one copy (timed once, under the smaller keep), and a keep so small that a group
    # rounds to no channel leaves that group whole in Torch-Pruning (more MACs than a larger keep): dropped.
    pruned = {
        k: m
        for k, m in copies.items()
        if all(macs[k] <= macs[j] for j in copies if j > k) and all(macs[k] != macs[j] for j in copies if j < k)
    }
    measured = [{"candidate": PrunedCandidate(k, round_to).describe(), "keep": k, "macs": macs[k]} for k in pruned]
    if by_macs:
        target = teacher_macs / members
        chosen = _rungs(measured, "keep", "macs", target, rungs)
        why = "asked for" if basis == "macs" else f"teacher p50 {teacher_ms:.3f} ms < {min_teacher_ms} ms"
        note = f"MACs basis ({why}): member target {target:.0f} MACs = teacher {teacher_macs} / {members}"
        candidates = tuple(PrunedCandidate(r["keep"]) for r in chosen)
        return MemberSizing(candidates, "macs", teacher_ms, teacher_ms / members, tuple(measured), note, settings)
    for k, m in pruned.items():
        blobs[f"k{k}"] = export_onnx(m, example)
    settings["timing"] = timing.describe()
    stats = measure_side_by_side(blobs, rows[:64], timing)  # the teacher again, now beside the pruned copies
    teacher_ms = stats["teacher"][1]["p50"]
    target = teacher_ms / members
    for row in measured:
        row["p50_ms"] = round(stats[f"k{row['keep']}"][1]["p50"], 4)
    chosen = _rungs(measured, "keep", "p50_ms", target, rungs)
    note = f"member target {target:.3f} ms = teacher p50 {teacher_ms:.3f} ms / {members}"
    candidates = tuple(PrunedCandidate(r["keep"], round_to) for r in chosen)
    return MemberSizing(candidates, "latency", teacher_ms, target, tuple(measured), note, settings)
