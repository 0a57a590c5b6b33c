"""What a sparse student costs on the device: file size raw and deflated, and measured ORT latency.

Unstructured zeros are stored as ordinary dense initializers, so the ONNX file is as large as the dense
one and ONNX Runtime's CPU kernels multiply by every zero: *no latency gain*. Deflating the file (a
``.zip`` bundle) is where the zeros show. :func:`compare_onnx` measures both side by side in one
process (sessions built the same way, calls interleaved so background load hits both alike) so the
CLI can print it plainly instead of promising a speed-up.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from torch import nn

__all__ = ["NO_SPEEDUP_NOTE", "OnnxComparison", "compare_onnx", "export_student", "onnx_bytes"]

NO_SPEEDUP_NOTE = (
    "note: ONNX Runtime's CPU kernels gain no speed from zero weights (they are stored and multiplied "
    "densely); unstructured sparsity shrinks the compressed file, not the latency."
)


def onnx_bytes(model: nn.Module, example: np.ndarray) -> bytes:
    """The one-member graph of ``model`` exactly as a bundle stores it (ungated; for sizes and timing)."""
    import torch

    from exporters.onnx import export_onnx

    return export_onnx(model, torch.from_numpy(np.ascontiguousarray(example[:2], dtype=np.float32)))


@dataclass(frozen=True)
class OnnxComparison:
    """Dense vs sparse ONNX: sizes and batch-1 latency measured in one run."""

    dense_bytes: int
    sparse_bytes: int
    dense_bytes_zip: int  # zlib-deflated, what a .zip bundle stores
    sparse_bytes_zip: int
    dense_ms: dict[str, float]  # median, p10, p90 of batch-1 session.run, milliseconds
    sparse_ms: dict[str, float]
    runs: int  # timed calls per model (after warm-up)
    threads: int  # ORT intra-op threads

    @property
    def latency_ratio(self) -> float:
        """sparse median / dense median (1.0 = no gain)."""
        return self.sparse_ms["median"] / self.dense_ms["median"]

    def describe(self) -> list[str]:
        d, s = self.dense_ms, self.sparse_ms
        return [
            f"file size: dense {self.dense_bytes} B -> sparse {self.sparse_bytes} B raw; "
            f"deflated {self.dense_bytes_zip} B -> {self.sparse_bytes_zip} B "
            f"({self.dense_bytes_zip / max(self.sparse_bytes_zip, 1):.2f}x smaller)",
            f"ORT latency, batch 1, {self.threads} thread, {self.runs} interleaved runs each: "
            f"dense median {d['median']:.4f} ms (p10 {d['p10']:.4f}, p90 {d['p90']:.4f}), "
            f"sparse median {s['median']:.4f} ms (p10 {s['p10']:.4f}, p90 {s['p90']:.4f}); "
            f"ratio {self.latency_ratio:.2f}",
            NO_SPEEDUP_NOTE,
        ]

    def to_dict(self) -> dict[str, Any]:
        return {**{k: getattr(self, k) for k in self.__dataclass_fields__}, "latency_ratio": self.latency_ratio}


def _quantiles(ms: np.ndarray) -> dict[str, float]:
    return {"median": float(np.median(ms)), "p10": float(np.percentile(ms, 10)), "p90": float(np.percentile(ms, 90))}


def compare_onnx(
    dense: bytes, sparse: bytes, x: np.ndarray, *, runs: int = 300, warmup: int = 30, input_name: str = "x"
) -> OnnxComparison:
    """Sizes and batch-1 latency of two one-member graphs, timed alternately in this process.

    Args:
        dense, sparse: ONNX bytes (see :func:`onnx_bytes`).
        x: model-ready inputs; row ``i % len(x)`` feeds call ``i``.
        runs: timed calls per model; warmup: untimed calls first.
        input_name: the graphs' input name.
    """
    from edge_runtime.session import SessionConfig, create_session
    from exporters.export import compressed_size
    from profiles.measure import time_sessions

    config = SessionConfig()
    sessions = {"dense": create_session(dense, config, name="dense"), "sparse": create_session(sparse, config, name="sparse")}
    rows = np.ascontiguousarray(x, dtype=np.float32)
    pool = [{input_name: rows[i][None]} for i in range(len(rows))]
    # one call per model per round, the order swapped every round so neither always runs first
    times = time_sessions(sessions, {"dense": pool, "sparse": pool}, rounds=runs, calls_per_round=1, warmup=warmup)
    return OnnxComparison(
        dense_bytes=len(dense),
        sparse_bytes=len(sparse),
        dense_bytes_zip=compressed_size(dense),
        sparse_bytes_zip=compressed_size(sparse),
        dense_ms=_quantiles(times["dense"]),
        sparse_ms=_quantiles(times["sparse"]),
        runs=runs,
        threads=config.intra_op_threads,
    )


def export_student(
    model: nn.Module,
    dataset: Any,
    out_dir: str | os.PathLike[str],
    *,
    name: str,
    info: Mapping[str, Any],
    metadata: Mapping[str, Any] | None = None,
) -> Any:
    """Export the sparse student as a gated one-member bundle (zeros baked into the weights).

    Returns:
        The :class:`exporters.export.ExportResult`.
    """
    from exporters.export import export_model

    return export_model(
        model,
        dataset.task_spec(),
        out_dir,
        heldout=(dataset.x_test, dataset.y_test),
        name=name,
        info=dict(info),
        metadata={"data": dataset.name, **dict(metadata or {})},
    )
