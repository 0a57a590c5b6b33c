"""The export gates on their own: checker and I/O names, parity tolerances, the accuracy gap."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from exporters.errors import VerificationError
from exporters.verify import GateReport, Tolerance, accuracy, check_accuracy, check_graph, check_parity
from onnx_members import member_graph

OUTPUTS = ["logits", "probs", "entropy", "features"]


def outputs(n: int = 5, classes: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (n, classes)).astype(np.float32)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return {"logits": logits, "probs": p, "entropy": -(p * np.log(p)).sum(1)}


def test_check_graph_accepts_a_contract_member() -> None:
    blob = member_graph(1, (1, 4, 4), 3)
    check_graph(blob, name="m", inputs=["x", "prev_logits"], outputs=OUTPUTS)


@pytest.mark.parametrize(
    "inputs, outs, message",
    [
        (["x"], OUTPUTS, "graph inputs"),
        (["x", "prev_logits"], ["logits", "probs", "entropy"], "graph outputs"),
    ],
)
def test_check_graph_rejects_wrong_names(inputs: list[str], outs: list[str], message: str) -> None:
    with pytest.raises(VerificationError, match=message):
        check_graph(member_graph(1, (1, 4, 4), 3), name="m", inputs=inputs, outputs=outs)


def test_check_graph_runs_the_checker() -> None:
    # A node reads a tensor nothing defines: loadable protobuf, invalid model.
    graph = helper.make_graph(
        [helper.make_node("Relu", ["missing"], ["logits"])],
        "broken",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(VerificationError, match="onnx.checker rejected member 'broken_member'"):
        check_graph(model.SerializeToString(), name="broken_member", inputs=["x"], outputs=["logits"])
    with pytest.raises(VerificationError, match="onnx.checker"):
        check_graph(b"not a protobuf at all", name="junk", inputs=["x"], outputs=["logits"])


def test_parity_passes_float_rounding_and_reports_the_difference() -> None:
    want = outputs()
    got = {k: (v * (1 + 1e-6)).astype(np.float32) for k, v in want.items()}
    diffs = check_parity(want, got, name="m")
    assert set(diffs) == {"logits", "probs", "entropy"}
    assert 0 < diffs["logits"] < 1e-4


@pytest.mark.parametrize("output", ["logits", "probs", "entropy"])
def test_parity_fails_on_a_real_difference(output: str) -> None:
    want = outputs()
    got = {k: v.copy() for k, v in want.items()}
    got[output][2] += 0.01
    with pytest.raises(VerificationError, match=f"output '{output}' differs from torch by up to 0.01"):
        check_parity(want, got, name="m")


def test_parity_fails_on_shape_nan_and_missing_output() -> None:
    want = outputs()
    with pytest.raises(VerificationError, match="shape"):
        check_parity(want, {**want, "logits": want["logits"][:4]}, name="m")
    nan = want["entropy"].copy()
    nan[0] = np.nan
    with pytest.raises(VerificationError, match="NaN"):
        check_parity(want, {**want, "entropy": nan}, name="m")
    with pytest.raises(VerificationError, match="lacks output 'probs'"):
        check_parity(want, {"logits": want["logits"], "entropy": want["entropy"]}, name="m")


def test_tolerance_is_configurable_and_validated() -> None:
    want = outputs()
    got = {**want, "logits": want["logits"] + 0.01}
    check_parity(want, got, name="m", tolerance=Tolerance(atol=0.02))
    with pytest.raises(VerificationError, match="Tolerance.atol"):
        Tolerance(atol=-1.0)
    with pytest.raises(VerificationError, match="Tolerance.accuracy_gap"):
        Tolerance(accuracy_gap=float("nan"))


def test_accuracy_gate_allows_a_tenth_of_a_point() -> None:
    check_accuracy(0.900, 0.901, name="m")  # exactly 0.1 point: allowed
    with pytest.raises(VerificationError, match="90.20% in ONNX Runtime but 90.00% in torch"):
        check_accuracy(0.900, 0.902, name="m")
    check_accuracy(0.900, 0.950, name="m", tolerance=Tolerance(accuracy_gap=0.05))


def test_accuracy_of_logits_against_labels() -> None:
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [0.0, 5.0]])
    assert accuracy(logits, np.array([0, 1, 1, 1])) == 0.75
    with pytest.raises(VerificationError, match="cannot score"):
        accuracy(logits, np.array([0, 1]))


def test_gate_report_summarises() -> None:
    report = GateReport("m", {"logits": 1e-6, "probs": 3e-7, "entropy": 2e-6}, 0.91, 0.912, 1000)
    assert report.accuracy_gap == pytest.approx(0.002)
    assert "m: accuracy torch 91.00% / onnx 91.20% on 1000" in report.describe()
    assert report.to_dict()["max_abs_diff"]["entropy"] == 2e-6
