"""Low-rank students: factor a trained teacher spectrally, then distil it back to accuracy.

The recipe (Kwon et al.'s compressed network, carried to real layers):

1. choose a rank per Linear/Conv layer: by retained spectral energy, one fixed rank, or the most
   faithful candidate (the largest common rank, or the largest energy) whose exported model meets a
   latency target *measured with ONNX Runtime on this device*, either absolute (ms) or a speed-up over
   the teacher timed side by side (FLOP counts do not predict CPU latency; the measurement does);
2. replace each chosen layer by its rank-``r`` factor pair, initialised from the SVD of the trained
   weights (the best rank-``r`` approximation, so the student starts close to the teacher);
3. distil from the teacher with the shared losses (:mod:`distill.losses`, default Hinton KD) through the
   shared training loop (:func:`distill.train.distil`).

The student keeps the teacher's own ``forward`` (only layers are swapped), so it returns what the teacher
returns and exports as a one-member bundle; each factor stays its own MatMul/Gemm/Conv node in the graph.
The teacher may be any module (:mod:`distill.layers` finds its layers and its classifier head by tracing
one small batch, not by attribute names).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from distill.data import Dataset
from distill.distributed import on_main
from distill.errors import TrainingError
from distill.layers import classifier_head
from distill.losses import LOSSES, make_loss
from distill.lowrank.factorize import LayerPlan, describe_plans, factorize, plan_ranks
from distill.lowrank.latency import LatencyConfig, measure_side_by_side
from distill.models import count_params
from distill.train import FitConfig, accuracy, distil, predict_logits

__all__ = ["ENERGY_LADDER", "LowRankConfig", "LowRankReport", "RANK_LADDER", "lowrank_student", "plan_for_latency"]

# Candidates a latency target walks, from the most faithful down (search="energy" / search="rank").
ENERGY_LADDER = (0.995, 0.99, 0.98, 0.97, 0.95, 0.93, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2)
RANK_LADDER = (256, 192, 128, 96, 64, 48, 32, 24, 16, 12, 8, 6, 4, 3, 2)
# Measured on the MNIST teacher (benchmarks/lowrank_students.py): at a 2x speed-up target the energy
# search cut every layer alike, the classifier head and first conv included (84.8% accuracy after one
# epoch), while one common rank left those small layers dense and kept 99.2%; so "rank" is the default.
SEARCHES = ("energy", "rank")
# Timing one candidate beside the teacher. Exporting costs seconds and a call ~0.1 ms, so many calls are
# cheap; with few (8 x 25) a 2-core machine under load once misordered ranks 6 and 16 in the search.
SEARCH_TIMING = LatencyConfig(rounds=20, calls_per_round=50, warmup=100)


@dataclass(frozen=True)
class LowRankConfig:
    """How to build one low-rank student. Exactly one of ``energy``, ``rank``, ``latency_ms``, ``speedup``."""

    energy: float | None = None  # keep this fraction of each layer's spectral energy (e.g. 0.9)
    rank: int | None = None  # one rank for every factorable layer
    latency_ms: float | None = None  # target ORT p50 latency at batch 1 on this device (ms)
    speedup: float | None = None  # target ORT p50 speed-up over the teacher at batch 1, timed side by side
    factors: int = 2  # 2: down/up pair; 3: the paper's V^T, diag(S), U chain
    epochs: int = 3  # distillation epochs after the spectral init (0 = none)
    lr: float = 1e-3  # peak Adam learning rate (cosine to 0)
    batch_size: int = 128
    loss: str = "kd"  # a name in distill.losses.LOSSES
    loss_params: tuple[tuple[str, object], ...] = ()  # e.g. (("alpha", 0.9), ("temperature", 4.0))
    seed: int = 0
    progress: bool = False  # progress bar while distilling
    latency: LatencyConfig = SEARCH_TIMING  # how a latency/speed-up target times each candidate
    keep_head: bool = True  # keep the last Linear/Conv (the classifier) dense: a rank below the class count
    # only constrains the logits, and the head costs little
    search: str = "rank"  # what a latency/speed-up target walks: one common "rank", or "energy"
    ladder: tuple[float, ...] = ()  # candidates in decreasing order; () = RANK_LADDER or ENERGY_LADDER

    def __post_init__(self) -> None:
        chosen = [n for n in ("energy", "rank", "latency_ms", "speedup") if getattr(self, n) is not None]
        if len(chosen) != 1:
            raise TrainingError(f"set exactly one of energy, rank, latency_ms or speedup (got {chosen or 'none'})")
        if self.energy is not None and not 0.0 < self.energy <= 1.0:
            raise TrainingError(f"energy {self.energy} must lie in (0, 1], e.g. 0.9")
        if self.rank is not None and self.rank < 1:
            raise TrainingError(f"rank {self.rank} must be >= 1")
        if self.latency_ms is not None and not self.latency_ms > 0:
            raise TrainingError(f"latency_ms {self.latency_ms} must be > 0")
        if self.speedup is not None and not self.speedup > 1.0:
            raise TrainingError(f"speedup {self.speedup} must be > 1 (e.g. 2.0 for half the teacher's latency)")
        if self.factors not in (2, 3):
            raise TrainingError(f"factors must be 2 or 3, got {self.factors}")
        if self.search not in SEARCHES:
            raise TrainingError(f"search '{self.search}' is unknown; use one of {list(SEARCHES)}")
        _check_ladder(self.search, self.ladder)
        if self.loss not in LOSSES:
            raise TrainingError(f"loss '{self.loss}' is unknown; use one of {sorted(LOSSES)}")
        FitConfig(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size)  # same checks as the loop


@dataclass(frozen=True)
class LowRankReport:
    """What was built and how well it does (JSON-ready through :meth:`to_dict`)."""

    layers: tuple[dict[str, object], ...]  # per layer: rank, full rank, energy kept, MACs ratio
    teacher_params: int
    student_params: int
    teacher_accuracy: float  # test accuracy
    init_accuracy: float  # test accuracy of the spectrally initialised student, before distillation
    student_accuracy: float  # test accuracy after distillation
    energy: float | None  # the energy used (given, or chosen by an energy search)
    rank: int | None = None  # the common rank used (given, or chosen by a rank search)
    latency_search: tuple[dict[str, float], ...] = ()  # candidate -> measured p50 (ms) beside the teacher
    teacher_latency_ms: float | None = None  # median p50 at batch 1 measured beside the candidates
    seconds: float = 0.0  # wall time of the whole build
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _example(dataset: Dataset) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(dataset.x_val[:4] if len(dataset.x_val) >= 2 else dataset.x_train[:4]))


def _check_ladder(search: str, ladder: tuple[float, ...]) -> None:
    if not ladder:
        return
    if list(ladder) != sorted(set(ladder), reverse=True):
        raise TrainingError("the ladder must hold distinct candidates in decreasing order")
    if search == "energy" and any(not 0.0 < e <= 1.0 for e in ladder):
        raise TrainingError("energy candidates must lie in (0, 1]")
    if search == "rank" and any(r < 1 or int(r) != r for r in ladder):
        raise TrainingError("rank candidates must be whole numbers >= 1")


def _plans(
    teacher: nn.Module, search: str, value: float, keep: Mapping[str, str], example: torch.Tensor | None = None
) -> list[LayerPlan]:
    if search == "energy":
        return plan_ranks(teacher, energy=value, keep=keep, example=example)
    return plan_ranks(teacher, rank=int(value), keep=keep, example=example)


def _head(teacher: nn.Module, example: torch.Tensor) -> dict[str, str]:
    """{name: reason} for the classifier head: the last Linear/Conv the forward calls (:mod:`distill.layers`)."""
    head = classifier_head(teacher, example)
    return {} if head is None else {head: "classifier head (kept dense; keep_head=False factors it)"}


def plan_for_latency(
    teacher: nn.Module,
    dataset: Dataset,
    latency_ms: float | None = None,
    *,
    speedup: float | None = None,
    search: str = "rank",
    ladder: tuple[float, ...] = (),
    factors: int = 2,
    config: LatencyConfig | None = None,
    keep: Mapping[str, str] | tuple[str, ...] = (),
) -> tuple[list[LayerPlan], float, list[dict[str, float]], float]:
    """The most faithful candidate in ``ladder`` whose exported student meets a latency target.

    Candidates are spectrally initialised (untrained; latency does not depend on the weight values),
    exported with :func:`exporters.export_onnx` and timed at batch 1 beside the teacher, interleaved.
    Latency falls along the ladder, so a binary search measures only a few candidates. On a shared CPU
    an absolute target moves with the load; a ``speedup`` target compares student and teacher timed in
    the same rounds, which the load affects alike.

    Args:
        teacher: the trained model.
        dataset: its data (validation rows are the timing inputs).
        latency_ms: target p50 at batch 1, in milliseconds; or
        speedup: target ratio teacher p50 / student p50 at batch 1 (e.g. 2.0).
        search: "rank" (one common rank, capped per layer) or "energy" (retained spectral energy).
        ladder: candidates in decreasing order; () = :data:`RANK_LADDER` or :data:`ENERGY_LADDER`.
        factors: 2 or 3 factors per layer.
        config: how to time the candidates.
        keep: layer names that stay dense (a mapping gives the reason each plan reports).

    Returns:
        (plans, chosen candidate, search log rows ``{search, "p50_ms", "teacher_p50_ms"}``, median
        teacher p50 ms).

    Raises:
        TrainingError: not exactly one target, a bad ladder, or even the cheapest candidate misses the
            target (the message gives what was measured).
    """
    from exporters import export_onnx  # torch -> ONNX lives with the exporters

    if (latency_ms is None) == (speedup is None):
        raise TrainingError("give exactly one of latency_ms or speedup")
    if search not in SEARCHES:
        raise TrainingError(f"search '{search}' is unknown; use one of {list(SEARCHES)}")
    _check_ladder(search, ladder)
    ladder = ladder or (RANK_LADDER if search == "rank" else ENERGY_LADDER)
    config = config or SEARCH_TIMING
    example = _example(dataset)
    keep = dict(keep) if isinstance(keep, Mapping) else {name: "kept dense (keep)" for name in keep}
    rows = dataset.x_val if len(dataset.x_val) else dataset.x_train
    teacher_blob = export_onnx(teacher, example)
    log: list[dict[str, float]] = []

    def meets(value: float) -> bool:
        blob = export_onnx(factorize(teacher, _plans(teacher, search, value, keep, example), factors=factors), example)
        stats = measure_side_by_side({"teacher": teacher_blob, "student": blob}, rows, config)
        student_ms, teacher_ms = stats["student"][1]["p50"], stats["teacher"][1]["p50"]
        log.append({search: value, "p50_ms": student_ms, "teacher_p50_ms": teacher_ms})
        if latency_ms is not None:
            return student_ms <= latency_ms
        assert speedup is not None
        return teacher_ms >= speedup * student_ms

    lo, hi = 0, len(ladder) - 1  # find the first (most faithful) ladder index that meets the target
    if not meets(ladder[hi]):
        last = log[-1]
        # name only the flag of the target asked for (demo has --speedup but no --latency-ms)
        target, fix = (
            (f"{latency_ms} ms", "raise --latency-ms")
            if latency_ms is not None
            else (f"a {speedup}x speed-up", "lower --speedup")
        )
        raise TrainingError(
            f"even {search} {ladder[hi]} runs at {last['p50_ms']:.4f} ms p50 beside the teacher's "
            f"{last['teacher_p50_ms']:.4f} ms, missing {target}; {fix}"
        )
    while lo < hi:
        mid = (lo + hi) // 2
        if meets(ladder[mid]):
            hi = mid
        else:
            lo = mid + 1
    teacher_ms = float(np.median([row["teacher_p50_ms"] for row in log]))
    return _plans(teacher, search, ladder[hi], keep, example), ladder[hi], log, teacher_ms


def lowrank_student(
    teacher: nn.Module,
    dataset: Dataset,
    cfg: LowRankConfig,
    *,
    teacher_logits: np.ndarray | None = None,
) -> tuple[nn.Module, LowRankReport]:
    """Factor ``teacher`` into a low-rank student and distil it (the teacher is not modified).

    Args:
        teacher: any trained classifier whose forward returns logits in a form
            :func:`distill.logits.logits_of` accepts (a toolkit model, a user's module, a loaded ``.pt2``).
            Every Linear/Conv it calls is a candidate; the report's ``layers`` rows say which were
            factored and, in ``note``, why the others stay dense.
        dataset: the data the teacher was trained on (train split distils, test split reports).
        cfg: rank choice and distillation schedule.
        teacher_logits: the teacher's logits on ``dataset.x_train`` when already computed (building
            several students from one teacher then pays for them once).

    Returns:
        (student in eval mode, report).

    Raises:
        TrainingError: a bad configuration, or a latency target no candidate meets.
    """
    start = time.perf_counter()
    teacher.eval()
    search: list[dict[str, float]] = []
    teacher_ms: float | None = None
    energy, rank = cfg.energy, cfg.rank
    example = _example(dataset)
    keep = _head(teacher, example) if cfg.keep_head else {}
    if cfg.latency_ms is not None or cfg.speedup is not None:
        # Timed on rank 0 alone under torchrun (distill.distributed.on_main): every rank builds its choice.
        plans, chosen, search, teacher_ms = on_main(
            lambda: plan_for_latency(
                teacher,
                dataset,
                cfg.latency_ms,
                speedup=cfg.speedup,
                search=cfg.search,
                ladder=cfg.ladder,
                factors=cfg.factors,
                config=cfg.latency,
                keep=keep,
            )
        )
        if cfg.search == "energy":
            energy = chosen
        else:
            rank = int(chosen)
    elif cfg.energy is not None:
        plans = plan_ranks(teacher, energy=cfg.energy, keep=keep, example=example)
    else:
        plans = plan_ranks(teacher, rank=cfg.rank, keep=keep, example=example)
    if not any(p.factor for p in plans):
        raise TrainingError("no layer gets cheaper at this rank/energy; choose a lower --rank or --energy")
    student = factorize(teacher, plans, factors=cfg.factors).eval()
    init_accuracy = accuracy(student, dataset.x_test, dataset.y_test)
    if cfg.epochs > 0:
        if teacher_logits is None:
            teacher_logits = predict_logits(teacher, dataset.x_train)
        elif teacher_logits.shape != (len(dataset.x_train), dataset.num_classes):
            raise TrainingError(
                f"teacher_logits has shape {teacher_logits.shape}, expected "
                f"{(len(dataset.x_train), dataset.num_classes)}; "
                "pass the teacher's logits on dataset.x_train"
            )
        torch.manual_seed(cfg.seed)
        distil(
            student,
            dataset.x_train,
            dataset.y_train,
            teacher_logits,
            make_loss(cfg.loss, **dict(cfg.loss_params)),
            FitConfig(
                epochs=cfg.epochs,
                lr=cfg.lr,
                batch_size=cfg.batch_size,
                seed=cfg.seed,
                progress=cfg.progress,
                desc="lowrank distil",
            ),
        )
    student.eval()
    report = LowRankReport(
        layers=tuple(describe_plans(plans)),
        teacher_params=count_params(teacher),
        student_params=count_params(student),
        teacher_accuracy=accuracy(teacher, dataset.x_test, dataset.y_test),
        init_accuracy=init_accuracy,
        student_accuracy=accuracy(student, dataset.x_test, dataset.y_test),
        energy=energy,
        rank=rank,
        latency_search=tuple(search),
        teacher_latency_ms=teacher_ms,
        seconds=time.perf_counter() - start,
        config={k: v for k, v in asdict(cfg).items() if k != "latency"},
    )
    return student, report
