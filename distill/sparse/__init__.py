"""Sparse students: FCPTS sparsity allocation (post-training) and DSD² iterative pruning.

* :mod:`~distill.sparse.masks` — prunable layers, layer/global sparsity, magnitude masks, baking in;
* :mod:`~distill.sparse.baselines` — uniform, global-magnitude and ERK allocations (no fine-tuning);
* :mod:`~distill.sparse.fcpts` — learned per-layer thresholds under a global target (PAPERS.md §2);
* :mod:`~distill.sparse.entropy` — the ReLU-input entropy monitor (PAPERS.md §4);
* :mod:`~distill.sparse.dsd2` — vanilla vs distilled iterative pruning, early stopping (PAPERS.md §4);
* :mod:`~distill.sparse.deploy` — export, file sizes, and measured ORT latency (no gain from zeros);
* :mod:`~distill.sparse.structured` — channel pruning (Torch-Pruning's dependency graph) that rebuilds
  smaller layers of any module (real CPU speed).
"""

from __future__ import annotations

from distill.sparse.baselines import ALLOCATIONS, ERK, Allocation, GlobalMagnitude, Uniform, allocate
from distill.sparse.deploy import NO_SPEEDUP_NOTE, OnnxComparison, compare_onnx, export_student, onnx_bytes
from distill.sparse.dsd2 import (
    DSD2Config,
    DSD2Result,
    RoundRecord,
    early_stopping_pick,
    find_dip,
    plot_curves,
    prune_global_l1,
    run_dsd2,
    run_pruning,
    symmetric_label_noise,
)
from distill.sparse.entropy import EntropyReport, relu_entropy
from distill.sparse.fcpts import (
    DENSITIES,
    ROUTES,
    FCPTSConfig,
    FCPTSReport,
    fcpts_allocate,
    fcpts_student,
    recalibrate_batchnorm,
)
from distill.sparse.masks import (
    apply_masks,
    global_sparsity,
    layer_sparsities,
    magnitude_mask,
    masked_copy,
    masks_for_sparsities,
    prunable_layers,
)
from distill.sparse.structured import ChannelReport, channel_student, prune_channels, shrink_channels

__all__ = [
    "ALLOCATIONS",
    "Allocation",
    "ChannelReport",
    "DENSITIES",
    "DSD2Config",
    "DSD2Result",
    "ERK",
    "EntropyReport",
    "FCPTSConfig",
    "FCPTSReport",
    "GlobalMagnitude",
    "NO_SPEEDUP_NOTE",
    "OnnxComparison",
    "ROUTES",
    "RoundRecord",
    "Uniform",
    "allocate",
    "apply_masks",
    "channel_student",
    "compare_onnx",
    "early_stopping_pick",
    "export_student",
    "fcpts_allocate",
    "fcpts_student",
    "find_dip",
    "global_sparsity",
    "layer_sparsities",
    "magnitude_mask",
    "masked_copy",
    "masks_for_sparsities",
    "onnx_bytes",
    "plot_curves",
    "prunable_layers",
    "prune_channels",
    "prune_global_l1",
    "recalibrate_batchnorm",
    "relu_entropy",
    "run_dsd2",
    "run_pruning",
    "shrink_channels",
    "symmetric_label_noise",
]
