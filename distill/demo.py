"""The main job, end to end: teacher -> students -> bundles -> device profiles -> calibrated anytime runs.

Steps (each one real, each one timed):

1. load the data and train (or reuse) the teacher;
2. build the candidates: a B-DISTIL anytime ensemble, a low-rank student (spectral init + distillation)
   and an FCPTS sparse student, each exported through the gated exporters as a bundle; then INT8 copies
   (:mod:`exporters.quantize`, calibrated on the validation split, gated on the test split) of the teacher,
   of the low-rank student (low-rank + INT8) and of the most accurate student if that is another one;
3. profile every bundle on this machine (latency percentiles, memory) and store the profile inside it;
4. calibrate the ensemble's entropy exit threshold on validation data; compose the cheapest single student
   and the teacher into a cascade (``combine="replace"``), profile and calibrate it the same way;
5. evaluate on the test split through ``edge_runtime`` exactly as a device would: the anytime curve
   (members -> accuracy, latency), the calibrated entropy exit and runs under 2-3 latency budgets, one
   request per sample at batch 1, with real early exit;
6. write the bundle, ``report.json``, ``validation.npz``/``test.npz`` (raw inputs, as clients send them,
   for ``calibrate``/``select``/benchmarks) and a PNG plot of accuracy vs latency.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from distill.data import Dataset, load_dataset
from distill.diagnostics import ensemble_warnings, student_warnings
from distill.distributed import is_main_process, main_continues_alone
from distill.errors import TrainingError
from distill.teacher import default_teacher_config
from distill.teachers import LoadedTeacher, load_teacher
from edge_runtime.files import atomic_write
from profiles.budget_runs import budget_runs
from profiles.report import format_table

__all__ = ["DemoConfig", "run_demo"]

FALLBACK_RANK = 16  # the low-rank student's rank when the speed-up search finds nothing fast enough


@dataclass(frozen=True)
class DemoConfig:
    """What the demo builds and how long it measures."""

    data: str = "digits"  # any spec load_dataset accepts
    teacher: str = "auto"  # "auto", a checkpoint dir, a .onnx or a .pt2 file (distill.teachers.load_teacher)
    teacher_inputs: str = "raw"  # what a .onnx/.pt2 teacher takes: "raw" client values or "model" inputs
    out: Path = Path("runs/demo")  # bundle, report, plot and data files go here
    runs_dir: Path = Path("runs")  # cache of trained teachers
    members: int = 4  # B-DISTIL ensemble members
    ensemble_epochs: int = 0  # B-DISTIL epochs per member attempt; 0 = scaled to the data (distill.train.scaled_epochs)
    teacher_epochs: int | None = None  # None: the data set's default teacher schedule
    sparsity: float = 0.8  # FCPTS global sparsity target
    fcpts_iterations: int = 400  # FCPTS calibration iterations (the paper uses ~1600)
    lowrank_speedup: float = 2.0  # low-rank student: ranks searched for this ORT speed-up over the teacher
    lowrank_rank: int = 0  # > 0: use this rank instead of searching (no timing involved)
    student_epochs: int = 3  # distillation epochs for the low-rank student
    profile_queries: int = 1024  # timed single-stream queries per batch size when profiling
    profile_seconds: float = 0.5  # ... and at least this long
    accuracy_drop: float = 0.5  # calibration target: points below the full ensemble
    int8: bool = True  # add INT8 copies of the teacher and students (anytime-edge quantize) as candidates
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "runs_dir", Path(self.runs_dir))
        if self.members < 1:
            raise TrainingError("the demo needs --members >= 1")
        if not 0.0 < self.sparsity < 1.0:
            raise TrainingError("--sparsity must lie in (0, 1)")


@dataclass
class _Log:
    """Prints a step's name, then how long it took."""

    say: Callable[[str], None]
    seconds: dict[str, float] = field(default_factory=dict)

    def step(self, name: str, fn: Callable[[], Any]) -> Any:
        self.say(f"[{len(self.seconds) + 1}] {name} ...")
        started = time.perf_counter()
        result = fn()
        self.seconds[name] = round(time.perf_counter() - started, 2)
        self.say(f"    done in {self.seconds[name]:.1f} s")
        return result


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _build_candidates(cfg: DemoConfig, loaded: LoadedTeacher, data: Dataset, log: _Log) -> dict[str, Any]:
    """Train and export every candidate; returns name -> ExportResult (under torchrun: rank 0 exports, others get None)."""
    import torch

    from distill.lowrank.student import LowRankConfig, lowrank_student
    from distill.progressive import ProgressiveConfig, progressive_ensemble
    from distill.sparse import FCPTSConfig, fcpts_student
    from exporters import export_ensemble, export_model

    task = data.task_spec()
    heldout = (data.x_test, data.y_test)
    meta = {"data": data.name, "seed": cfg.seed}
    bundles = cfg.out / "candidates"
    results: dict[str, Any] = {}
    torch.manual_seed(cfg.seed)

    teacher = loaded.module
    results["teacher"] = log.step(
        "export the teacher (gated: checker, torch-vs-ORT parity, held-out accuracy)",
        lambda: _export_teacher(loaded, data, bundles / "teacher", meta) if is_main_process() else None,
    )
    layered: list[Any] = []  # the module low-rank and FCPTS rewrite: the teacher, or a dense proxy of an ONNX one

    def with_layers(method: str) -> Any:
        if not layered:
            layered.append(loaded.layered(method, data, runs_dir=cfg.runs_dir, progress=cfg.progress, say=log.say))
        return layered[0]

    def ensemble() -> Any:
        built = progressive_ensemble(
            teacher,
            data,
            ProgressiveConfig(members=cfg.members, epochs=cfg.ensemble_epochs, seed=cfg.seed, progress=cfg.progress),
        )
        if not is_main_process():  # under torchrun: every rank trained, rank 0 exports
            return None
        info = [{"method": "bdistil", **m.to_dict()} for m in built.report.members]
        return export_ensemble(
            built.members,
            task,
            cfg.out / "bundle",
            heldout=heldout,
            connections=built.connections,
            combine="sum",
            name="bdistil",
            metadata={**meta, "method": "bdistil", "report": built.report.to_dict()},
            member_info=info,
        )

    results["bdistil"] = log.step(f"B-DISTIL: {cfg.members}-member anytime ensemble, exported", ensemble)

    def lowrank() -> Any:
        def build(**choice: Any) -> tuple[Any, Any]:
            return lowrank_student(
                with_layers("low-rank factorisation"),
                data,
                LowRankConfig(**choice, epochs=cfg.student_epochs, seed=cfg.seed, progress=cfg.progress),
            )

        choice: dict[str, Any] = {"rank": cfg.lowrank_rank} if cfg.lowrank_rank else {"speedup": cfg.lowrank_speedup}
        try:
            student, report = build(**choice)
        except TrainingError as exc:
            # On a busy machine no candidate may time out 2x faster; a demo should still finish.
            log.say(f"    note: {exc}; meanwhile the demo uses rank {FALLBACK_RANK}")
            choice = {"rank": FALLBACK_RANK}
            student, report = build(**choice)
        if not is_main_process():
            return None
        return export_model(
            student,
            task,
            bundles / "lowrank",
            heldout=heldout,
            name="lowrank",
            metadata={**meta, "method": "lowrank", "report": report.to_dict()},
            info={"method": "lowrank", **choice},
        )

    results["lowrank"] = log.step(
        f"low-rank student (ranks searched for {cfg.lowrank_speedup:g}x the teacher's ORT speed, spectral init, distilled)",
        lowrank,
    )

    def sparse() -> Any:
        student, report = fcpts_student(
            with_layers("FCPTS"),
            data,
            target=cfg.sparsity,
            cfg=FCPTSConfig(target=cfg.sparsity, iterations=cfg.fcpts_iterations, seed=cfg.seed),
        )
        if not is_main_process():
            return None
        return export_model(
            student,
            task,
            bundles / "sparse",
            heldout=heldout,
            name="sparse",
            metadata={**meta, "method": "fcpts", "achieved_sparsity": report.final_global},
            info={"method": "fcpts", "target": cfg.sparsity, "achieved": report.final_global},
        )

    results["sparse"] = log.step(f"FCPTS sparse student at {cfg.sparsity:.0%} global sparsity", sparse)
    return results


