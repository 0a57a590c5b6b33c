"""Does an anytime bundle pay for itself? Every candidate, single and anytime, at the same budgets.

For one data set (default cluttered-mnist, the realistic-scale workload):

1. the teacher (``runs/teachers``; trained on first use) and its candidates, students trained on the first
   ``--limit-train`` training rows for ``--epochs`` epochs each:
   * single: the teacher, a low-rank student (ranks searched for ``--lowrank-speedup`` x the teacher's ORT
     speed), a channel-pruned student (Torch-Pruning, ``--keep`` of the channels), and the NO-RESCHED
     students (one per prefix length, each of the cumulative MACs of B-DISTIL's members 1..t);
   * anytime: B-DISTIL (members sized by measured latency, ``sizing="auto"``: each ~1/K of the teacher),
     RESCHED (the same sizes, distilled alone, mean of logits), and cascades (``combine="replace"``) of the
     ``--cascades`` most accurate (on validation) single students under 0.8x the teacher's p50 -> the teacher,
     and all-INT8 cascades (an INT8 student -> the INT8 teacher, for the most accurate INT8 students on the
     validation-accuracy / p99 front);
   * INT8 copies (static QDQ, ``exporters.quantize_bundle``, gated on validation) of every single candidate,
     themselves single candidates (``--no-int8`` leaves them out);
2. every bundle profiled at batch 1 on validation rows (p50/p99 per prefix, stored in the bundle so the
   runtime's budget policy predicts from it) and every anytime bundle's entropy exit calibrated on the
   validation split (accuracy within ``--accuracy-drop`` points of its full answer);
3. six budgets spread evenly from the cheapest first member's profiled p99 to the teacher's profiled p99;
   at each, every anytime bundle runs the test split one request at a time (batch 1, entropy exit off,
   wall-clock budget in ``AnytimeRuntime.predict``), and the best single candidate is the most accurate one
   whose *validation-time* (profiled) p99 fits the budget;
   An anytime bundle is eligible at a budget by the same rule as a single (its first member, which always runs,
   has a validation-time p99 within the budget); ``best_anytime`` is the most accurate eligible one;
4. entropy exit: each anytime bundle with its calibrated threshold and no budget, and the teacher, one
   request at a time, alternating request by request (so a busy machine slows both alike): accuracy and
   mean wall ms of each;
5. the B-DISTIL curve: test accuracy of every prefix t of B-DISTIL, RESCHED and NO-RESCHED, and the
   profiled p50 of B-DISTIL's prefix t.

Accuracy is always on the test split (ONNX Runtime, the exported bundles). Latency: profiled p50/p99 for
candidates and budgets; wall time of the real requests for miss rates and entropy-exit means.

    python benchmarks/anytime_value.py --data cluttered-mnist --json benchmarks/results/anytime_value_cluttered.json

``--init teacher`` builds B-DISTIL's members, and the RESCHED/NO-RESCHED students of their sizes, as
channel-pruned copies of the teacher (:mod:`distill.progressive.inherit`). ``--reuse --workdir W --rebuild
bdistil,resched,no_resched`` trains only those bundles again in ``W`` (replacing their ``reports.json``
entries) and measures them with the bundles already there.

JSON: the schema of issue 13 (``dataset``, ``device``, ``teacher``, ``candidates``, ``budgets``,
``entropy_exit``, ``bdistil_curve``) plus ``details`` (build reports, timings, load average, settings).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout first, whatever is installed

import torch

import edge_runtime
from distill.data import Dataset, load_dataset
from distill.errors import TrainingError
from distill.lowrank.student import LowRankConfig, lowrank_student
from distill.progressive import (
    BaselineConfig,
    ProgressiveConfig,
    PrunedCandidate,
    candidate_from_dict,
    limit_training,
    no_resched_students,
    progressive_ensemble,
    resched_ensemble,
)
from distill.sparse.structured import channel_student
from distill.teachers import load_teacher
from distill.train import predict_logits
from edge_runtime.calibrate import CalibrationTarget, calibrate, save_calibration
from edge_runtime.device import device_info
from exporters import export_ensemble, export_model
from exporters.cascade import compose_cascade
from profiles.budget_runs import budget_runs
from profiles.measure import MeasureConfig, profile_bundle
from profiles.store import store_profile

BUDGETS = 6


@dataclass(frozen=True)
class Schedule:
    """Training budget of the students of one data set."""

    limit_train: int | None
    epochs: int
    lr: float = 3e-3
    batch_size: int = 128


SCHEDULES = {
    "cluttered-mnist": Schedule(limit_train=20000, epochs=1),  # ~30 min on 2 idle cores with the teacher cached
    "mnist": Schedule(limit_train=None, epochs=6),  # 20k x 3 left B-DISTIL 1.1 points under the teacher; this, 0.3
    "digits": Schedule(limit_train=None, epochs=40, batch_size=64),
}


def _log(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def _timed(timings: dict[str, float], name: str, fn: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    out = fn()
    timings[name] = round(time.perf_counter() - started, 1)
    _log(f"{name}: {timings[name]:.0f} s (load average {os.getloadavg()[0]:.1f})")
    return out


BUNDLE_GROUPS = ("teacher", "bdistil", "resched", "no_resched", "lowrank", "channels")  # what --rebuild may name


def build(
    full: Dataset,
    loaded: Any,
    sched: Schedule,
    members: int,
    args: argparse.Namespace,
    work: Path,
    timings: dict[str, float],
    only: frozenset[str] | None = None,
    reports: dict[str, Any] | None = None,
) -> tuple[dict[str, Path], dict[str, list[float]], dict[str, Any]]:
    """Train and export every candidate (or only the groups in ``only``, over ``reports`` of an earlier run);
    returns (bundle paths, test accuracy per prefix, build reports) of what was built; writes reports.json."""
    teacher = loaded.module
    data = limit_training(full, sched.limit_train)
    task = full.task_spec()
    heldout = (full.x_test, full.y_test)
    common = dict(epochs=sched.epochs, lr=sched.lr, batch_size=sched.batch_size, seed=args.seed, progress=False)
    paths: dict[str, Path] = {}
    acc: dict[str, list[float]] = {}
    reports = dict(reports or {})

    def wanted(name: str) -> bool:
        return only is None or name in only

    def keep(name: str, result: Any) -> None:
        paths[name] = result.path
        acc[name] = [g.onnx_accuracy for g in result.reports]

    if wanted("teacher"):
        keep(
            "teacher",
            _timed(
                timings, "export teacher", lambda: export_model(teacher, task, work / "teacher", heldout=heldout, name="teacher")
            ),
        )
    _timed(
        timings,
        "teacher logits (cached on disk)",
        lambda: (predict_logits(teacher, data.x_train), predict_logits(teacher, data.x_val)),
    )

    if wanted("bdistil"):
        bd = _timed(
            timings,
            "bdistil",
            lambda: progressive_ensemble(
                teacher,
                data,
                ProgressiveConfig(
                    members=members,
                    sizing=args.sizing,
                    init=args.init,
                    step=args.step,
                    refine_epochs=args.refine_epochs,
                    refine_loss=args.refine_loss,
                    **common,
                ),
            ),
        )
        reports["bdistil"] = bd.report.to_dict()
        keep(
            "bdistil",
            export_ensemble(
                bd.members, task, work / "bdistil", heldout=heldout, connections=bd.connections, combine="sum", name="bdistil"
            ),
        )
    if wanted("resched") or wanted("no_resched"):  # the baselines take B-DISTIL's sizes, and so its initialisation
        if "bdistil" not in reports:
            raise SystemExit(f"{work / 'reports.json'} has no bdistil report to size the baselines by; rebuild bdistil too")
        built = reports["bdistil"]["members"]
        sizes = [candidate_from_dict(m["candidate"]) for m in built]
        if (args.init == "teacher") != all(isinstance(c, PrunedCandidate) for c in sizes):
            raise SystemExit(f"the bdistil bundle in {work} was not built with --init {args.init}; rebuild bdistil too")
        base = BaselineConfig(**common)
    if wanted("resched"):
        rs = _timed(timings, "resched", lambda: resched_ensemble(teacher, data, sizes, base))
        reports["resched"] = rs.report.to_dict()
        keep("resched", export_ensemble(rs.members, task, work / "resched", heldout=heldout, combine="mean", name="resched"))
    if wanted("no_resched"):
        for stale in work.glob("no_resched_t*"):  # B-DISTIL may have stopped at fewer members this time
            shutil.rmtree(stale)
        cumulative = list(np.cumsum([int(m["macs"]) for m in built]))
        nr, nr_report = _timed(timings, "no_resched", lambda: no_resched_students(teacher, data, cumulative, sizes[0], base))
        reports["no_resched"] = nr_report.to_dict()
        for t, student in enumerate(nr):
            keep(
                f"no_resched_t{t + 1}",
                export_model(student, task, work / f"no_resched_t{t + 1}", heldout=heldout, name=f"no_resched_t{t + 1}"),
            )

    def lowrank() -> Any:
        try:
            return lowrank_student(
                teacher, data, LowRankConfig(speedup=args.lowrank_speedup, epochs=sched.epochs, lr=1e-3, seed=args.seed)
            )
        except TrainingError as exc:  # a busy machine may time no rank fast enough
            _log(f"low-rank speed-up search failed ({exc}); rank 16")
            return lowrank_student(teacher, data, LowRankConfig(rank=16, epochs=sched.epochs, lr=1e-3, seed=args.seed))

    if wanted("lowrank"):
        student, report = _timed(timings, "lowrank", lowrank)
        reports["lowrank"] = report.to_dict()
        keep("lowrank", export_model(student, task, work / "lowrank", heldout=heldout, name="lowrank"))
    if wanted("channels"):
        student, report = _timed(
            timings,
            "channels",
            lambda: channel_student(teacher, data, args.keep, epochs=sched.epochs, limit=len(data.x_train), seed=args.seed),
        )
        reports["channels"] = report.to_dict() if hasattr(report, "to_dict") else repr(report)
        keep("channels", export_model(student, task, work / "channels", heldout=heldout, name="channels"))
    (work / "reports.json").write_text(json.dumps(reports, indent=1, default=str) + "\n")
    return paths, acc, reports


def reuse(full: Dataset, work: Path) -> tuple[dict[str, Path], dict[str, list[float]], dict[str, Any]]:
    """The bundles an earlier run built in ``work`` (cascades are composed again); test accuracy re-measured."""
    paths = {
        d.name: d
        for d in sorted(work.iterdir())
        if (d / "manifest.json").is_file() and not d.name.startswith("cascade_") and not d.name.endswith("_int8")
    }
    missing = {"teacher", "bdistil", "resched"} - set(paths)
    if missing:
        raise SystemExit(f"--reuse: {work} lacks the bundles {sorted(missing)}; run once without --reuse")
    x_test = full.raw(full.x_test)
    acc = {
        k: [float(a) for a in edge_runtime.load(p, warmup=0).evaluate_prefixes(x_test).accuracy(full.y_test)]
        for k, p in paths.items()
    }
    reports_file = work / "reports.json"
    return paths, acc, json.loads(reports_file.read_text()) if reports_file.is_file() else {}


def int8_copies(paths: dict[str, Path], acc: dict[str, list[float]], names: list[str], full: Dataset, work: Path) -> list[str]:
    """Static INT8 (QDQ, uint8 activations, MinMax on 256 validation rows; exporters.quantize_bundle) of each
    named single bundle, gated on the validation split (<= 0.5 point lost); returns the names added."""
    from exporters.errors import ExportError
    from exporters.quantize import quantize_bundle

    x_val = full.raw(full.x_val)
    added = []
    for k in names:
        try:
            result = quantize_bundle(paths[k], work / f"{k}_int8", calibration=x_val[:256], heldout=(x_val, full.y_val))
        except ExportError as exc:  # a refused copy is a result, not a failure of the benchmark
            _log(f"INT8 copy of {k} refused: {exc}")
            continue
        paths[f"{k}_int8"] = result.path
        acc[f"{k}_int8"] = [
            float(a)
            for a in edge_runtime.load(result.path, warmup=0).evaluate_prefixes(full.raw(full.x_test)).accuracy(full.y_test)
        ]
        added.append(f"{k}_int8")
    return added


def profile_all(paths: dict[str, Path], x_val: np.ndarray, seconds: float) -> dict[str, dict[str, Any]]:
    """Batch-1 profile of every bundle on validation rows, stored in the bundle (the budget policy reads it)."""
    config = MeasureConfig(min_queries=300, min_seconds=seconds, warmup_queries=50, batch=1, memory_probe=False)
    out = {}
    for name, path in paths.items():
        out[name] = profile_bundle(path, config, data=x_val, data_label="validation split")
        store_profile(path, out[name])
    return out


def _p(profile: dict[str, Any], k: int, q: str) -> float:
    return float(profile["prefixes"][k]["latency_ms"][q])


def _pareto_front(names: list[str], cost: Callable[[str], float], accuracy: Callable[[str], float]) -> list[str]:
    """The names no other beats on both counts (cheaper and at least as accurate), cheapest first."""
    front: list[str] = []
    for k in sorted(names, key=lambda k: (cost(k), -accuracy(k))):
        if not front or accuracy(k) > accuracy(front[-1]):
            front.append(k)
    return front


def entropy_vs_teacher(runtime: Any, teacher: Any, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Calibrated entropy exit vs the teacher, request by request alternately; wall ms of each."""
    ours, theirs, correct, teacher_correct, members = [], [], 0, 0, []
    for i in range(len(x)):
        row = x[i : i + 1]
        first, second = ((runtime, ours), (teacher, theirs)) if i % 2 == 0 else ((teacher, theirs), (runtime, ours))
        for rt, sink in (first, second):
            started = time.perf_counter()
            answer = rt.predict(row, budget_ms="off", entropy_threshold="calibrated" if rt is runtime else "off")[0]
            sink.append((time.perf_counter() - started) * 1e3)
            if rt is runtime:
                correct += int(answer.label == y[i])
                members.append(answer.members_used)
            else:
                teacher_correct += int(answer.label == y[i])
    return {
        "threshold": float(runtime.manifest.calibration.entropy_threshold),
        "accuracy": correct / len(x),
        "mean_ms": float(np.mean(ours)),
        "teacher_mean_ms": float(np.mean(theirs)),
        "teacher_accuracy": teacher_correct / len(x),
        "mean_members": float(np.mean(members)),
        "p50_ms": float(np.median(ours)),
        "teacher_p50_ms": float(np.median(theirs)),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    timings: dict[str, float] = {}
    full = load_dataset(args.data, seed=args.seed)
    loaded = _timed(
        timings, "teacher (cached or trained)", lambda: load_teacher("auto", full, runs_dir=args.runs, progress=False)
    )
    sched = SCHEDULES.get(full.name, SCHEDULES["mnist"])
    if args.limit_train is not None or args.epochs is not None:
        sched = Schedule(
            limit_train=args.limit_train or sched.limit_train,
            epochs=args.epochs or sched.epochs,
            lr=sched.lr,
            batch_size=sched.batch_size,
        )
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="anytime_value_"))
    if args.rebuild:  # only these groups are trained again, in place; everything is then measured as reused
        earlier = work / "reports.json"
        build(full, loaded, sched, args.members, args, work, timings, args.rebuild, json.loads(earlier.read_text()))
        paths, acc, reports = _timed(timings, "reuse bundles", lambda: reuse(full, work))
    elif args.reuse:
        paths, acc, reports = _timed(timings, "reuse bundles", lambda: reuse(full, work))
    else:
        paths, acc, reports = build(full, loaded, sched, args.members, args, work, timings)
    x_val, x_test = full.raw(full.x_val), full.raw(full.x_test)
    y_val, y_test = full.y_val, full.y_test
    n = min(args.requests or len(x_test), len(x_test))
    x_run, y_run = x_test[:n], y_test[:n]

    singles = [k for k in paths if k != "teacher" and k not in ("bdistil", "resched")]
    if args.int8:
        singles += _timed(timings, "int8 copies", lambda: int8_copies(paths, acc, ["teacher", *singles], full, work))
    profiles = _timed(
        timings, "profile singles", lambda: profile_all({k: paths[k] for k in ["teacher", *singles]}, x_val, args.profile_seconds)
    )
    cheap = [k for k in singles if _p(profiles[k], 0, "p50") < 0.8 * _p(profiles["teacher"], 0, "p50")]
    val_acc = {k: float(edge_runtime.load(paths[k], warmup=0).evaluate_prefixes(x_val).accuracy(y_val)[0]) for k in cheap}
    cheap = sorted(cheap, key=lambda k: -val_acc[k])[: args.cascades]  # chosen on validation, not test
    for k in cheap:  # cascades from the most accurate cheap students, each then the teacher
        paths[f"cascade_{k}"] = compose_cascade([paths[k], paths["teacher"]], work / f"cascade_{k}", name=f"cascade_{k}").path
        acc[f"cascade_{k}"] = [acc[k][0], acc["teacher"][0]]
    anytime = ["bdistil", "resched", *[f"cascade_{k}" for k in cheap]]
    int8_students = sorted(
        (
            k
            for k in val_acc
            if k.endswith("_int8")
            and k != "teacher_int8"
            and "teacher_int8" in profiles
            and _p(profiles[k], 0, "p50") < 0.8 * _p(profiles["teacher_int8"], 0, "p50")
        ),
        key=lambda k: -val_acc[k],
    )
    # All-INT8 cascades, each an INT8 student then the INT8 teacher, from the students on the validation
    # accuracy / p99 front (none both slower and less accurate than another), its most accurate --cascades:
    # the cheapest of them is what can compete at the tightest budgets.
    front = _pareto_front(int8_students, lambda k: _p(profiles[k], 0, "p99"), val_acc.__getitem__)
    for k in front[-args.cascades :] if "teacher_int8" in paths else []:
        name = f"cascade_{k}_to_teacher_int8"
        paths[name] = compose_cascade([paths[k], paths["teacher_int8"]], work / name, name=name).path
        acc[name] = [acc[k][0], acc["teacher_int8"][0]]
        anytime.append(name)
    profiles.update(
        _timed(timings, "profile anytime", lambda: profile_all({k: paths[k] for k in anytime}, x_val, args.profile_seconds))
    )

    def calibrate_all() -> dict[str, Any]:
        out = {}
        for k in anytime:
            cal = calibrate(
                edge_runtime.load(paths[k], warmup=0), x_val, y_val, CalibrationTarget(accuracy_drop=args.accuracy_drop)
            )
            save_calibration(paths[k], cal)
            out[k] = {"threshold": cal.entropy_threshold, "validation_accuracy": cal.accuracy, "mean_members": cal.mean_members}
        return out

    calibration = _timed(timings, "calibrate", calibrate_all)
    teacher = profiles["teacher"]
    candidates = [
        {
            "name": k,
            "kind": "single",
            "accuracy": acc[k][0],
            "p50_ms": _p(profiles[k], 0, "p50"),
            "p99_ms": _p(profiles[k], 0, "p99"),
        }
        for k in ["teacher", *singles]
    ]
    candidates += [
        {
            "name": k,
            "kind": "anytime",
            "accuracy": acc[k][-1],
            "p50_ms": _p(profiles[k], -1, "p50"),
            "p99_ms": _p(profiles[k], -1, "p99"),
            "members": len(acc[k]),
            "prefix_accuracy": acc[k],
            "prefix_p50_ms": [p["latency_ms"]["p50"] for p in profiles[k]["prefixes"]],
        }
        for k in anytime
    ]
    low = min(_p(profiles[k], 0, "p99") for k in anytime)
    high = _p(teacher, 0, "p99")
    budgets_ms = [float(b) for b in np.linspace(low, high, BUDGETS)]
    runtimes = {k: edge_runtime.load(paths[k], entropy_threshold="off") for k in anytime}
    budget_rows = []

    # singles scored on the very rows the budget runs use (a --requests subset can be easier or harder than the split)
    run_acc = {
        c["name"]: c["accuracy"]
        if n == len(x_test)
        else float(edge_runtime.load(paths[c["name"]], warmup=0).evaluate_prefixes(x_run).accuracy(y_run)[0])
        for c in candidates
        if c["kind"] == "single"
    }

    def all_budgets() -> None:
        for budget in budgets_ms:
            fits = [c for c in candidates if c["kind"] == "single" and c["p99_ms"] <= budget]
            best = max(fits, key=lambda c: (run_acc[c["name"]], -c["p50_ms"])) if fits else None
            row = {
                "budget_ms": round(budget, 4),
                "best_single": {"name": best["name"], "accuracy": run_acc[best["name"]]}
                if best
                else {"name": None, "accuracy": None},
                "anytime": [],
            }
            for k in anytime:
                # eligible as a single is: its first member's validation-time p99 fits (member 1 always runs)
                eligible = _p(profiles[k], 0, "p99") <= budget
                row["anytime"].append({"name": k, "eligible": eligible, **budget_runs(runtimes[k], x_run, y_run, [budget])[0]})
            top = max((r for r in row["anytime"] if r["eligible"]), key=lambda r: r["accuracy"], default=None)
            row["best_anytime"] = {"name": top["name"], "accuracy": top["accuracy"]} if top else {"name": None, "accuracy": None}
            _log(f"budget {budget:.3f} ms: best single {row['best_single']}, best anytime {row['best_anytime']}")
            budget_rows.append(row)

    _timed(timings, "budget runs", all_budgets)
    teacher_rt = edge_runtime.load(paths["teacher"], entropy_threshold="off")
    entropy = []

    def all_entropy() -> None:
        for k in anytime:
            entropy.append({"name": k, **entropy_vs_teacher(edge_runtime.load(paths[k]), teacher_rt, x_run, y_run)})
            _log(f"entropy exit {k}: {entropy[-1]}")

    _timed(timings, "entropy exit runs", all_entropy)
    curve = [
        {
            "t": t + 1,
            "bdistil": acc["bdistil"][t],
            "resched": acc["resched"][t],
            "no_resched": acc[f"no_resched_t{t + 1}"][0] if f"no_resched_t{t + 1}" in acc else None,
            "p50_ms": _p(profiles["bdistil"], t, "p50"),
            "resched_p50_ms": _p(profiles["resched"], t, "p50"),
            "no_resched_p50_ms": _p(profiles[f"no_resched_t{t + 1}"], 0, "p50") if f"no_resched_t{t + 1}" in profiles else None,
        }
        for t in range(len(acc["bdistil"]))
    ]
    return {
        "dataset": full.name,
        "device": {**device_info(), "load_average_end": os.getloadavg()},
        "teacher": {"accuracy": acc["teacher"][0], "p50_ms": _p(teacher, 0, "p50"), "p99_ms": _p(teacher, 0, "p99")},
        "candidates": candidates,
        "budgets": budget_rows,
        "entropy_exit": entropy,
        "bdistil_curve": curve,
        "details": {
            "schedule": sched.__dict__,
            "train_rows": min(len(full.x_train), sched.limit_train or len(full.x_train)),
            "test_rows_run": n,
            "reused_bundles": args.reuse,
            "rebuilt": sorted(args.rebuild or ()),
            "members": args.members,
            "sizing": args.sizing,
            "init": args.init,
            "step": args.step,
            "refine": [args.refine_epochs, args.refine_loss],
            "calibration": calibration,
            "accuracy_drop": args.accuracy_drop,
            "teacher_metrics": loaded.metrics,
            "build_seconds": timings,
            "total_seconds": round(time.perf_counter() - started, 1),
            "cpu_seconds": round(sum(psutil.Process().cpu_times()[:2]), 1),
            "reports": reports,
            "bundles": {k: str(v) for k, v in paths.items()},
        },
    }


