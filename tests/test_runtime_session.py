"""ONNX Runtime as the runtime configures it: no telemetry by default, no CPU arena, and clean error lines.

Case untrusted/12 (a first member that fails inside ORT on some inputs) is built here with onnx.helper;
its HTTP side is in test_server_bundle.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import edge_runtime
from edge_runtime.bundle import load_bundle
from edge_runtime.cli import main
from edge_runtime.errors import error_line
from exporters.bundle import write_bundle
from onnx_members import make_bundle

ROOT = Path(__file__).resolve().parents[1]
ORT_RESHAPE_ERROR = (
    "[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Reshape node. Name:'' "
    "Status Message: /onnxruntime_src/onnxruntime/core/providers/cpu/tensor/reshape_helper.h:84 "
    "onnxruntime::ReshapeHelper::ReshapeHelper(const onnxruntime::TensorShape&, onnxruntime::TensorShapeVector&, bool) "
    "size != 0 && (input_shape_size % size) == 0 was false. The input tensor cannot be reshaped to the requested "
    "shape. Input shape:{1,3}, requested shape:{-1,4}\n"
)
INTERNALS = ("onnxruntime_src", "::", ".h:", "[ONNXRuntimeError]", "\n")


def failing_first_member_bundle(out: Path, limit: float = 100.0) -> Path:
    """A 3-member bundle whose first member raises inside ORT when max(x) > ``limit`` (case untrusted/12).

    Its logits go through Reshape to [-1, C + (max(x) > limit)]: fine for ordinary inputs, and ORT's
    Reshape fails with its build path and a C++ signature in the message for a large raw value.
    """
    bundle = load_bundle(make_bundle(out / "src", num_members=3))
    model = onnx.load_from_string(bundle.member_bytes[0])
    graph = model.graph
    for node in graph.node:
        node.output[:] = ["logits_orig" if o == "logits" else o for o in node.output]
        node.input[:] = ["logits_orig" if i == "logits" else i for i in node.input]
    classes = bundle.manifest.task.num_classes
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(limit, np.float32), "limit"),
            numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
            numpy_helper.from_array(np.array([classes], np.int64), "classes"),
            numpy_helper.from_array(np.array([0], np.int64), "axis0"),
        ]
    )
    added = [
        helper.make_node("ReduceMax", ["x"], ["x_max"], keepdims=0),
        helper.make_node("Greater", ["x_max", "limit"], ["too_big"]),
        helper.make_node("Cast", ["too_big"], ["extra"], to=onnx.TensorProto.INT64),
        helper.make_node("Unsqueeze", ["extra", "axis0"], ["extra1"]),
        helper.make_node("Add", ["classes", "extra1"], ["width"]),
        helper.make_node("Concat", ["minus_one", "width"], ["shape"], axis=0),
        helper.make_node("Reshape", ["logits_orig", "shape"], ["logits"]),
    ]
    at = next(i for i, node in enumerate(graph.node) if "logits_orig" in node.output)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes[: at + 1] + added + nodes[at + 1 :])
    blobs = [model.SerializeToString(), *bundle.member_bytes[1:]]
    return write_bundle(out / "bundle", bundle.manifest, blobs)


# -- error lines ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message, expected",
    [
        (
            ORT_RESHAPE_ERROR,
            "Reshape node: size != 0 && (input_shape_size % size) == 0 was false. The input tensor "
            "cannot be reshaped to the requested shape. Input shape:{1,3}, requested shape:{-1,4}",
        ),
        (
            "[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running MatMul node. Name:'mm' "
            "Status Message: matmul_helper.h:59 Compute MatMul dimension mismatch",
            "MatMul node 'mm': Compute MatMul dimension mismatch",
        ),
        (
            "[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Failed to load model because protobuf parsing failed.",
            "Failed to load model because protobuf parsing failed.",
        ),
        (
            "\n****************\nEP Error: D:\\a\\_work\\1\\s\\onnxruntime\\core\\session\\provider_bridge_ort.cc:1637 "
            "onnxruntime::ProviderLibrary::Get() failed\nFalling back to ['CPUExecutionProvider'] and retrying.\n****",
            "EP Error: failed",
        ),
        ("first\nsecond", "first"),
        ("", "RuntimeError"),
    ],
)
def test_error_line_keeps_the_message_and_drops_native_internals(message: str, expected: str) -> None:
    assert error_line(RuntimeError(message)) == expected


def test_error_line_is_bounded() -> None:
    line = error_line(ValueError("x" * 5000))
    assert len(line) == 300 and line.endswith("...")


def test_cli_prints_one_clean_line_when_the_first_member_fails(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Case 12: `run` printed ORT's build path, C++ signature and its own coloured log line."""
    bundle = failing_first_member_bundle(tmp_path)
    x = np.zeros((1, 1, 4, 4), np.float32)
    x[0, 0, 0, 0] = 1000
    np.save(tmp_path / "x.npy", x)
    code = main(["run", str(bundle), "--input", str(tmp_path / "x.npy")])
    out, err = capfd.readouterr()  # file descriptors: ORT's own C++ log lines would land there
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "member_1" in err and "Reshape node" in err
    assert not any(fragment in err.rstrip("\n") for fragment in INTERNALS), err