def _export_teacher(loaded: LoadedTeacher, data: Dataset, out: Path, meta: dict[str, Any]) -> Any:
    """The teacher as a one-member bundle: exported from torch, or an ONNX teacher wrapped as it is."""
    from exporters import export_model

    heldout = (data.x_test, data.y_test)
    metadata = {**meta, "method": "teacher", "teacher_kind": loaded.kind, "teacher": loaded.source}
    if loaded.onnx_path is not None:
        return _wrap_onnx_teacher(loaded, data, out, metadata)
    return export_model(
        loaded.module, data.task_spec(), out, heldout=heldout, name="teacher", metadata=metadata, info={"method": "teacher"}
    )


def _wrap_onnx_teacher(loaded: LoadedTeacher, data: Dataset, out: Path, metadata: dict[str, Any]) -> Any:
    """An ONNX teacher wrapped as it is (exporters.wrap), reported like an export (one member)."""
    from dataclasses import replace as replaced

    from edge_runtime.bundle import Preprocess
    from exporters import ExportResult, MemberExport
    from exporters.wrap import wrap_onnx

    assert loaded.onnx_path is not None
    raw = getattr(loaded.module, "raw_inputs", True)
    task = replaced(data.task_spec(), preprocess=Preprocess()) if raw else data.task_spec()
    x = data.raw(data.x_test) if raw else data.x_test
    started = time.perf_counter()
    wrapped = wrap_onnx(
        loaded.onnx_path,
        task,
        out,
        heldout=(x, data.y_test),
        name="teacher",
        metadata=metadata,
        info={"method": "teacher", "source_format": "onnx"},
    )
    member = MemberExport(
        name="teacher",
        bytes=wrapped.bytes,
        bytes_zip=wrapped.bytes_zip,
        params=wrapped.params,
        nonzero_params=wrapped.params,
        export_seconds=round(time.perf_counter() - started, 2),
        gates=wrapped.gates,
    )
    return ExportResult(path=wrapped.path, manifest=wrapped.manifest, members=(member,))


