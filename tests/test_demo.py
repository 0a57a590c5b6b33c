"""The main job end to end on small data: every artefact is written and the runtime can use it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import edge_runtime
from distill.demo import DemoConfig, run_demo
from edge_runtime.device import fingerprint


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo")
    cfg = DemoConfig(
        data="digits",
        out=out / "demo",
        runs_dir=out / "runs",
        members=2,
        ensemble_epochs=8,
        teacher_epochs=10,
        fcpts_iterations=20,
        student_epochs=1,
        lowrank_rank=16,
        profile_queries=40,
        profile_seconds=0.0,
        progress=False,
    )
    lines: list[str] = []
    report = run_demo(cfg, say=lines.append)
    return out / "demo", {"report": report, "lines": lines}


def test_demo_writes_every_artefact(demo) -> None:
    out, result = demo
    for name in (
        "bundle/manifest.json",
        "report.json",
        "validation.npz",
        "test.npz",
        "accuracy_vs_latency.png",
        "candidates/teacher/manifest.json",
        "candidates/lowrank/manifest.json",
        "candidates/sparse/manifest.json",
        "cascade/manifest.json",
    ):
        assert (out / name).is_file(), name
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["anytime_curve"] == result["report"]["anytime_curve"]
    assert any("Anytime curve" in line for line in result["lines"])


def test_report_figures_are_consistent(demo) -> None:
    _, result = demo
    report = result["report"]
    curve = report["anytime_curve"]
    assert [p["members"] for p in curve] == list(range(1, len(curve) + 1))
    assert curve[-1]["accuracy"] > 0.5  # ten classes: chance is 0.1
    latencies = [p["latency_ms_p50"] for p in curve]
    assert all(v > 0 for v in latencies)
    assert 1.0 <= report["entropy_exit"]["mean_members"] <= len(curve)
    assert len(report["budgets"]) >= 2
    int8 = {r["name"]: r for r in report["int8"]}
    assert {"teacher_int8", "lowrank_int8"} <= set(int8)
    passed = {name for name, r in int8.items() if r["refused"] is None}
    assert {c["name"] for c in report["candidates"]} == {"teacher", "bdistil", "lowrank", "sparse", "cascade", *passed}
    sparse = next(c for c in report["candidates"] if c["name"] == "sparse")
    assert sparse["nonzero_params"] < 0.35 * sparse["params"]  # 80% target (biases are not pruned)


def test_int8_candidates_are_gated_bundles_or_refusals(demo) -> None:
    out, result = demo
    for row in result["report"]["int8"]:
        path = out / "candidates" / row["name"]
        if row["refused"] is not None:  # the gate said no: one line, nothing written
            assert "nothing written" in row["refused"] and "\n" not in row["refused"] and not path.exists()
            continue
        manifest = edge_runtime.load(path).manifest
        assert manifest.quantization is not None and manifest.quantization.source["name"] == row["source"]
        assert row["accuracy_int8"] >= row["accuracy_float"] - 0.005 - 1e-9
        assert manifest.member_latency_ms(fingerprint(), "p50") is not None  # profiled like every candidate
        assert row["p50_ms_int8"] > 0 and row["size_bytes_int8"] > 0


def test_bundle_carries_threshold_and_profile_and_runs(demo) -> None:
    out, result = demo
    runtime = edge_runtime.load(out / "bundle")
    manifest = runtime.manifest
    assert manifest.calibration is not None
    assert manifest.calibration.entropy_threshold == pytest.approx(result["report"]["calibration"]["entropy_threshold"])
    assert manifest.member_latency_ms(fingerprint(), "p99") is not None
    test = np.load(out / "test.npz")
    answers = runtime.predict(test["x"][:20], entropy_threshold="calibrated")
    accuracy = np.mean([a.label == y for a, y in zip(answers, test["y"][:20])])
    assert accuracy > 0.5


def test_cascade_of_the_cheapest_student_then_the_teacher(demo) -> None:
    out, result = demo
    report = result["report"]
    cascade = report["cascade"]
    singles = {c["name"]: c for c in report["candidates"] if c["name"] in ("lowrank", "sparse")}
    assert cascade["members"] == [min(singles, key=lambda n: singles[n]["latency_ms_p50"]), "teacher"]
    runtime = edge_runtime.load(out / "cascade")
    manifest = runtime.manifest
    assert manifest.combine == "replace" and manifest.num_members == 2
    assert manifest.calibration.entropy_threshold == pytest.approx(cascade["calibration"]["entropy_threshold"])
    assert manifest.member_latency_ms(fingerprint(), "p50") is not None
    # Full cascade = the teacher's answer; its first prefix = the student's.
    accuracy = {c["name"]: c["accuracy"] for c in report["candidates"]}
    assert cascade["curve"][-1]["accuracy"] == pytest.approx(accuracy["teacher"])
    assert cascade["curve"][0]["accuracy"] == pytest.approx(accuracy[cascade["members"][0]])
    assert 1.0 <= cascade["entropy_exit"]["mean_members"] <= 2.0
    # The exits sit on the curves' latency basis: each sample costs its exit prefix's profiled p50.
    for exit_, curve in ((cascade["entropy_exit"], cascade["curve"]), (report["entropy_exit"], report["anytime_curve"])):
        assert curve[0]["latency_ms_p50"] <= exit_["profiled_ms_p50"] <= curve[-1]["latency_ms_p50"]
    assert any(line.startswith("\nCascade ") for line in result["lines"])
