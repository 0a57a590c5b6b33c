"""Tiny member graphs built with onnx.helper, obeying the bundle's graph contract (no torch needed).

Used by the runtime, profiler and server tests: each member is Flatten -> MatMul -> ReLU (the features)
-> MatMul, plus the previous member's logits, with softmax and entropy computed in the graph.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge_runtime.bundle import Calibration, Connection, Manifest, MemberSpec, Preprocess, TaskSpec, TensorSpec
from exporters.bundle import write_bundle

OPSET = 18


def member_graph(
    index: int,
    input_shape: Sequence[int],
    num_classes: int,
    hidden: int = 16,
    connect_from_previous: bool = False,
    seed: int = 0,
    scale: float = 1.0,
    batch_one_only: bool = False,
    connection_input: str = "conn_features",
) -> bytes:
    """ONNX bytes of member ``index`` (0-based); ``scale`` multiplies its logits (larger = more confident).

    ``batch_one_only`` flattens with a fixed leading 1, so the member works on single samples and raises
    inside ONNX Runtime on larger batches (a real failing member for error-path tests).
    """
    rng = np.random.default_rng(seed + index)
    features_in = int(np.prod(input_shape))
    w1 = rng.normal(0, 1 / np.sqrt(features_in), (features_in, hidden)).astype(np.float32)
    w2 = (scale * rng.normal(0, 1 / np.sqrt(hidden), (hidden, num_classes))).astype(np.float32)
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *input_shape])]
    flatten = [helper.make_node("Flatten", ["x"], ["flat"], axis=1)]
    if batch_one_only:
        inits.append(numpy_helper.from_array(np.array([1, -1], dtype=np.int64), "one_row"))
        flatten = [helper.make_node("Reshape", ["x", "one_row"], ["flat"])]
    nodes = [
        *flatten,
        helper.make_node("MatMul", ["flat", "w1"], ["h_pre"]),
        helper.make_node("Relu", ["h_pre"], ["features"]),
    ]
    hidden_name = "features"
    if connect_from_previous and index > 0:
        wc = rng.normal(0, 1 / np.sqrt(hidden), (hidden, hidden)).astype(np.float32)
        inits.append(numpy_helper.from_array(wc, "wc"))
        inputs.append(helper.make_tensor_value_info(connection_input, TensorProto.FLOAT, ["N", hidden]))
        nodes += [
            helper.make_node("MatMul", [connection_input, "wc"], ["c"]),
            helper.make_node("Add", ["features", "c"], ["h_mixed"]),
        ]
        hidden_name = "h_mixed"
    nodes.append(helper.make_node("MatMul", [hidden_name, "w2"], ["own_logits"]))
    return _finish_member(nodes, inputs, inits, index, num_classes, hidden, f"member_{index}")


def make_bundle(
    out_dir: Path,
    num_members: int = 3,
    input_shape: Sequence[int] = (1, 4, 4),
    num_classes: int = 3,
    connections: bool = False,
    calibration: float | None = None,
    hidden: int = 16,
    scales: Sequence[float] | None = None,
    preprocess: Preprocess | None = None,
    batch_one_only: Sequence[int] = (),
    distinct_connection_names: bool = False,
) -> Path:
    """Write a bundle of ``num_members`` tiny members to ``out_dir`` and return its path.

    ``batch_one_only`` lists member indices (0-based) that raise inside ONNX Runtime on batches > 1.
    ``distinct_connection_names`` names member k's connection input ``features_from_{k-1}`` (as the
    B-DISTIL exporter does) instead of the shared ``conn_features``.
    """
    scales = scales or [1.0] * num_members
    pre = preprocess or Preprocess(scale=1.0, offset=0.0)

    def conn_name(k: int) -> str:
        return f"features_from_{k - 1}" if distinct_connection_names else "conn_features"

    blobs = [
        member_graph(
            k,
            input_shape,
            num_classes,
            hidden,
            connections,
            scale=scales[k],
            batch_one_only=k in batch_one_only,
            connection_input=conn_name(k),
        )
        for k in range(num_members)
    ]
    members = tuple(
        MemberSpec(
            name=f"member_{k + 1}",
            file=f"member_{k + 1}.onnx",
            sha256="",
            outputs=("logits", "probs", "entropy", "features"),
            connections=(Connection(input=conn_name(k), member=k - 1, output="features"),) if connections and k else (),
            params=int(np.prod(input_shape)) * hidden + hidden * num_classes,
        )
        for k in range(num_members)
    )
    manifest = Manifest(
        name="tiny",
        task=TaskSpec(
            labels=tuple(f"class_{c}" for c in range(num_classes)),
            input=TensorSpec(name="x", shape=(-1, *pre.raw_shape(input_shape))),
            preprocess=pre,
        ),
        members=members,
        calibration=None if calibration is None else Calibration(calibration, "test", 1.0, 1.0),
    )
    return write_bundle(out_dir, manifest, blobs)


def set_member_bytes(bundle_dir: Path, index: int, blob: bytes) -> None:
    """Replace member ``index``'s file with ``blob`` and fix its sha256 in the manifest (what an attacker
    who controls the whole bundle can do: checksums then prove nothing about intent, only integrity)."""
    import hashlib
    import json

    path = Path(bundle_dir) / "manifest.json"
    manifest = json.loads(path.read_text())
    member = manifest["members"][index]
    (Path(bundle_dir) / member["file"]).write_bytes(blob)
    member["sha256"] = hashlib.sha256(blob).hexdigest()
    path.write_text(json.dumps(manifest, indent=1))


def looping_member_graph(index: int, input_shape: Sequence[int], num_classes: int, trip_count: int, hidden: int = 16) -> bytes:
    """Member ``index`` with ``logits += 0 * Loop(trip_count, identity body)``: the same answer as
    :func:`member_graph`, but each run takes about ``trip_count`` tiny operators (a member that is slow for
    as long as a test needs, and that ONNX Runtime can stop between operators)."""
    model = onnx.load_from_string(member_graph(index, input_shape, num_classes, hidden))
    g = model.graph
    for node in g.node:
        node.output[:] = ["logits_orig" if o == "logits" else o for o in node.output]
        node.input[:] = ["logits_orig" if i == "logits" else i for i in node.input]
    body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"]), helper.make_node("Identity", ["v_in"], ["v_out"])],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, []),
        ],
        [
            helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, []),
        ],
    )
    g.initializer.extend(
        [
            numpy_helper.from_array(np.array(trip_count, np.int64), "M"),
            numpy_helper.from_array(np.array(True), "C"),
            numpy_helper.from_array(np.array(0.0, np.float32), "V"),
        ]
    )
    nodes = list(g.node)
    cut = [i for i, n in enumerate(nodes) if "logits_orig" in n.output][0] + 1
    added = [
        helper.make_node("Loop", ["M", "C", "V"], ["s"], body=body),
        helper.make_node("Mul", ["s", "V"], ["z"]),
        helper.make_node("Add", ["logits_orig", "z"], ["logits"]),
    ]
    del g.node[:]
    g.node.extend(nodes[:cut] + added + nodes[cut:])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def deep_member_graph(
    index: int, input_shape: Sequence[int], num_classes: int, hidden: int = 256, depth: int = 40, seed: int = 0
) -> bytes:
    """Member ``index`` as a deep MLP: Flatten -> ``depth`` x (MatMul, Relu) of width ``hidden`` -> logits,
    with the bundle's graph contract (outputs logits, probs, entropy, features). A ms-scale member made of
    many short operators, as real CNN members are (ONNX Runtime can stop a run only between operators)."""
    rng = np.random.default_rng(seed + 100 + index)
    features_in = int(np.prod(input_shape))
    inits = [numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *input_shape])]
    nodes = [helper.make_node("Flatten", ["x"], ["h0"], axis=1)]
    width = features_in
    for d in range(depth):
        w = rng.normal(0, np.sqrt(2.0 / width), (width, hidden)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{d}"))
        out = "features" if d == depth - 1 else f"h{d + 1}"
        nodes += [helper.make_node("MatMul", [f"h{d}", f"w{d}"], [f"p{d}"]), helper.make_node("Relu", [f"p{d}"], [out])]
        width = hidden
    w_out = rng.normal(0, 1 / np.sqrt(hidden), (hidden, num_classes)).astype(np.float32)
    inits.append(numpy_helper.from_array(w_out, "w_out"))
    nodes.append(helper.make_node("MatMul", ["features", "w_out"], ["own_logits"]))
    return _finish_member(nodes, inputs, inits, index, num_classes, hidden, f"deep_member_{index}")


def _finish_member(nodes: list, inputs: list, inits: list, index: int, num_classes: int, hidden: int, name: str) -> bytes:
    """The member contract's tail after ``own_logits``: sum with prev_logits (k > 1), probs, entropy; checked bytes."""
    if index > 0:
        inputs.append(helper.make_tensor_value_info("prev_logits", TensorProto.FLOAT, ["N", num_classes]))
        nodes.append(helper.make_node("Add", ["own_logits", "prev_logits"], ["logits"]))
    else:
        nodes.append(helper.make_node("Identity", ["own_logits"], ["logits"]))
    nodes += [
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
        helper.make_node("LogSoftmax", ["logits"], ["logp"], axis=-1),
        helper.make_node("Mul", ["probs", "logp"], ["plogp"]),
        helper.make_node("ReduceSum", ["plogp", "axis1"], ["neg_entropy"], keepdims=0),
        helper.make_node("Neg", ["neg_entropy"], ["entropy"]),
    ]
    outputs = [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", num_classes]),
        helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", num_classes]),
        helper.make_tensor_value_info("entropy", TensorProto.FLOAT, ["N"]),
        helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", hidden]),
    ]
    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()