def _int8_candidates(
    cfg: DemoConfig, exports: dict[str, Any], data: Dataset, x_val: np.ndarray, x_test: np.ndarray, log: _Log
) -> dict[str, dict[str, Any]]:
    """INT8 copies of the teacher, the low-rank student and the most accurate student (if another one):
    quantized with the defaults of ``anytime-edge quantize`` (static QDQ, MinMax, uint8 activations), then
    per-channel weights if that first try loses more than 0.5 point. A refusal is reported, not fatal.

    Returns:
        INT8 name (``<float name>_int8``) -> ``{"source", "result" (QuantizeResult or None), "refused"}``.
    """
    from exporters.errors import VerificationError
    from exporters.quantize import QuantizeConfig, quantize_bundle

    students = [n for n, r in exports.items() if len(r.members) == 1 and n != "teacher"]
    best = max(students, key=lambda n: exports[n].reports[-1].onnx_accuracy)
    sources = list(dict.fromkeys(["teacher", *(["lowrank"] if "lowrank" in exports else []), best]))

    def build() -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for name in sources:
            entry: dict[str, Any] = {"source": name, "result": None, "refused": None}
            for config in (QuantizeConfig(), QuantizeConfig(per_channel=True)):
                try:
                    entry["result"] = quantize_bundle(
                        exports[name].path,
                        cfg.out / "candidates" / f"{name}_int8",
                        calibration=x_val,
                        heldout=(x_test, data.y_test),
                        config=config,
                        name=f"{name}_int8",
                        metadata={"method": f"{exports[name].manifest.metadata.get('method', name)}+int8"},
                    )
                    entry["refused"] = None
                    break
                except VerificationError as exc:
                    entry["refused"] = str(exc)
            if entry["refused"]:
                log.say(f"    note: no INT8 {name}: {entry['refused']}")
            out[f"{name}_int8"] = entry
        return out

    return log.step(f"INT8 copies of {', '.join(sources)} (static QDQ, calibrated on the validation split, gated)", build)


