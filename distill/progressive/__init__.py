"""B-DISTIL: progressive ensemble distillation (Dennis et al., NeurIPS 2023; docs/methods.md §1).

The method is called B-DISTIL in prose and ``bdistil`` in code, reports and bundle names; the command
that builds it (and its two baselines) is ``anytime-edge ensemble``.

* :mod:`~distill.progressive.bdistil` — the boosting loop (:func:`progressive_ensemble`,
  :class:`ProgressiveConfig`): one member per round, escalating candidates and connections;
* :mod:`~distill.progressive.rounds` — the maths of one round: weights, log barrier, weak-learning edge,
  line search (the exact formulas implemented);
* :mod:`~distill.progressive.members` — members, the candidate students they are built from, and how a
  chain of them is evaluated;
* :mod:`~distill.progressive.inherit` — members initialised from the teacher (``init="teacher"``:
  channel-pruned copies of it);
* :mod:`~distill.progressive.baselines` — the RESCHED and NO-RESCHED baselines it is measured against.
"""

from __future__ import annotations

from distill.progressive.baselines import BaselineConfig, no_resched_students, resched_ensemble, width_for_macs
from distill.progressive.bdistil import CONNECT_RULES, ProgressiveConfig, limit_training, progressive_ensemble
from distill.progressive.inherit import INITS, PrunedCandidate, candidate_from_dict, keep_for_macs
from distill.progressive.members import (
    BoostedMember,
    Candidate,
    Ensemble,
    EnsembleReport,
    MemberReport,
    chain_outputs,
    combined_logits,
    count_macs,
    default_candidates,
    prefix_accuracies,
)
from distill.train import scaled_epochs

__all__ = [
    "BaselineConfig",
    "BoostedMember",
    "CONNECT_RULES",
    "Candidate",
    "Ensemble",
    "EnsembleReport",
    "INITS",
    "MemberReport",
    "ProgressiveConfig",
    "PrunedCandidate",
    "candidate_from_dict",
    "chain_outputs",
    "combined_logits",
    "count_macs",
    "default_candidates",
    "keep_for_macs",
    "limit_training",
    "no_resched_students",
    "prefix_accuracies",
    "progressive_ensemble",
    "resched_ensemble",
    "scaled_epochs",
    "width_for_macs",
]
