"""The profiler's measurements: what is timed, with which inputs, and what the profile records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import edge_runtime
from edge_runtime.bundle import load_bundle
from edge_runtime.session import SessionConfig, create_session
from profiles import QUANTILES, MeasureConfig, MeasurementError, latency_stats, profile_bundle, profile_onnx, time_sessions
from profiles.measure import _bundle_feeder, _served_passes
from profiles.memory import PeakTracker

FAST = MeasureConfig(min_queries=20, min_seconds=0.0, warmup_queries=2, batch=4, pool=4, memory_probe=False)


def _ordered(record: dict) -> bool:
    values = [record[q] for q in QUANTILES]
    return all(a <= b for a, b in zip(values, values[1:]))


def test_bundle_profile_has_every_member_quantile_and_batch(connected_bundle: Path) -> None:
    profile = profile_bundle(connected_bundle, FAST)
    assert [m["name"] for m in profile["members"]] == ["member_1", "member_2", "member_3"]
    for member in profile["members"]:
        assert _ordered(member["latency_ms"])
        assert member["latency_ms"]["queries"] >= 20
        assert set(member["batches"]) == {"1", "4"}
        assert member["session_create_ms"] > 0 and member["first_inference_ms"] > 0
        assert member["size_bytes"] == len((connected_bundle / member["file"]).read_bytes())
    assert profile["model_size_bytes"] == sum(m["size_bytes"] for m in profile["members"])
    assert profile["settings"]["intra_op_threads"] == 1 and profile["settings"]["allow_spinning"] is False
    assert profile["measurement"]["batch_sizes"] == [1, 4]


def test_connected_members_are_timed_given_their_predecessors(connected_bundle: Path) -> None:
    profile = profile_bundle(connected_bundle, FAST)
    assert [m["conditional_on"] for m in profile["members"]] == [[], ["member_1"], ["member_2"]]
    assert set(profile["members"][1]["inputs"]) == {"x", "prev_logits", "conn_features"}


def test_feeder_hands_the_real_outputs_of_earlier_members(connected_bundle: Path) -> None:
    bundle = load_bundle(connected_bundle)
    session = create_session(bundle.member_bytes[1], SessionConfig())
    feed = _bundle_feeder(bundle.manifest, 1, session)
    x = np.ones((2, 1, 4, 4), np.float32)
    first = {"logits": np.full((2, 3), 7.0, np.float32), "features": np.full((2, 16), 3.0, np.float32)}
    out = feed({"x": x}, [first])
    assert out["x"] is x
    assert out["prev_logits"] is first["logits"]
    assert out["conn_features"] is first["features"]


def test_prefix_latency_is_the_sum_within_each_pass(tiny_bundle: Path) -> None:
    profile = profile_bundle(tiny_bundle, FAST)
    prefixes = profile["prefixes"]
    assert [p["members"] for p in prefixes] == [1, 2, 3]
    assert prefixes[0]["latency_ms"] == profile["members"][0]["latency_ms"]
    # every pass's sum grows with k, so every order statistic does too
    for a, b in zip(prefixes, prefixes[1:]):
        assert all(b["latency_ms"][q] >= a["latency_ms"][q] for q in QUANTILES)
    assert prefixes[2]["latency_ms"]["min"] >= sum(m["latency_ms"]["min"] for m in profile["members"]) - 1e-4


def test_min_seconds_keeps_timing_past_min_queries(tiny_bundle: Path) -> None:
    profile = profile_bundle(tiny_bundle, MeasureConfig(min_queries=1, min_seconds=0.05, warmup_queries=0, batch=1, pool=2))
    assert profile["members"][0]["latency_ms"]["queries"] > 1
    assert profile["measurement"]["batch_sizes"] == [1]


def test_peak_memory_covers_every_sample(tiny_bundle: Path) -> None:
    memory = profile_bundle(tiny_bundle, FAST)["memory_mb"]
    for phase in ("load", "run"):
        record = memory[phase]
        assert record["samples"] >= 2
        if record["kernel_peak_scope"] == "phase":  # VmHWM was reset: it is a true peak of the phase
            # per-CPU RSS counters are folded in lazily: allow a few hundred KiB
            assert record["kernel_peak_mb"] >= record["rss_sampled_peak_mb"] - 0.5


def test_data_rows_are_used_and_checked(tiny_bundle: Path) -> None:
    x = np.random.default_rng(0).normal(size=(10, 1, 4, 4)).astype(np.float32)
    profile = profile_bundle(tiny_bundle, FAST, data=x, data_label="val.npz")
    assert profile["measurement"]["inputs"] == "data: val.npz (10 rows)"
    with pytest.raises(MeasurementError, match="task's shape"):
        profile_bundle(tiny_bundle, FAST, data=np.zeros((10, 16), np.float32))


def _typed_model(path: Path) -> Path:
    """A plain ONNX model with a dynamic batch, an int64 input and a bool input."""
    nodes = [
        helper.make_node("Cast", ["ids"], ["ids_f"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["ids_f", "mask_f"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "typed",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 5]),
            helper.make_tensor_value_info("mask", TensorProto.BOOL, ["batch", 5]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, path)
    return path


def test_plain_onnx_inputs_come_from_the_graph(tmp_path: Path) -> None:
    profile = profile_onnx(_typed_model(tmp_path / "typed.onnx"), FAST)
    member = profile["members"][0]
    assert profile["name"] == "typed" and member["name"] == "typed"
    assert member["inputs"] == {"ids": [-1, 5], "mask": [-1, 5]}
    assert set(member["batches"]) == {"1", "4"} and _ordered(member["batches"]["4"]["latency_ms"])


def test_plain_onnx_errors_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(MeasurementError, match="does not exist"):
        profile_onnx(tmp_path / "missing.onnx", FAST)
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(MeasurementError, match="re-export"):
        profile_onnx(tmp_path / "bad.onnx", FAST)
    with pytest.raises(MeasurementError, match="one input"):
        profile_onnx(_typed_model(tmp_path / "typed.onnx"), FAST, data=np.zeros((3, 5), np.int64))


@pytest.mark.parametrize("field, value", [("min_queries", 0), ("min_seconds", -1.0), ("batch", 0), ("pool", 0)])
def test_bad_config_is_rejected(field: str, value: float) -> None:
    with pytest.raises(MeasurementError, match=field):
        MeasureConfig(**{field: value})


def test_latency_stats_are_percentiles() -> None:
    stats = latency_stats(np.arange(1, 102, dtype=float))
    assert (stats["min"], stats["p50"], stats["p90"], stats["max"], stats["queries"]) == (1.0, 51.0, 91.0, 101.0, 101)
    with pytest.raises(MeasurementError):
        latency_stats([])


class _LoggedSession:
    """Records (name, feed value) of every ``run`` into a shared log."""

    def __init__(self, name: str, log: list[tuple[str, int]]) -> None:
        self.name, self.log = name, log

    def run(self, fetches: object, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.log.append((self.name, int(feed["x"][0])))
        return [feed["x"]]


def test_time_sessions_warms_up_then_interleaves_rotating_the_order() -> None:
    log: list[tuple[str, int]] = []
    sessions = {n: _LoggedSession(n, log) for n in ("a", "b", "c")}
    pool = [{"x": np.array([i])} for i in range(4)]
    times = time_sessions(sessions, {n: pool for n in sessions}, rounds=3, calls_per_round=2, warmup=1)
    assert {n: t.shape for n, t in times.items()} == {"a": (6,), "b": (6,), "c": (6,)}
    assert all((t >= 0).all() for t in times.values())
    assert log[:3] == [("a", 0), ("b", 0), ("c", 0)]  # warm-up: each session in turn
    assert [n for n, _ in log[3:]] == list("aabbccbbccaaccaabb")  # rotated one each round
    assert [v for n, v in log[3:] if n == "a"] == [0, 1, 1, 2, 2, 3]  # round r, call i -> feed (r + i) % 4


def test_time_sessions_with_two_sessions_alternates_every_call() -> None:
    log: list[tuple[str, int]] = []
    sessions = {n: _LoggedSession(n, log) for n in ("dense", "sparse")}
    pool = [{"x": np.array([i])} for i in range(3)]
    time_sessions(sessions, {n: pool for n in sessions}, rounds=4)
    assert log == [
        ("dense", 0),
        ("sparse", 0),
        ("sparse", 1),
        ("dense", 1),
        ("dense", 2),
        ("sparse", 2),
        ("sparse", 0),
        ("dense", 0),
    ]


@pytest.mark.parametrize("kwargs", [{"rounds": 0}, {"rounds": 1, "calls_per_round": 0}, {"rounds": 1, "warmup": -1}])
def test_time_sessions_rejects_bad_counts(kwargs: dict) -> None:
    with pytest.raises(MeasurementError):
        time_sessions({"a": _LoggedSession("a", [])}, {"a": [{"x": np.zeros(1)}]}, **kwargs)


def test_time_sessions_needs_sessions_and_their_feeds() -> None:
    with pytest.raises(MeasurementError, match="at least one session"):
        time_sessions({}, {}, rounds=1)
    with pytest.raises(MeasurementError, match="no feeds"):
        time_sessions({"a": _LoggedSession("a", [])}, {"a": []}, rounds=1)


def test_batch_one_latencies_are_what_the_runtime_records(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    sessions = [create_session(blob, SessionConfig()) for blob in bundle.member_bytes]
    runtime = edge_runtime.AnytimeRuntime(bundle, entropy_threshold="off", warmup=0, sessions=sessions)
    rows = [np.full((1, 1, 4, 4), v, np.float32) for v in (0.5, -1.0)]
    tracker = PeakTracker().start()
    times = _served_passes(runtime, rows, MeasureConfig(min_queries=5, min_seconds=0.0, warmup_queries=1), tracker)
    assert times.shape == (5, 3)
    recorded = runtime.latency_observations()  # the warm-up request, then the five timed ones
    assert all(len(window) == 6 for window in recorded)
    np.testing.assert_array_equal(times, np.stack([window[1:] for window in recorded], axis=1))


def test_memory_is_measured_in_a_fresh_runtime_process(tiny_bundle: Path) -> None:
    import sys

    import torch  # noqa: F401 - a heavy import in this process must not reach the probe's baseline

    from profiles.memory import rss_mb

    config = MeasureConfig(min_queries=5, min_seconds=0.0, warmup_queries=1, batch=2, pool=2, memory_passes=8)
    profile = profile_bundle(tiny_bundle, config)
    memory = profile["memory_mb"]
    assert memory["method"] == "fresh runtime process"
    assert "torch" in sys.modules and memory["process_baseline"] < rss_mb() - 50
    loaded = sum(m["rss_load_delta_mb"] for m in profile["members"])
    assert loaded == pytest.approx(memory["rss_after_load"] - memory["process_baseline"], abs=0.5)
    assert memory["run"]["kernel_peak_mb"] >= memory["rss_after_load"] - 0.5


def _renamed_connections_bundle(path: Path) -> Path:
    """Like ``connected_bundle`` but each connection input has its own name, as B-DISTIL exports them."""
    from dataclasses import replace

    from exporters.bundle import write_bundle
    from onnx_members import make_bundle

    source = load_bundle(make_bundle(path / "source", num_members=3, connections=True))
    blobs, members = [], []
    for k, (spec, blob) in enumerate(zip(source.manifest.members, source.member_bytes)):
        model = onnx.load_from_string(blob)
        new = f"features_from_{k - 1}"
        for value in model.graph.input:
            if value.name == "conn_features":
                value.name = new
        for node in model.graph.node:
            node.input[:] = [new if i == "conn_features" else i for i in node.input]
        blobs.append(model.SerializeToString())
        members.append(replace(spec, connections=tuple(replace(c, input=new) for c in spec.connections)))
    return write_bundle(path / "renamed", replace(source.manifest, members=tuple(members)), blobs)


def test_members_with_distinct_connection_names_are_profiled(tmp_path: Path) -> None:
    profile = profile_bundle(_renamed_connections_bundle(tmp_path), FAST)
    assert [m["conditional_on"] for m in profile["members"]] == [[], ["member_1"], ["member_2"]]
    assert set(profile["members"][2]["inputs"]) == {"x", "prev_logits", "features_from_1"}
    assert all(m["latency_ms"]["queries"] >= 20 for m in profile["members"])


def test_a_member_failing_with_an_empty_message_is_named() -> None:
    """The old first-line copy here raised IndexError on an exception whose message is empty."""
    from profiles.measure import _failing_run

    assert str(_failing_run("m1", RuntimeError(""))) == "'m1' failed while running: RuntimeError"