def _profile_all(cfg: DemoConfig, paths: dict[str, Path], calibration_rows: np.ndarray) -> dict[str, dict[str, Any]]:
    from profiles.measure import MeasureConfig, profile_bundle
    from profiles.store import store_profile

    measure = MeasureConfig(min_queries=cfg.profile_queries, min_seconds=cfg.profile_seconds, batch=32, seed=cfg.seed)
    profiles = {}
    for name, path in paths.items():
        profile = profile_bundle(path, measure, data=calibration_rows, data_label="validation split")
        store_profile(path, profile)
        profiles[name] = profile
    return profiles


def _entropy_run(runtime: Any, x: np.ndarray, y: np.ndarray, profile: dict[str, Any]) -> dict[str, Any]:
    """Calibrated entropy exit, one request per sample: wall time, and the profiled p50 of each sample's exit
    prefix (the basis of the anytime curve and of every candidate's latency, so the plot compares like with like)."""
    members, correct, elapsed = [], 0, []
    for i in range(len(x)):
        started = time.perf_counter()
        answer = runtime.predict(x[i : i + 1], entropy_threshold="calibrated", budget_ms="off")[0]
        elapsed.append((time.perf_counter() - started) * 1e3)
        members.append(answer.members_used)
        correct += int(answer.label == y[i])
    return {
        "threshold": runtime.manifest.calibration.entropy_threshold,
        "accuracy": correct / len(x),
        "mean_members": float(np.mean(members)),
        "latency_ms_p50": float(np.percentile(elapsed, 50)),
        "latency_ms_p99": float(np.percentile(elapsed, 99)),
        "profiled_ms_p50": float(np.percentile([profile["prefixes"][m - 1]["latency_ms"]["p50"] for m in members], 50)),
        "profiled_ms_mean": float(np.mean([profile["prefixes"][m - 1]["latency_ms"]["p50"] for m in members])),
    }


def _cascade(
    cfg: DemoConfig,
    exports: dict[str, Any],
    profiles: dict[str, dict[str, Any]],
    data: Dataset,
    x_val: np.ndarray,
    x_test: np.ndarray,
    log: _Log,
) -> dict[str, Any]:
    """The cheapest single student (profiled p50) then the teacher, as a ``combine="replace"`` cascade:
    composed from their bundles (no re-export), profiled, calibrated like the ensemble, and run on the
    test split with the calibrated entropy exit."""
    import edge_runtime
    from edge_runtime.calibrate import CalibrationTarget, calibrate, save_calibration
    from exporters.cascade import compose_cascade

    singles = [n for n, r in exports.items() if len(r.members) == 1 and n != "teacher"]
    student = min(singles, key=lambda n: profiles[n]["prefixes"][-1]["latency_ms"]["p50"])
    parts = [exports[student], exports["teacher"]]

    def build() -> dict[str, Any]:
        path = compose_cascade([r.path for r in parts], cfg.out / "cascade", name="cascade").path
        profile = _profile_all(cfg, {"cascade": path}, x_val)["cascade"]
        calibration = calibrate(
            edge_runtime.load(path, warmup=0), x_val, data.y_val, CalibrationTarget(accuracy_drop=cfg.accuracy_drop)
        )
        save_calibration(path, calibration)
        runtime = edge_runtime.load(path)
        accuracy = runtime.evaluate_prefixes(x_test).accuracy(data.y_test)
        curve = [
            {
                "members": k + 1,
                "member": m.name,
                "accuracy": float(accuracy[k]),
                "latency_ms_p50": profile["prefixes"][k]["latency_ms"]["p50"],
                "latency_ms_p99": profile["prefixes"][k]["latency_ms"]["p99"],
            }
            for k, m in enumerate(runtime.manifest.members)
        ]
        return {
            "path": path,
            "curve": curve,
            "calibration": calibration,
            "entropy_exit": _entropy_run(runtime, x_test, data.y_test, profile),
        }

    built = log.step(f"cascade {student} -> teacher (cheapest student by profiled p50), profiled and calibrated", build)
    calibration, curve = built["calibration"], built["curve"]
    return {
        "candidate": {
            "name": "cascade",
            "members": 2,
            "accuracy": curve[-1]["accuracy"],
            "latency_ms_p50": curve[-1]["latency_ms_p50"],
            "latency_ms_p99": curve[-1]["latency_ms_p99"],
            **{
                key: sum(getattr(m, attr) for r in parts for m in r.members)
                for key, attr in (
                    ("size_bytes", "bytes"),
                    ("size_bytes_zip", "bytes_zip"),
                    ("params", "params"),
                    ("nonzero_params", "nonzero_params"),
                )
            },
            "bundle": str(built["path"]),
        },
        "members": [student, "teacher"],
        "curve": curve,
        "calibration": {
            "entropy_threshold": calibration.entropy_threshold,
            "target": calibration.target,
            "validation_accuracy": calibration.accuracy,
            "validation_mean_members": calibration.mean_members,
        },
        "entropy_exit": built["entropy_exit"],
    }