def print_table(result: dict[str, Any]) -> None:
    t = result["teacher"]
    print(f"\n== {result['dataset']}: teacher {100 * t['accuracy']:.2f}% p50 {t['p50_ms']:.3f} ms p99 {t['p99_ms']:.3f} ms")
    print("candidates (test accuracy, profiled batch-1 latency):")
    for c in result["candidates"]:
        print(f"  {c['kind']:>7} {c['name']:<28} {100 * c['accuracy']:6.2f}%  p50 {c['p50_ms']:.3f}  p99 {c['p99_ms']:.3f} ms")
    print("budgets (test split, one request at a time; (x): member 1's validation p99 exceeds the budget, not eligible):")
    for row in result["budgets"]:
        best = row["best_single"]
        single = f"{best['name']} {100 * best['accuracy']:.2f}%" if best["name"] else "none fits"
        cells = ", ".join(
            f"{a['name']}{'' if a.get('eligible', True) else '(x)'} {100 * a['accuracy']:.2f}% "
            f"({a['mean_members']:.2f} m, miss {100 * a['miss_rate']:.2f}%, forced {100 * a['forced_miss_rate']:.1f}%)"
            for a in row["anytime"]
        )
        print(f"  {row['budget_ms']:.3f} ms: single {single} | {cells}")
    print("entropy exit vs teacher (alternating requests, wall ms):")
    for e in result["entropy_exit"]:
        print(
            f"  {e['name']:<28} {100 * e['accuracy']:.2f}% mean {e['mean_ms']:.3f} ms vs teacher {e['teacher_mean_ms']:.3f} ms "
            f"({e['mean_ms'] / e['teacher_mean_ms']:.0%}), {e['mean_members']:.2f} members, threshold {e['threshold']:.3g}"
        )
    print("B-DISTIL curve (test accuracy; profiled p50 ms):")
    for c in result["bdistil_curve"]:
        nr = f"{100 * c['no_resched']:.2f}%" if c["no_resched"] is not None else "-"
        print(
            f"  t={c['t']}: bdistil {100 * c['bdistil']:.2f}% ({c['p50_ms']:.3f} ms)  resched {100 * c['resched']:.2f}%  no_resched {nr}"
        )
    print(f"build seconds {result['details']['build_seconds']}; total {result['details']['total_seconds']} s")


