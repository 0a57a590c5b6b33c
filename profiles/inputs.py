"""Inputs to time models with: the task's shape for bundles, the graph's own signature for plain ONNX.

Latency of the small dense members this project makes does not depend on the input values, but a
connected member's inputs come from the members before it, and data with the real distribution is
available anyway for selection, so real data (``--data FILE.npz`` with an array ``x``) is preferred when
given. Otherwise inputs are standard-normal floats of the right shape.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edge_runtime.bundle import Manifest
from profiles.errors import MeasurementError

__all__ = ["InputSpec", "graph_input_specs", "load_npz", "random_feed", "task_batches"]

# ONNX Runtime's type strings -> numpy dtypes the profiler can synthesise.
_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


@dataclass(frozen=True)
class InputSpec:
    """One graph input with every dimension fixed."""

    name: str  # graph input name
    shape: tuple[int, ...]  # concrete shape used for timing
    dtype: str  # numpy dtype name

    def __post_init__(self) -> None:
        if any(d <= 0 for d in self.shape):
            raise MeasurementError(f"input '{self.name}' would get shape {list(self.shape)}; give the model static dims")


def graph_input_specs(session: Any, batch: int) -> list[InputSpec]:
    """Concrete input specs of an ORT session: a dynamic first dim becomes ``batch``, others 1.

    Args:
        session: an ``onnxruntime.InferenceSession``.
        batch: the batch size to time.

    Raises:
        MeasurementError: an input has a type the profiler cannot synthesise.
    """
    specs = []
    for arg in session.get_inputs():
        dtype = _ORT_DTYPES.get(arg.type)
        if dtype is None:
            raise MeasurementError(
                f"input '{arg.name}' has type {arg.type}, which the profiler cannot synthesise; "
                f"use a model whose inputs are one of {sorted(_ORT_DTYPES)}"
            )
        shape = []
        for axis, dim in enumerate(arg.shape):
            if isinstance(dim, int) and dim > 0:
                shape.append(dim)
            else:  # symbolic or unknown: the leading one is the batch, any other gets 1
                shape.append(batch if axis == 0 else 1)
        specs.append(InputSpec(name=arg.name, shape=tuple(shape), dtype=np.dtype(dtype).name))
    return specs


def random_feed(specs: Sequence[InputSpec], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A feed for ``specs``: standard-normal floats, random booleans, zeros for integers.

    Integers are zeros because an integer input is usually an index or a token id, and 0 is always in
    range where a random value might not be.
    """
    feed: dict[str, np.ndarray] = {}
    for spec in specs:
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            feed[spec.name] = rng.standard_normal(spec.shape).astype(dtype)
        elif dtype.kind == "b":
            feed[spec.name] = rng.random(spec.shape) < 0.5
        else:
            feed[spec.name] = np.zeros(spec.shape, dtype=dtype)
    return feed


def load_npz(path: str | os.PathLike[str], keys: Sequence[str] = ("x",)) -> dict[str, np.ndarray]:
    """Arrays ``keys`` of an ``.npz`` file (never unpickled).

    Raises:
        MeasurementError: the file is missing, not an npz, holds objects, or lacks a key.
    """
    source = Path(path)
    if not source.is_file():
        raise MeasurementError(f"data file {source} does not exist; pass an .npz holding {list(keys)}")
    try:
        with np.load(source, allow_pickle=False) as npz:
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise MeasurementError(
                    f"{source} lacks arrays {missing} (has {sorted(npz.files)}); save it with np.savez(path, {', '.join(f'{k}=...' for k in keys)})"
                )
            return {k: np.asarray(npz[k]) for k in keys}
    except MeasurementError:
        raise
    except (OSError, ValueError) as exc:
        raise MeasurementError(f"{source} is not a readable .npz of plain arrays ({exc}); re-save it with np.savez") from exc


def task_batches(
    manifest: Manifest,
    batch: int,
    count: int,
    data: np.ndarray | None,
    rng: np.random.Generator,
    preprocess: bool = True,
) -> list[np.ndarray]:
    """``count`` input batches of ``batch`` rows for a bundle's task.

    Args:
        manifest: the bundle's manifest (input shape, preprocess).
        batch: rows per batch.
        count: how many distinct batches (they are cycled through while timing).
        data: raw inputs as a client would send them (rows of the task's shape), or None for random.
        rng: random source for random inputs and for picking rows.
        preprocess: apply the bundle's preprocess to ``data`` (as the runtime does before member 1);
            False for inputs handed to the runtime itself.

    Raises:
        MeasurementError: ``data`` does not have the task's shape or holds NaN/inf.
    """
    spec = manifest.task.input
    row_shape = tuple(spec.shape[1:])  # the client's shape; members take manifest.task.model_input_shape
    pre = manifest.task.preprocess
    if data is None:
        shape = tuple(manifest.task.model_input_shape[1:]) if preprocess else row_shape
        return [rng.standard_normal((batch, *shape)).astype(np.float32) for _ in range(count)]
    if data.ndim != len(spec.shape) or tuple(data.shape[1:]) != row_shape or len(data) == 0:
        raise MeasurementError(
            f"data x has shape {list(data.shape)} but the bundle takes [N, {', '.join(map(str, row_shape))}]; "
            "pass data of the task's shape"
        )
    x = data.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise MeasurementError("data x holds NaN or inf; clean the data file")
    if preprocess and not pre.is_identity:  # members take preprocessed input, as the runtime feeds them
        x = pre.apply(x)
    rows = rng.permutation(len(x))
    out = []
    for i in range(count):
        take = np.take(rows, np.arange(i * batch, (i + 1) * batch), mode="wrap")
        out.append(np.ascontiguousarray(x[take]))
    return out