# -- session options --------------------------------------------------------------------------------------------


def test_sessions_are_built_without_the_cpu_arena(tiny_bundle: Path) -> None:
    """The arena keeps the largest batch's buffers for good (32,000 rows: 78 -> 1631 MB RSS, measured)."""
    runtime = edge_runtime.load(tiny_bundle, warmup=0)
    assert all(s.get_session_options().enable_cpu_mem_arena is False for s in runtime.member_sessions)
    with_arena = edge_runtime.load(tiny_bundle, warmup=0, session_config=edge_runtime.SessionConfig(cpu_mem_arena=True))
    assert with_arena.member_sessions[0].get_session_options().enable_cpu_mem_arena is True


# -- telemetry --------------------------------------------------------------------------------------------------

# A stand-in onnxruntime that records the variable as it was when it was imported (the moment ORT reads
# it), so the test proves the order of events and never starts the real ORT's telemetry.
_FAKE_ORT = """
import os
SEEN = os.environ.get("ORT_DISABLE_TELEMETRY", "<unset>")
__version__ = "0+fake"
class GraphOptimizationLevel:
    ORT_DISABLE_ALL, ORT_ENABLE_BASIC, ORT_ENABLE_EXTENDED, ORT_ENABLE_ALL = 0, 1, 2, 99
"""
_PROBE = """
import sys
import {module}
{call}
import onnxruntime
print(onnxruntime.SEEN)
"""


@pytest.mark.parametrize(
    "module, call",
    [
        ("edge_runtime.session", ""),
        ("edge_runtime.device", "edge_runtime.device.device_info()"),
        ("edge_runtime", "edge_runtime.AnytimeRuntime"),
    ],
)
@pytest.mark.parametrize("user_value, seen", [(None, "1"), ("0", "0"), ("1", "1")])
def test_telemetry_is_off_before_onnxruntime_is_imported_unless_the_user_opts_in(
    tmp_path: Path, module: str, call: str, user_value: str | None, seen: str
) -> None:
    (tmp_path / "onnxruntime").mkdir()
    (tmp_path / "onnxruntime" / "__init__.py").write_text(_FAKE_ORT)
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT)])
    if user_value is not None:
        env["ORT_DISABLE_TELEMETRY"] = user_value
    probe = _PROBE.format(module=module, call=call)
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [seen]


def test_fast_run_answers_like_session_run_and_falls_back_for_other_sessions(tiny_bundle: Path) -> None:
    from edge_runtime.session import SessionConfig, create_session, fast_run

    session = create_session(load_bundle(tiny_bundle).member_bytes[0], SessionConfig())
    feed = {session.get_inputs()[0].name: np.ones((2, 1, 4, 4), np.float32)}
    fast = fast_run(session)
    assert fast is not session.run  # the binding under InferenceSession.run, on this ORT
    for a, b in zip(fast(["probs", "entropy"], feed, None), session.run(["probs", "entropy"], feed)):
        np.testing.assert_array_equal(a, b)

    class Fake:
        def run(self, names: list[str], feed: dict[str, np.ndarray], options: object = None) -> list[str]:
            return ["scripted"]

    fake = Fake()
    assert fast_run(fake) == fake.run