def _groups(text: str) -> frozenset[str]:
    names = frozenset(n.strip() for n in text.split(",") if n.strip())
    unknown = sorted(names - set(BUNDLE_GROUPS))
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"unknown bundle groups {unknown}; name some of {', '.join(BUNDLE_GROUPS)}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="cluttered-mnist")
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--sizing", choices=("auto", "latency", "macs"), default="auto", help="B-DISTIL member sizing")
    parser.add_argument(
        "--init",
        choices=("scratch", "teacher"),
        default="scratch",
        help="B-DISTIL members (and the RESCHED/NO-RESCHED students of their sizes) from scratch or as "
        "channel-pruned copies of the teacher",
    )
    parser.add_argument(
        "--step", choices=("potential", "kl"), default="potential", help="B-DISTIL step size rule (ProgressiveConfig.step)"
    )
    parser.add_argument("--refine-epochs", type=int, default=0, help="B-DISTIL refinement epochs per member (default 0)")
    parser.add_argument("--refine-loss", choices=("logits", "kd"), default="logits", help="B-DISTIL refinement loss")
    parser.add_argument("--limit-train", type=int, help="training rows the students see (default per data set)")
    parser.add_argument("--epochs", type=int, help="epochs per student / member attempt (default per data set)")
    parser.add_argument("--lowrank-speedup", type=float, default=2.0)
    parser.add_argument("--keep", type=float, default=0.5, help="channel-pruned student: share of channels kept")
    parser.add_argument(
        "--no-int8",
        dest="int8",
        action="store_false",
        help="leave out the INT8 copies of the single candidates (exporters.quantize_bundle)",
    )
    parser.add_argument("--cascades", type=int, default=3, help="cascades built: the most accurate cheap students -> teacher")
    parser.add_argument("--accuracy-drop", type=float, default=0.2, help="entropy calibration target (points)")
    parser.add_argument("--requests", type=int, default=0, help="test rows run per budget (0 = the whole test split)")
    parser.add_argument("--profile-seconds", type=float, default=2.0)
    parser.add_argument("--runs", default="runs", help="teacher and logit caches")
    parser.add_argument("--workdir", help="keep the bundles here (default: a temporary directory)")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="measure the bundles an earlier run left in --workdir instead of training (e.g. on an idle machine)",
    )
    parser.add_argument(
        "--rebuild",
        type=_groups,
        help=f"with --reuse --workdir W: train again only these bundles in W (comma list of {', '.join(BUNDLE_GROUPS)}; "
        "their reports.json entries too), reuse the rest",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for training (default 1: on this shared 2-core machine a ResNet-16 trained at "
        "287 images/s with 1 thread and 52 with 2, the two threads waiting on each other under load)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.rebuild and not (args.reuse and args.workdir and (Path(args.workdir) / "reports.json").is_file()):
        parser.error("--rebuild needs --reuse and a --workdir holding an earlier run (its reports.json)")
    torch.set_num_threads(args.threads)
    print(f"device: {device_info()['cpu_model']}; load average at start {os.getloadavg()}")
    result = run(args)
    print_table(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
