"""Low-rank students through low-dimensional learning dynamics (Kwon et al., AISTATS 2024; docs/methods.md §5).

Two halves:

* :mod:`distill.lowrank.dynamics` — the deep-matrix-factorisation testbed of the paper (factorisation and
  completion): an original width-``d`` network against a compressed width-``2r`` network with spectral
  init and a larger outer learning rate;
* the real-network half — factor the Linear/Conv layers of a trained model spectrally (SVD of the
  trained weights; :mod:`~distill.lowrank.factorize`), choose ranks by retained energy, a fixed rank,
  or a latency / speed-up target measured with ONNX Runtime on this device
  (:mod:`~distill.lowrank.latency`), then distil from the teacher to recover accuracy
  (:func:`~distill.lowrank.student.lowrank_student`, behind ``anytime-edge lowrank``).
"""

from __future__ import annotations

from distill.lowrank.dynamics import (
    DynamicsConfig,
    MatrixProblem,
    Trajectory,
    end_to_end,
    make_problem,
    orthogonal_init,
    recovery_error,
    spectral_init,
    train_dln,
)
from distill.lowrank.factorize import (
    LayerPlan,
    LowRankConv,
    LowRankLinear,
    describe_plans,
    factorable_layers,
    factorize,
    plan_ranks,
    rank_for_energy,
)
from distill.lowrank.latency import LatencyConfig, measure_side_by_side
from distill.lowrank.student import ENERGY_LADDER, LowRankConfig, LowRankReport, lowrank_student, plan_for_latency

__all__ = [
    "DynamicsConfig",
    "ENERGY_LADDER",
    "LatencyConfig",
    "LayerPlan",
    "LowRankConfig",
    "LowRankConv",
    "LowRankLinear",
    "LowRankReport",
    "MatrixProblem",
    "Trajectory",
    "describe_plans",
    "end_to_end",
    "factorable_layers",
    "factorize",
    "lowrank_student",
    "make_problem",
    "measure_side_by_side",
    "orthogonal_init",
    "plan_for_latency",
    "plan_ranks",
    "rank_for_energy",
    "recovery_error",
    "spectral_init",
    "train_dln",
]