def _plot(
    path: Path,
    candidates: list[dict[str, Any]],
    curve: list[dict[str, Any]],
    entropy: dict[str, Any],
    cascade: dict[str, Any] | None = None,
) -> str | None:
    """The accuracy-vs-latency PNG; None when written, else a one-line reason (:mod:`profiles.plots`)."""
    from profiles.plots import load_pyplot, save_figure

    plt, reason = load_pyplot()
    if reason is not None:
        return reason
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot([p["latency_ms_p50"] for p in curve], [100 * p["accuracy"] for p in curve], "o-", label="B-DISTIL prefix F_t")
    for p in curve:
        ax.annotate(
            f"t={p['members']}",
            (p["latency_ms_p50"], 100 * p["accuracy"]),
            textcoords="offset points",
            xytext=(4, -10),
            fontsize=8,
        )
    if cascade is not None:
        ax.plot(
            [p["latency_ms_p50"] for p in cascade["curve"]],
            [100 * p["accuracy"] for p in cascade["curve"]],
            "^--",
            label="cascade " + " -> ".join(cascade["members"]),
        )
    for c in candidates:
        if c["name"] not in ("bdistil", "cascade"):
            ax.plot(c["latency_ms_p50"], 100 * c["accuracy"], "s", label=c["name"])
    ax.plot(entropy["profiled_ms_p50"], 100 * entropy["accuracy"], "*", markersize=12, label="entropy exit (calibrated)")
    if cascade is not None:
        c_exit = cascade["entropy_exit"]
        ax.plot(c_exit["profiled_ms_p50"], 100 * c_exit["accuracy"], "*", markersize=12, label="cascade entropy exit")
    ax.set_xlabel("profiled latency p50 at batch 1 on this machine (ms; exits: each sample's exit prefix)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy vs latency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(plt, fig, path)
    return None


def run_demo(cfg: DemoConfig, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the whole job; returns the report (also written to ``cfg.out/report.json``).

    Under torchrun every rank trains the students (DDP); rank 0 alone exports, profiles, calibrates and
    writes, and the other ranks return ``{}`` once the students are trained.
    """
    import edge_runtime
    from edge_runtime.calibrate import CalibrationTarget, calibrate, save_calibration
    from edge_runtime.device import device_info, fingerprint

    started = time.perf_counter()
    log = _Log(say)
    if is_main_process():
        cfg.out.mkdir(parents=True, exist_ok=True)
    data = log.step(f"load data '{cfg.data}'", lambda: load_dataset(cfg.data, seed=cfg.seed))
    say(f"    {data!r}")
    teacher_cfg = default_teacher_config(data)
    if cfg.teacher_epochs is not None:
        teacher_cfg = replace(teacher_cfg, epochs=cfg.teacher_epochs)
    loaded = log.step(
        "train (or reuse) the teacher" if cfg.teacher == "auto" else f"load the teacher {cfg.teacher}",
        lambda: load_teacher(
            cfg.teacher, data, runs_dir=cfg.runs_dir, inputs=cfg.teacher_inputs, progress=cfg.progress, config=teacher_cfg
        ),
    )
    teacher_metrics = {"kind": loaded.kind, "source": loaded.source, **loaded.metrics}
    exports = _build_candidates(cfg, loaded, data, log)
    if not main_continues_alone():
        return {}
    paths = {name: result.path for name, result in exports.items()}

    x_val_raw, x_test_raw = data.raw(data.x_val), data.raw(data.x_test)
    np.savez(cfg.out / "validation.npz", x=x_val_raw, y=data.y_val)
    np.savez(cfg.out / "test.npz", x=x_test_raw, y=data.y_test)
    int8 = _int8_candidates(cfg, exports, data, x_val_raw, x_test_raw, log) if cfg.int8 else {}
    int8_paths = {name: e["result"].path for name, e in int8.items() if e["result"] is not None}
    profiles = log.step("profile every bundle on this machine", lambda: _profile_all(cfg, {**paths, **int8_paths}, x_val_raw))

    def calibrate_threshold() -> Any:
        runtime = edge_runtime.load(paths["bdistil"])
        calibration = calibrate(runtime, x_val_raw, data.y_val, CalibrationTarget(accuracy_drop=cfg.accuracy_drop))
        save_calibration(paths["bdistil"], calibration)
        return calibration

    calibration = log.step(
        f"calibrate the entropy exit (accuracy within {cfg.accuracy_drop} point of the full ensemble)", calibrate_threshold
    )
    runtime = edge_runtime.load(paths["bdistil"])

    # The anytime curve: accuracy of each prefix on the test split, latency from this device's profile.
    evaluation = runtime.evaluate_prefixes(x_test_raw)
    prefix_acc = evaluation.accuracy(data.y_test)
    ens_profile = profiles["bdistil"]
    curve = [
        {
            "members": k + 1,
            "accuracy": float(prefix_acc[k]),
            "latency_ms_p50": ens_profile["prefixes"][k]["latency_ms"]["p50"],
            "latency_ms_p99": ens_profile["prefixes"][k]["latency_ms"]["p99"],
        }
        for k in range(runtime.num_members)
    ]
    entropy = log.step(
        "entropy exit on the test split (batch 1, real early exit)",
        lambda: _entropy_run(runtime, x_test_raw, data.y_test, ens_profile),
    )
    first, full = curve[0]["latency_ms_p99"], curve[-1]["latency_ms_p99"]
    budgets = sorted({round(first * 1.5, 4), round((first + full) / 2, 4), round(full * 1.5, 4)})
    budget_rows = log.step(
        "latency-budgeted runs on the test split", lambda: budget_runs(runtime, x_test_raw, data.y_test, budgets)
    )

    cascade = _cascade(cfg, exports, profiles, data, x_val_raw, x_test_raw, log)
    candidates = []
    for name, result in exports.items():
        profile = profiles[name]
        k = len(result.members)
        candidates.append(
            {
                "name": name,
                "members": k,
                "accuracy": result.reports[-1].onnx_accuracy,
                "latency_ms_p50": profile["prefixes"][-1]["latency_ms"]["p50"],
                "latency_ms_p99": profile["prefixes"][-1]["latency_ms"]["p99"],
                "size_bytes": sum(m.bytes for m in result.members),
                "size_bytes_zip": sum(m.bytes_zip for m in result.members),
                "params": sum(m.params for m in result.members),
                "nonzero_params": sum(m.nonzero_params for m in result.members),
                "bundle": str(result.path),
            }
        )

    int8_rows = []
    teacher_row = next(c for c in candidates if c["name"] == "teacher")
    for name, entry in int8.items():
        float_row = next(c for c in candidates if c["name"] == entry["source"])
        result = entry["result"]
        if result is None:
            int8_rows.append({"name": name, "source": entry["source"], "refused": entry["refused"]})
            continue
        p50 = profiles[name]["prefixes"][-1]["latency_ms"]
        q = result.manifest.quantization
        candidates.append(
            {
                "name": name,
                "members": 1,
                "accuracy": result.prefixes[-1].int8_accuracy,
                "latency_ms_p50": p50["p50"],
                "latency_ms_p99": p50["p99"],
                "size_bytes": sum(result.int8_bytes),
                "size_bytes_zip": sum(m.info["bytes_zip"] for m in result.manifest.members),
                "params": float_row["params"],
                "nonzero_params": float_row["nonzero_params"],
                "bundle": str(result.path),
            }
        )
        int8_rows.append(
            {
                "name": name,
                "source": entry["source"],
                "refused": None,
                "settings": q.describe() if q else "",
                "accuracy_float": result.prefixes[-1].float_accuracy,
                "accuracy_int8": result.prefixes[-1].int8_accuracy,
                "agreement": result.prefixes[-1].agreement,
                "max_prob_diff": result.prefixes[-1].max_prob_diff,
                "p50_ms_float": float_row["latency_ms_p50"],
                "p50_ms_int8": p50["p50"],
                "speedup_p50": float_row["latency_ms_p50"] / p50["p50"],
                "speedup_p50_vs_teacher": teacher_row["latency_ms_p50"] / p50["p50"],
                "size_bytes_float": float_row["size_bytes"],
                "size_bytes_int8": sum(result.int8_bytes),
                "seconds": result.seconds,
            }
        )
    candidates.append(cascade["candidate"])
    warnings = ensemble_warnings("B-DISTIL", [p["accuracy"] for p in curve], data.num_classes, len(data.y_test))
    for c in candidates:
        if c["name"] not in ("bdistil", "cascade"):
            warnings += student_warnings(
                f"the {c['name']} candidate",
                c["accuracy"],
                data.num_classes,
                len(data.y_test),
                fix="train it longer or give it more capacity"
                if c["name"] != "teacher"
                else "train the teacher longer or check the data",
            )
    report: dict[str, Any] = {
        "data": {
            "name": data.name,
            "input_shape": list(data.input_shape),
            "classes": data.num_classes,
            "train": len(data.x_train),
            "validation": len(data.x_val),
            "test": len(data.x_test),
        },
        "device": {"fingerprint": fingerprint(), **device_info()},
        "teacher": {**teacher_metrics, "test_accuracy": exports["teacher"].reports[0].onnx_accuracy},
        "candidates": candidates,
        "anytime_curve": curve,
        "calibration": {
            "entropy_threshold": calibration.entropy_threshold,
            "target": calibration.target,
            "validation_accuracy": calibration.accuracy,
            "validation_mean_members": calibration.mean_members,
        },
        "entropy_exit": entropy,
        "budgets": budget_rows,
        "cascade": {k: v for k, v in cascade.items() if k != "candidate"},
        "int8": int8_rows,
        "bundle": str(paths["bdistil"]),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "seconds": log.seconds,
        "warnings": warnings,
    }
    plot_path = cfg.out / "accuracy_vs_latency.png"
    plot_note = _plot(plot_path, candidates, curve, entropy, cascade)
    report["plot"] = None if plot_note else str(plot_path)
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    atomic_write(cfg.out / "report.json", (json.dumps(report, indent=2) + "\n").encode())

    say("")
    say(
        f"Device: {report['device']['cpu_model']} ({report['device']['logical_cores']} logical cores), "
        f"ONNX Runtime {report['device']['onnxruntime']}, 1 intra-op thread"
    )
    say(
        format_table(
            ["candidate", "members", "test acc", "p50 ms", "p99 ms", "size KiB", "zipped KiB", "params (nonzero)"],
            [
                [
                    c["name"],
                    c["members"],
                    _pct(c["accuracy"]),
                    f"{c['latency_ms_p50']:.3f}",
                    f"{c['latency_ms_p99']:.3f}",
                    f"{c['size_bytes'] / 1024:.1f}",
                    f"{c['size_bytes_zip'] / 1024:.1f}",
                    f"{c['params']:,} ({c['nonzero_params']:,})",
                ]
                for c in candidates
            ],
        )
    )
    if int8_rows:
        say("\nINT8 (static QDQ, calibrated on the validation split; test split; batch-1 p50 on this machine):")
        say(
            format_table(
                [
                    "int8 candidate",
                    "from",
                    "acc float",
                    "acc int8",
                    "agreement",
                    "p50 float ms",
                    "p50 int8 ms",
                    "speed-up",
                    "vs teacher",
                    "KiB float -> int8",
                ],
                [
                    [
                        r["name"],
                        r["source"],
                        _pct(r["accuracy_float"]),
                        _pct(r["accuracy_int8"]),
                        _pct(r["agreement"]),
                        f"{r['p50_ms_float']:.3f}",
                        f"{r['p50_ms_int8']:.3f}",
                        f"{r['speedup_p50']:.2f}x",
                        f"{r['speedup_p50_vs_teacher']:.2f}x",
                        f"{r['size_bytes_float'] / 1024:.0f} -> {r['size_bytes_int8'] / 1024:.0f}",
                    ]
                    if r["refused"] is None
                    else [r["name"], r["source"], "refused", "", "", "", "", "", "", ""]
                    for r in int8_rows
                ],
            )
        )
    say("\nAnytime curve of the B-DISTIL ensemble (test split; latency of members 1..t on this machine):")
    say(
        format_table(
            ["members", "test acc", "p50 ms", "p99 ms"],
            [[p["members"], _pct(p["accuracy"]), f"{p['latency_ms_p50']:.3f}", f"{p['latency_ms_p99']:.3f}"] for p in curve],
        )
    )
    say(
        f"\nEntropy exit: threshold {entropy['threshold']:.4f} nats ({calibration.target}): test accuracy "
        f"{_pct(entropy['accuracy'])}, mean members {entropy['mean_members']:.2f}, "
        f"p50 {entropy['latency_ms_p50']:.3f} ms wall per request, {entropy['profiled_ms_p50']:.3f} ms profiled at the exit prefix"
    )
    c_exit = cascade["entropy_exit"]
    say(
        f"\nCascade {' -> '.join(cascade['members'])} (combine=replace; test split): "
        + ", ".join(f"{p['member']} {_pct(p['accuracy'])} at p50 {p['latency_ms_p50']:.3f} ms" for p in cascade["curve"])
        + f"; entropy exit at {c_exit['threshold']:.4f} nats: {_pct(c_exit['accuracy'])}, mean members "
        f"{c_exit['mean_members']:.2f}, p50 {c_exit['latency_ms_p50']:.3f} ms wall per request, "
        f"{c_exit['profiled_ms_p50']:.3f} ms profiled at the exit prefix"
    )
    say("\nLatency budgets (one request per test sample, batch 1, wall time measured around predict):")
    say(
        format_table(
            ["budget ms", "test acc", "mean members", "over budget", "member 1 alone over", "p50 ms", "p99 ms"],
            [
                [
                    f"{r['budget_ms']:.3f}",
                    _pct(r["accuracy"]),
                    f"{r['mean_members']:.2f}",
                    _pct(r["miss_rate"]),
                    _pct(r["forced_miss_rate"]),
                    f"{r['latency_ms_p50']:.3f}",
                    f"{r['latency_ms_p99']:.3f}",
                ]
                for r in budget_rows
            ],
        )
    )
    say(
        "\nNote: the sparse student's zeros shrink its zipped size, not its latency: ONNX Runtime's CPU kernels "
        "gain no speed from zero weights. Low-rank factors and smaller members are what cut latency."
    )
    for line in warnings:
        say(f"warning: {line}")
    say(
        f"\nWrote {cfg.out / 'bundle'} (the anytime bundle), {cfg.out / 'candidates'}/, {cfg.out / 'report.json'}, "
        f"{cfg.out / 'cascade'}, {cfg.out / 'validation.npz'}, {cfg.out / 'test.npz'}"
        + (f" ({plot_note})" if plot_note else f", {plot_path}")
    )
    say(f"Total {report['total_seconds']:.0f} s")
    return report
