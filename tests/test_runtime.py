"""The runtime on real tiny ONNX bundles: the member chain, input validation, loading errors, threads."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import edge_runtime
from edge_runtime.bundle import MANIFEST_NAME, Connection, Preprocess, load_bundle
from edge_runtime.device import fingerprint
from edge_runtime.errors import ChecksumError, InputError, ManifestError, MemberError, ModelLoadError, PolicyError
from edge_runtime.session import SessionConfig
from exporters.bundle import archive_bundle, write_bundle
from onnx_members import make_bundle, set_member_bytes


def _x(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 1, 4, 4)).astype(np.float32)


def _manual_chain(bundle_path: Path, x: np.ndarray) -> list[dict[str, np.ndarray]]:
    """Members run by hand with plain ORT sessions, feeding prev_logits and connections per the manifest."""
    bundle = load_bundle(bundle_path)
    outs: list[dict[str, np.ndarray]] = []
    for k, (spec, blob) in enumerate(zip(bundle.manifest.members, bundle.member_bytes)):
        session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
        feed = {"x": x}
        if k:
            feed["prev_logits"] = outs[-1]["logits"]
        for c in spec.connections:
            feed[c.input] = outs[c.member][c.output]
        names = [o.name for o in session.get_outputs()]
        outs.append(dict(zip(names, session.run(names, feed))))
    return outs


@pytest.fixture
def distinct_bundle(tmp_path: Path) -> Path:
    """Connections with one input name per member (features_from_k), as B-DISTIL exports them."""
    return make_bundle(tmp_path / "distinct", num_members=3, connections=True, distinct_connection_names=True)


@pytest.mark.parametrize("fixture", ["tiny_bundle", "connected_bundle", "distinct_bundle"])
def test_prefixes_match_a_manual_ort_chain(fixture: str, request: pytest.FixtureRequest) -> None:
    path = request.getfixturevalue(fixture)
    x = _x(16)
    expected = _manual_chain(path, x)
    runtime = edge_runtime.load(path, entropy_threshold="off")
    prefixes = runtime.evaluate_prefixes(x, batch_size=5)  # chunked: carried tensors must not leak between chunks
    assert prefixes.probs.shape == (3, 16, 3) and prefixes.entropy.shape == (3, 16)
    for k in range(3):
        np.testing.assert_allclose(prefixes.probs[k], expected[k]["probs"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(prefixes.entropy[k], expected[k]["entropy"], rtol=1e-5, atol=1e-6)
    answers = runtime.predict(x)
    for i, a in enumerate(answers):
        assert (a.members_used, a.exit_reason) == (3, "complete")
        np.testing.assert_allclose(a.probabilities, expected[2]["probs"][i], rtol=1e-5, atol=1e-6)
        assert a.label == int(expected[2]["probs"][i].argmax())
        assert a.label_name == f"class_{a.label}"


def test_connections_change_the_answer(connected_bundle: Path, tmp_path: Path) -> None:
    # Guards the test above: feeding the wrong features would be caught only if they matter.
    x = _x(8)
    chain = _manual_chain(connected_bundle, x)
    bundle = load_bundle(connected_bundle)
    session = ort.InferenceSession(bundle.member_bytes[1], providers=["CPUExecutionProvider"])
    wrong = session.run(
        ["probs"], {"x": x, "prev_logits": chain[0]["logits"], "conn_features": np.zeros_like(chain[0]["features"])}
    )[0]
    assert not np.allclose(wrong, chain[1]["probs"], atol=1e-4)


@pytest.mark.parametrize("threshold", [0.3, 0.6, 0.9])
@pytest.mark.parametrize("fixture", ["connected_bundle", "distinct_bundle"])
def test_predict_stops_where_the_prefix_entropy_first_meets_the_threshold(
    fixture: str, threshold: float, request: pytest.FixtureRequest
) -> None:
    x = _x(64, seed=1)
    runtime = edge_runtime.load(request.getfixturevalue(fixture))
    prefixes = runtime.evaluate_prefixes(x)
    for batch in (x, *[x[i : i + 1] for i in range(len(x))]):
        answers = runtime.predict(batch, entropy_threshold=threshold)
        offset = 0 if len(batch) == len(x) else int(np.flatnonzero((x == batch[0]).all(axis=(1, 2, 3)))[0])
        for i, a in enumerate(answers):
            e = prefixes.entropy[:, offset + i]
            below = np.flatnonzero(e[:-1] <= threshold)
            used = int(below[0]) + 1 if len(below) else 3
            assert a.members_used == used
            assert a.exit_reason == ("confident" if len(below) else "complete")
            np.testing.assert_allclose(a.probabilities, prefixes.probs[used - 1, offset + i], rtol=1e-5, atol=1e-6)


def test_calibrated_threshold_is_the_default_and_can_be_overridden(tmp_path: Path) -> None:
    path = make_bundle(tmp_path / "b", calibration=5.0)  # every sample is below 5 nats
    runtime = edge_runtime.load(path)
    assert runtime.entropy_threshold == 5.0
    assert runtime.predict(_x(1))[0].members_used == 1
    assert runtime.predict(_x(1), entropy_threshold="off")[0].members_used == 3
    assert edge_runtime.load(path, entropy_threshold="off").predict(_x(1))[0].members_used == 3
    uncalibrated = edge_runtime.load(make_bundle(tmp_path / "u"))
    assert uncalibrated.entropy_threshold is None
    assert uncalibrated.predict(_x(1), entropy_threshold="calibrated")[0].members_used == 3


def test_single_unbatched_sample_and_integer_dtypes_are_accepted(tiny_bundle: Path) -> None:
    runtime = edge_runtime.load(tiny_bundle, entropy_threshold="off")
    x = np.arange(16, dtype=np.int64).reshape(1, 4, 4)
    (unbatched,) = runtime.predict(x)
    (batched,) = runtime.predict(x[None].astype(np.float32))
    np.testing.assert_array_equal(unbatched.probabilities, batched.probabilities)
    assert len(runtime.predict(x.tolist())) == 1  # nested lists too


def test_preprocess_is_applied_once(tmp_path: Path) -> None:
    path = make_bundle(tmp_path / "p", preprocess=Preprocess(scale=1 / 255, offset=-0.5))
    plain = edge_runtime.load(make_bundle(tmp_path / "q"), entropy_threshold="off")
    runtime = edge_runtime.load(path, entropy_threshold="off")
    raw = np.random.default_rng(2).integers(0, 256, size=(4, 1, 4, 4)).astype(np.uint8)
    expected = plain.evaluate_prefixes(raw.astype(np.float32) / 255 - 0.5).probs[-1]
    got = np.stack([a.probabilities for a in runtime.predict(raw)])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(runtime.evaluate_prefixes(raw).probs[-1], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((2, 4, 4), np.float32), "shape"),
        (np.zeros((2, 1, 4, 5), np.float32), "shape"),
        (np.zeros((2, 16), np.float32), "shape"),
        (np.zeros((0, 1, 4, 4), np.float32), "empty"),
        (np.full((2, 1, 4, 4), np.nan, np.float32), "NaN or inf"),
        (np.full((1, 1, 4, 4), np.inf), "NaN or inf"),
        (np.full((1, 1, 4, 4), 1e300), "NaN or inf"),  # finite float64, inf as float32
        (np.full((1, 1, 4, 4), "a"), "dtype"),
        (np.zeros((1, 1, 4, 4), np.complex64), "dtype"),
        (np.array([None] * 16, dtype=object).reshape(1, 1, 4, 4), "dtype"),
    ],
)
def test_bad_input_is_rejected_with_a_fix(tiny_bundle: Path, bad: np.ndarray, message: str) -> None:
    runtime = edge_runtime.load(tiny_bundle)
    with pytest.raises(InputError, match=message) as info:
        runtime.predict(bad)
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match=message):
        runtime.evaluate_prefixes(bad)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"budget_ms": 0},
        {"budget_ms": -1},
        {"budget_ms": "soon"},
        {"entropy_threshold": -0.1},
        {"entropy_threshold": float("nan")},
    ],
)
def test_impossible_policy_values_are_rejected(tiny_bundle: Path, kwargs: dict) -> None:
    runtime = edge_runtime.load(tiny_bundle)
    with pytest.raises(PolicyError):
        runtime.predict(_x(1), **kwargs)
    with pytest.raises(PolicyError):
        edge_runtime.load(tiny_bundle, **kwargs)


def test_tampered_and_unknown_version_bundles_do_not_load(tiny_bundle: Path) -> None:
    manifest_path = tiny_bundle / MANIFEST_NAME
    data = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**data, "version": 3}))
    with pytest.raises(ManifestError, match="version 3"):
        edge_runtime.load(tiny_bundle)
    manifest_path.write_text(json.dumps(data))
    member = tiny_bundle / "member_1.onnx"
    member.write_bytes(member.read_bytes()[:-1] + b"\x01")
    with pytest.raises(ChecksumError, match="member_1"):
        edge_runtime.load(tiny_bundle)


def test_onnx_that_fails_to_load_is_a_load_error(tiny_bundle: Path, tmp_path: Path) -> None:
    set_member_bytes(tiny_bundle, 1, b"not an onnx protobuf")
    with pytest.raises(ModelLoadError, match="member_2"):
        edge_runtime.load(tiny_bundle)
    set_member_bytes(tiny_bundle, 1, b"\x08\x07\x3a\x00")  # well-formed protobuf: ir_version 7, an empty graph
    with pytest.raises(ModelLoadError, match="member_2"):
        edge_runtime.load(tiny_bundle)


def test_graph_inputs_must_match_the_manifest_connections(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    members = list(bundle.manifest.members)
    members[1] = replace(members[1], connections=(Connection(input="conn_features", member=0, output="features"),))
    path = write_bundle(tmp_path / "wired", replace(bundle.manifest, members=tuple(members)), bundle.member_bytes)
    with pytest.raises(ModelLoadError, match="conn_features"):
        edge_runtime.load(path)


def test_real_member_failing_mid_request(tmp_path: Path) -> None:
    # Member 2 only accepts single samples: ONNX Runtime raises on a batch, the runtime answers with member 1.
    path = make_bundle(tmp_path / "f", batch_one_only=(1,))
    runtime = edge_runtime.load(path, entropy_threshold="off")
    x = _x(4)
    answers = runtime.predict(x)
    assert [(a.members_used, a.exit_reason) for a in answers] == [(1, "error")] * 4
    member_1 = np.stack([runtime.evaluate_prefixes(x[i : i + 1]).probs[0, 0] for i in range(4)])
    np.testing.assert_allclose(np.stack([a.probabilities for a in answers]), member_1, rtol=1e-5, atol=1e-6)
    with pytest.raises(MemberError, match="member_2"):
        runtime.evaluate_prefixes(x)
    assert runtime.predict(x[:1])[0].exit_reason == "complete"  # still serving
    assert runtime.member_errors()[1] == 2


def test_budget_uses_the_profile_for_this_device(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    rows = [{"name": m.name, "latency_ms": {"p50": 1.0, "p90": 1.0, "p99": 1e4}} for m in bundle.manifest.members]
    profiled = bundle.with_manifest(replace(bundle.manifest, profiles={fingerprint(): {"members": rows}}))
    runtime = edge_runtime.load(profiled)
    assert runtime.latency_estimator.source() == "profile"
    assert runtime.latency_estimator.quantile == 0.995  # the default p99.5 starts from the profile's p99
    answer = runtime.predict(_x(1), budget_ms=1e3)[0]  # member 2 is "profiled" at 10 s at p99
    assert (answer.members_used, answer.exit_reason) == (1, "budget")
    other = bundle.with_manifest(replace(bundle.manifest, profiles={"another-device": {"members": rows}}))
    assert edge_runtime.load(other).latency_estimator.source() == "observed"


def test_latency_observations_grow_with_single_sample_requests(tiny_bundle: Path) -> None:
    runtime = edge_runtime.load(tiny_bundle, warmup=3, entropy_threshold="off")
    before = [len(o) for o in runtime.latency_observations()]
    assert before == [2, 2, 2]
    for i in range(5):
        runtime.predict(_x(1, seed=i))
    observed = runtime.latency_observations()
    assert [len(o) for o in observed] == [7, 7, 7]
    assert all((o > 0).all() for o in observed)


def test_zip_bundle_and_session_config(tiny_bundle: Path, tmp_path: Path) -> None:
    archive = archive_bundle(tiny_bundle, tmp_path / "b.zip")
    config = SessionConfig(intra_op_threads=2)
    runtime = edge_runtime.load(archive, session_config=config, entropy_threshold="off")
    assert runtime.session_config is config
    assert len(runtime.member_sessions) == runtime.num_members == 3
    assert all(s.get_session_options().intra_op_num_threads == 2 for s in runtime.member_sessions)
    reference = edge_runtime.load(tiny_bundle, entropy_threshold="off").predict(_x(3))
    assert [a.label for a in runtime.predict(_x(3))] == [a.label for a in reference]


def test_predict_from_many_threads_matches_serial(connected_bundle: Path) -> None:
    runtime = edge_runtime.load(connected_bundle, entropy_threshold=0.6)
    inputs = [_x(1 + i % 3, seed=i) for i in range(40)]
    expected = [[(a.label, a.members_used) for a in runtime.predict(x)] for x in inputs]
    got: list[object] = [None] * len(inputs)
    errors: list[BaseException] = []

    def worker(offset: int) -> None:
        try:
            for i in range(offset, len(inputs), 4):
                got[i] = [(a.label, a.members_used) for a in runtime.predict(inputs[i], budget_ms=1e4 if i % 2 else None)]
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert got == expected


def test_prediction_to_dict_is_json_ready(tiny_bundle: Path) -> None:
    answer = edge_runtime.load(tiny_bundle).predict(_x(1))[0]
    d = json.loads(json.dumps(answer.to_dict()))
    assert set(d) == {
        "label",
        "label_name",
        "probabilities",
        "members_used",
        "exit_reason",
        "entropy",
        "elapsed_ms",
        "late",
        "stopped_in_flight",
    }
    assert d["probabilities"] == pytest.approx(answer.probabilities.tolist())
    assert "probabilities" not in answer.to_dict(probabilities=False)


def test_public_api_is_explicit_and_sorted() -> None:
    assert edge_runtime.__all__ == sorted(edge_runtime.__all__)
    for name in edge_runtime.__all__:
        assert getattr(edge_runtime, name) is not None
    with pytest.raises(AttributeError):
        edge_runtime.no_such_name  # noqa: B018 - the attribute access is what must raise


@pytest.mark.parametrize("fast", [True, False])
def test_finite_check_on_both_paths(tiny_bundle: Path, fast: bool) -> None:
    runtime = edge_runtime.load(tiny_bundle, entropy_threshold="off")
    assert runtime._fast_finite  # the BLAS dot self-test passes on this machine
    runtime._fast_finite = fast
    for bad in (np.nan, np.inf, -np.inf):
        for position in (0, 7, 15):
            x = np.ones((1, 1, 4, 4), np.float32)
            x.reshape(-1)[position] = bad
            with pytest.raises(InputError, match="NaN or inf"):
                runtime.predict(x)
    with np.errstate(over="ignore"):  # x.x overflows for |x| > 1.8e19: the exact check must accept it
        assert len(runtime.predict(np.full((1, 1, 4, 4), 1e20, np.float32))) == 1
