"""The export gates: every exported member must pass all of them before a bundle is written.

1. :func:`check_graph` — ``onnx.checker.check_model`` with full shape inference, plus the member graph
   I/O contract of :mod:`edge_runtime.bundle` (input and output names).
2. :func:`check_parity` — torch vs ONNX Runtime ``allclose`` of ``logits``, ``probs`` and ``entropy`` on
   real inputs (the held-out data, at a batch size different from the export's).
3. :func:`check_accuracy` — accuracy of the ONNX outputs on held-out data equals the torch model's within
   0.1 point (0.001 as a fraction).

Why all three: exporters have produced models that load and run but are wrong (a ResNet-18 exported at
0% accuracy was reported); the checker alone does not catch that, parity alone does not say how much a
small drift matters for predictions, and accuracy alone hides a drift that later members would compound.

Tolerances (:class:`Tolerance`): float32 has eps ~1.2e-7; a dot product over a few thousand terms summed
in a different order by ORT's kernels differs by ~1e-6 of its magnitude, and a chained ensemble adds one
such error per member. ``rtol=1e-3, atol=1e-4`` leaves a 10-100x margin over that while a wrong operator,
a dropped layer or a mis-ordered input moves outputs by 1e-2 or more. ``probs`` are in [0, 1] and use
``atol`` alone; ``entropy`` is in [0, log C] nats and uses both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from edge_runtime.errors import error_line
from exporters.errors import ExportError, VerificationError

if TYPE_CHECKING:
    from edge_runtime.bundle import TaskSpec

__all__ = ["GateReport", "Tolerance", "accuracy", "check_accuracy", "check_graph", "check_heldout", "check_parity"]

PARITY_OUTPUTS = ("logits", "probs", "entropy")


@dataclass(frozen=True)
class Tolerance:
    """How close ONNX Runtime must be to torch, and how close the accuracies."""

    rtol: float = 1e-3  # relative tolerance for logits and entropy (see the module docstring)
    atol: float = 1e-4  # absolute tolerance for every output
    accuracy_gap: float = 0.001  # max |ONNX accuracy - torch accuracy| as a fraction (0.001 = 0.1 point)

    def __post_init__(self) -> None:
        for name in ("rtol", "atol", "accuracy_gap"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise VerificationError(f"Tolerance.{name}={value} must be a finite number >= 0")


@dataclass(frozen=True)
class GateReport:
    """What the gates measured for one member (the prefix of the ensemble ending at it)."""

    member: str  # member name
    max_abs_diff: Mapping[str, float]  # per output: max |torch - ORT| over the held-out data
    torch_accuracy: float  # accuracy of the torch prefix on held-out data (fraction)
    onnx_accuracy: float  # accuracy of the ONNX prefix, run chained in ONNX Runtime (fraction)
    num_heldout: int  # held-out samples both were measured on

    @property
    def accuracy_gap(self) -> float:
        return abs(self.onnx_accuracy - self.torch_accuracy)

    def describe(self) -> str:
        """One line for a CLI: accuracies and the worst output difference."""
        worst = max(self.max_abs_diff.values()) if self.max_abs_diff else 0.0
        return (
            f"{self.member}: accuracy torch {100 * self.torch_accuracy:.2f}% / onnx {100 * self.onnx_accuracy:.2f}% "
            f"on {self.num_heldout} held-out samples, max |diff| {worst:.2e}"
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "max_abs_diff": dict(self.max_abs_diff),
            "torch_accuracy": self.torch_accuracy,
            "onnx_accuracy": self.onnx_accuracy,
            "num_heldout": self.num_heldout,
        }


def check_graph(model: bytes, *, name: str, inputs: Sequence[str], outputs: Sequence[str]) -> None:
    """Gate 1: ``onnx.checker`` (full check, with shape inference) and the graph's input/output names.

    Args:
        model: ONNX bytes.
        name: the member's name, for messages.
        inputs: the graph inputs the runtime will feed, in order.
        outputs: the graph outputs the manifest will list, in order.

    Raises:
        VerificationError: the checker rejected the model or its names break the member contract.
    """
    import onnx

    try:
        proto = onnx.load_model_from_string(model)
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # protobuf and the checker raise several types
        first = error_line(exc)
        raise VerificationError(f"onnx.checker rejected member '{name}': {first}; re-export it") from exc
    initializers = {init.name for init in proto.graph.initializer}
    graph_inputs = [i.name for i in proto.graph.input if i.name not in initializers]
    graph_outputs = [o.name for o in proto.graph.output]
    if graph_inputs != list(inputs):
        raise VerificationError(f"member '{name}' has graph inputs {graph_inputs}, expected {list(inputs)}")
    if graph_outputs != list(outputs):
        raise VerificationError(f"member '{name}' has graph outputs {graph_outputs}, expected {list(outputs)}")
    for data in proto.graph.initializer:
        if data.data_location == onnx.TensorProto.EXTERNAL:
            raise VerificationError(f"member '{name}' keeps weights in external files; export with external_data=False")


def check_parity(
    expected: Mapping[str, np.ndarray],
    actual: Mapping[str, np.ndarray],
    *,
    name: str,
    tolerance: Tolerance = Tolerance(),
) -> dict[str, float]:
    """Gate 2: ONNX Runtime outputs match torch's within ``tolerance``.

    Args:
        expected: torch outputs by name (at least logits, probs, entropy).
        actual: ONNX Runtime outputs by name.
        name: the member's name, for messages.
        tolerance: see :class:`Tolerance`.

    Returns:
        Max absolute difference per output.

    Raises:
        VerificationError: an output is missing, has another shape, is not finite, or differs too much.
    """
    diffs: dict[str, float] = {}
    for output in PARITY_OUTPUTS:
        if output not in expected or output not in actual:
            raise VerificationError(f"member '{name}' lacks output '{output}' on one side of the parity check")
        want = np.asarray(expected[output], dtype=np.float64)
        got = np.asarray(actual[output], dtype=np.float64)
        if want.shape != got.shape:
            raise VerificationError(
                f"member '{name}' output '{output}' has shape {got.shape} in ONNX Runtime, {want.shape} in torch"
            )
        if not np.all(np.isfinite(got)):
            raise VerificationError(f"member '{name}' output '{output}' holds NaN/inf in ONNX Runtime; re-export it")
        diff = np.abs(want - got)
        diffs[output] = float(diff.max()) if diff.size else 0.0
        rtol = 0.0 if output == "probs" else tolerance.rtol
        bad = diff > tolerance.atol + rtol * np.abs(want)
        if np.any(bad):
            raise VerificationError(
                f"member '{name}' output '{output}' differs from torch by up to {diffs[output]:.3g} on "
                f"{int(bad.sum())} values (atol {tolerance.atol:g}, rtol {rtol:g}); the export changed the model, "
                "or forward is not deterministic in eval mode"
            )
    return diffs


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose argmax equals the label."""
    logits = np.asarray(logits)
    labels = np.asarray(labels).reshape(-1)
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0] or labels.size == 0:
        raise VerificationError(f"cannot score logits {logits.shape} against {labels.shape[0]} labels")
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def check_accuracy(torch_accuracy: float, onnx_accuracy: float, *, name: str, tolerance: Tolerance = Tolerance()) -> None:
    """Gate 3: the ONNX accuracy equals the torch accuracy within ``tolerance.accuracy_gap``.

    Raises:
        VerificationError: the accuracies differ by more than the allowed gap.
    """
    gap = abs(onnx_accuracy - torch_accuracy)
    # A tiny slack absorbs float rounding of the two means, never a whole extra misprediction.
    if gap > tolerance.accuracy_gap + 1e-12:
        raise VerificationError(
            f"member '{name}' scores {100 * onnx_accuracy:.2f}% in ONNX Runtime but {100 * torch_accuracy:.2f}% in "
            f"torch on held-out data (allowed gap {100 * tolerance.accuracy_gap:.2f} point); the export is wrong"
        )


