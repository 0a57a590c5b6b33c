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
from distill.progressive.members import Candidate, count_macs, default_candidates

__all__ = ["MIN_TEACHER_MS", "MemberSizing", "latency_candidates"]

MIN_TEACHER_MS = 0.1  # below this teacher p50 the MACs ladder is used (the per-call floor dominates 1/K of it)
RUNGS = (1.0, 1.5, 2.0)  # ladder rungs as multiples of the per-member target latency
SIZING_TIMING = LatencyConfig(rounds=8, calls_per_round=10, warmup=10)


@dataclass(frozen=True)
class MemberSizing:
    """The ladder chosen and what was measured to choose it (latencies in ms, p50 at batch 1, one thread)."""

    candidates: tuple[Candidate, ...]
    basis: str  # "latency" or "macs" (why in ``note``)
    teacher_ms: float
    target_ms: float
    measured: tuple[dict[str, Any], ...] = ()  # one row per timed width: candidate, macs, p50_ms
    note: str = ""
    settings: dict[str, Any] = field(default_factory=dict)

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
    blobs = {"teacher": export_onnx(teacher.eval(), example)}
    teacher_alone = measure_side_by_side(blobs, rows[:64], timing)["teacher"][1]["p50"]
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
    ladder: list[Candidate] = []
    for rung in rungs:
        fits = [r for r in measured if r["p50_ms"] <= target * rung]
        row = max(fits, key=lambda r: r["width"]) if fits else min(measured, key=lambda r: r["p50_ms"])
        chosen = template.with_width(row["width"])
        if chosen not in ladder:
            ladder.append(chosen)
    note = f"member target {target:.3f} ms = teacher p50 {teacher_ms:.3f} ms / {members}"
    return MemberSizing(tuple(ladder), "latency", teacher_ms, target, measured, note, settings)