def check_heldout(task: "TaskSpec", x: np.ndarray, y: np.ndarray) -> None:
    """Held-out data fit for the gates: the members' sample shape, >= 2 rows, one label each, finite, labels in range.

    Args:
        task: the bundle's task (``task.model_input_shape`` is what the members take, after its preprocess).
        x: inputs ``(N, *member input shape)`` (numpy; torch callers pass ``tensor.numpy()``).
        y: integer labels ``(N,)``.

    Raises:
        ExportError: one line naming what is wrong and the fix.
    """
    if tuple(x.shape[1:]) != tuple(task.model_input_shape[1:]):
        raise ExportError(
            f"held-out inputs have shape {tuple(x.shape)}, the task expects {list(task.model_input_shape)} (the members' input); "
            "pass inputs as the members take them (after the task's preprocess: Dataset.x_test, not raw client values)"
        )
    if x.shape[0] < 2 or x.shape[0] != y.shape[0]:
        raise ExportError(f"held-out data needs >= 2 samples and one label each (got {x.shape[0]} inputs, {y.shape[0]} labels)")
    if not np.all(np.isfinite(x)):
        raise ExportError("held-out inputs hold NaN/inf; clean the data before exporting")
    if y.min() < 0 or y.max() >= task.num_classes:
        raise ExportError(f"held-out labels must lie in [0, {task.num_classes - 1}] for a task with {task.num_classes} labels")
