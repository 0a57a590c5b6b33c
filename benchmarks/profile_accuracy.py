"""How well the profiler predicts what the runtime will see, quiet and with a competing busy process.

Four measurements on one bundle (a temporary copy: the original is never written to):

1. Repeatability: in each of ``--rounds`` rounds the bundle is profiled twice (A, B) on the same inputs;
   per member, ``p50_B / p50_A - 1``, with A the earlier profile in even rounds and the later one in odd
   rounds (counterbalanced, so a steady drift of the machine's load cancels). Goal: the per-member
   median over rounds within 5%.
2. Prediction error: between A and B in each round the runtime serves single-sample requests with every
   member run (no early exit) for as long as a profile takes, and its own per-member observations (what
   ``AnytimeRuntime.latency_observations`` reports) are compared with profile A, measured before:
   ``p50_A / p50_observed - 1`` (and the same at p99). Goal: per-member median |error| <= 10% for >= 90%
   of members (nn-Meter's mark is 99% of models within 10% on phone CPUs).
3. Contention: a busy process (a Python spin loop that stops by itself and is always killed) is pinned
   to one core and this process to the same core; the quiet profiles are compared with what the
   runtime now observes, at p50 and p99.
4. Deadline: requests with a latency budget (default: where the first half of the members just fits by
   the profile: p50 of members 1..h-1 plus the p99 the runtime predicts for member h),
   quiet and under contention, with the runtime's estimator as shipped (the larger of the profile's
   and the observed p99) and restricted to the profile alone; miss rate = share of requests whose
   elapsed time exceeds the budget, and mean members evaluated.

Rounds interleave the measurements so slow drifts of a shared machine hit both sides alike; the table
shows medians and spreads (p10-p90 over members x rounds), the device and the machine's load.

    python benchmarks/profile_accuracy.py [--bundle runs/demo/bundle --data runs/demo/test.npz] [--json PATH]
    python benchmarks/profile_accuracy.py --dev       # a generated 4-member bundle (needs onnx)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from edge_runtime.bundle import load_bundle
from edge_runtime.device import device_info, fingerprint
from edge_runtime.ensemble import AnytimeRuntime
from profiles.device import LoadMeter
from profiles.inputs import load_npz
from profiles.measure import MeasureConfig, profile_bundle
from profiles.report import format_table
from profiles.store import store_profile

ROOT = Path(__file__).resolve().parents[1]
BUSY_LOOP = "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end:\n    pass\n"


def _dev_bundle(tmp: Path, hidden: int) -> tuple[Path, np.ndarray]:
    sys.path.insert(0, str(ROOT / "tests"))
    from onnx_members import make_bundle  # needs onnx: a development helper, not the runtime

    bundle = make_bundle(tmp / "dev", num_members=4, input_shape=(1, 16, 16), num_classes=10, hidden=hidden)
    x = np.random.default_rng(0).normal(size=(512, 1, 16, 16)).astype(np.float32)
    return bundle, x


def _spread(values: np.ndarray) -> dict[str, float]:
    v = np.asarray(values, dtype=float).ravel()
    return {
        "median": float(np.median(v)),
        "p10": float(np.percentile(v, 10)),
        "p90": float(np.percentile(v, 90)),
        "max_abs": float(np.max(np.abs(v))),
    }


def _serve(
    runtime: Any, x: np.ndarray, queries: int, seconds: float, budget_ms: float | None = None
) -> tuple[np.ndarray, list[Any]]:
    """Single-sample requests for at least ``queries`` and ``seconds``.

    Returns the runtime's own per-member observations, one row per request (ms; the value
    ``latency_observations`` reports, read after each request because that window keeps only the
    last 512), and the predictions.
    """
    observed = runtime.latency_estimator.observed
    rows, answers = [], []
    start = time.perf_counter()
    while len(answers) < queries or time.perf_counter() - start < seconds:
        answer = runtime.predict(x[len(answers) % len(x)], budget_ms=budget_ms, entropy_threshold="off")[0]
        answers.append(answer)
        if answer.members_used == len(observed):
            rows.append([window[-1][1] for window in observed])
    return np.array(rows), answers


def _member_latency(profile: dict[str, Any], quantile: str) -> np.ndarray:
    return np.array([m["latency_ms"][quantile] for m in profile["members"]])


def _deadline(runtime: Any, x: np.ndarray, queries: int, seconds: float, budget_ms: float) -> dict[str, dict[str, Any]]:
    """Miss rate and members used, with the shipped estimator and with the profile alone."""
    estimator = runtime.latency_estimator
    shipped = estimator.min_observations
    out = {}
    for mode, min_obs in (("profile+observed", shipped), ("profile only", 10**9)):
        estimator.min_observations = min_obs  # 10**9 observations never accumulate: the profile alone decides
        estimator.refresh()
        _, answers = _serve(runtime, x, queries, seconds, budget_ms)
        elapsed = np.array([a.elapsed_ms for a in answers])
        out[mode] = {
            "requests": len(answers),
            "miss_rate": float(np.mean(elapsed > budget_ms)),
            "mean_members": float(np.mean([a.members_used for a in answers])),
            "elapsed_p50_ms": float(np.median(elapsed)),
            "elapsed_p99_ms": float(np.percentile(elapsed, 99)),
            "estimates_ms": [round(v, 5) for v in estimator.refresh()],
        }
    estimator.min_observations = shipped
    estimator.refresh()
    return out


def _errors(predicted: list[np.ndarray], observed: list[np.ndarray]) -> dict[str, Any]:
    """pred/obs - 1 per (round, member), its spread, and the per-member median over rounds."""
    err = np.array(predicted) / np.array(observed) - 1
    per_member = np.median(err, axis=0)
    return {
        "per_round_member": err.round(4).tolist(),
        **_spread(err),
        "per_member_median": per_member.round(4).tolist(),
        "share_pairs_within_10pct": float(np.mean(np.abs(err) <= 0.10)),
        "share_members_within_10pct": float(np.mean(np.abs(per_member) <= 0.10)),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.rounds < 1 or args.min_queries < 1:
        raise SystemExit("profile_accuracy: --rounds and --min-queries must be >= 1")
    tmp = Path(tempfile.mkdtemp(prefix="profile_accuracy."))
    busy: subprocess.Popen[bytes] | None = None
    me = psutil.Process()
    affinity = me.cpu_affinity()
    q, secs = args.min_queries, args.min_seconds
    try:
        if args.dev:
            source, x = _dev_bundle(tmp, args.dev_hidden)
            data_label = "random normal (dev bundle)"
        else:
            if not args.bundle.exists() or not args.data.exists():
                raise FileNotFoundError(
                    f"{args.bundle} or {args.data} is missing: run `make demo` first, or pass --bundle/--data, or --dev"
                )
            source, x = args.bundle, load_npz(args.data)["x"]
            data_label = str(args.data)
        bundle = tmp / "bundle"
        shutil.copytree(source, bundle) if Path(source).is_dir() else shutil.copy(source, bundle)
        config = MeasureConfig(min_queries=q, min_seconds=secs, batch=1, memory_probe=False)  # latency only
        names = [m.name for m in load_bundle(bundle).manifest.members]
        meter = LoadMeter().start()

        # Quiet: rounds of profile A, runtime serving (every member run), profile B; each as long as the other.
        first = profile_bundle(bundle, config, data=x, data_label=data_label)
        store_profile(bundle, first)  # the runtime's budget policy reads it
        runtime = AnytimeRuntime(bundle, entropy_threshold="off", warmup=64)
        a50, a99, o50, o99, repeat_rows, loads = [], [], [], [], [], []
        for r in range(args.rounds):
            before = profile_bundle(bundle, config, data=x, data_label=data_label)
            observed, _ = _serve(runtime, x, q, secs)
            after = profile_bundle(bundle, config, data=x, data_label=data_label)
            # The prediction is the profile measured before serving. Repeatability compares the two
            # profiles counterbalanced (A first in even rounds, B first in odd ones), so a steady rise
            # or fall of the machine's load cancels in the median instead of reading as irreproducibility.
            a, b = (before, after) if r % 2 == 0 else (after, before)
            a50.append(_member_latency(before, "p50"))
            a99.append(_member_latency(before, "p99"))
            repeat_rows.append(_member_latency(b, "p50") / _member_latency(a, "p50") - 1)
            o50.append(np.median(observed, axis=0))
            o99.append(np.percentile(observed, 99, axis=0))
            loads.append(after["conditions"]["load_average"][:1])
        repeat = np.array(repeat_rows)
        quiet_conditions = meter.stop()
        # Default budget: where, by the profile and the runtime's p99 prediction, the first half just fits.
        half = (len(names) + 1) // 2
        done = first["prefixes"][half - 2]["latency_ms"]["p50"] if half > 1 else 0.0
        budget = args.budget_ms or float(done + first["members"][half - 1]["latency_ms"]["p99"])
        quiet_deadline = _deadline(runtime, x, q, secs, budget)

        # Contention: a busy process and this one share one core.
        core = affinity[-1]
        # The loop ends by itself even if this process dies before its finally: bounded, never orphaned for long.
        bound = args.contention_seconds or 30 + 4 * args.rounds * max(secs, 0.05)
        busy = subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(bound)])
        psutil.Process(busy.pid).cpu_affinity([core])
        me.cpu_affinity([core])
        meter = LoadMeter().start()
        time.sleep(0.2)  # let the scheduler settle the two on the core
        c50, c99 = [], []
        for _ in range(args.rounds):
            observed, _ = _serve(runtime, x, q, secs)
            c50.append(np.median(observed, axis=0))
            c99.append(np.percentile(observed, 99, axis=0))
        busy_deadline = _deadline(runtime, x, q, secs, budget)
        busy_conditions = meter.stop()
        still_busy = busy.poll() is None
    finally:
        me.cpu_affinity(affinity)
        if busy is not None:
            busy.kill()
            busy.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    if not still_busy:
        print("warning: the busy process ended before the contention phase did; raise --contention-seconds", file=sys.stderr)

    prediction = _errors(a50, o50)
    return {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "device": {**device_info(), "fingerprint": fingerprint()},
        "bundle": f"dev (generated, 16x16 inputs, hidden {args.dev_hidden})" if args.dev else str(args.bundle),
        "members": names,
        "settings": {
            "rounds": args.rounds,
            "min_queries": q,
            "min_seconds": secs,
            "budget_ms": budget,
            "budget_rule": "given"
            if args.budget_ms
            else f"p50 of members 1..{half - 1} + p99 of member {half} (first profile): the first half fits",
            "busy_core": core,
            "runtime_latency_quantile": "p99",
            "session": first["settings"],
        },
        "conditions": {"quiet": quiet_conditions, "contention": busy_conditions, "load_average_1min_per_round": loads},
        "profile_p50_ms": _member_latency(first, "p50").tolist(),
        "repeatability": {
            "per_round_member": repeat.round(4).tolist(),
            **_spread(repeat),
            "per_member_median": np.median(repeat, axis=0).round(4).tolist(),
            "share_pairs_within_5pct": float(np.mean(np.abs(repeat) <= 0.05)),
        },
        "prediction_error_p50": prediction,
        "prediction_error_p99": _errors(a99, o99),
        "contention_error_p50": _errors(a50, c50),
        "contention_error_p99": _errors(a99, c99),
        "deadline": {"quiet": quiet_deadline, "contention": busy_deadline},
        "goals": {
            "repeatability_p50_within_5pct": bool(np.all(np.abs(np.median(repeat, axis=0)) <= 0.05)),
            "prediction_within_10pct_for_90pct_of_members": prediction["share_members_within_10pct"] >= 0.90,
        },
    }


def _print(result: dict[str, Any]) -> None:
    d = result["device"]
    st = result["settings"]
    print(
        f"device: {d['cpu_model']}, {d['logical_cores']} logical cores, {d['os']}, onnxruntime {d['onnxruntime']} "
        f"(fingerprint {d['fingerprint']}); bundle {result['bundle']} ({len(result['members'])} members)"
    )
    q, c = result["conditions"]["quiet"], result["conditions"]["contention"]
    print(
        f"conditions: quiet phase machine CPU {q['cpu_percent_system']}%, load average {q['load_average']}; "
        f"contention phase: a busy loop and this process share core {st['busy_core']} (machine CPU {c['cpu_percent_system']}%)"
    )
    print(
        f"profile p50 per member (ms): {[round(v, 5) for v in result['profile_p50_ms']]}; {st['rounds']} rounds, "
        f"each profile/serving phase >= {st['min_queries']} queries and {st['min_seconds']} s; intra-op threads "
        f"{st['session']['intra_op_threads']}, spinning {st['session']['allow_spinning']}"
    )
    rows = []
    r = result["repeatability"]
    rows.append(
        [
            "repeatability p50 (B/A-1)",
            f"{r['median']:+.1%}",
            f"{r['p10']:+.1%}",
            f"{r['p90']:+.1%}",
            f"{r['max_abs']:.1%}",
            f"{r['share_pairs_within_5pct']:.0%}",
            " ".join(f"{v:+.1%}" for v in r["per_member_median"]),
            "|.|<=5%",
        ]
    )
    for key, label, goal in (
        ("prediction_error_p50", "prediction p50, quiet", "|.|<=10%, 90%"),
        ("prediction_error_p99", "prediction p99, quiet", "-"),
        ("contention_error_p50", "prediction p50, busy core", "-"),
        ("contention_error_p99", "prediction p99, busy core", "-"),
    ):
        r = result[key]
        rows.append(
            [
                f"{label} (pred/obs-1)",
                f"{r['median']:+.1%}",
                f"{r['p10']:+.1%}",
                f"{r['p90']:+.1%}",
                f"{r['max_abs']:.1%}",
                f"{r['share_pairs_within_10pct']:.0%}",
                " ".join(f"{v:+.1%}" for v in r["per_member_median"]),
                goal,
            ]
        )
    print(
        format_table(
            ["measure (rounds x members)", "median", "p10", "p90", "max |.|", "within", "per member (median)", "goal"], rows
        )
    )
    print(
        f"\ndeadline: budget {st['budget_ms']:.5g} ms per request ({st['budget_rule']}); the runtime predicts each next member at p99"
    )
    rows = []
    for phase in ("quiet", "contention"):
        for mode, r in result["deadline"][phase].items():
            rows.append(
                [phase, mode, r["requests"], f"{r['miss_rate']:.2%}", r["mean_members"], r["elapsed_p50_ms"], r["elapsed_p99_ms"]]
            )
    print(format_table(["phase", "estimator", "requests", "miss rate", "members", "elapsed p50 ms", "elapsed p99 ms"], rows))
    g = result["goals"]
    print(
        f"\ngoals: repeatability (per-member median |B/A-1| <= 5%) {'met' if g['repeatability_p50_within_5pct'] else 'MISSED'}; "
        f"prediction (per-member median |error| <= 10% for >= 90% of members) "
        f"{'met' if g['prediction_within_10pct_for_90pct_of_members'] else 'MISSED'}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "runs/demo/bundle")
    parser.add_argument("--data", type=Path, default=ROOT / "runs/demo/test.npz", help=".npz with inputs 'x'")
    parser.add_argument("--dev", action="store_true", help="use a generated 4-member bundle instead (needs onnx)")
    parser.add_argument("--dev-hidden", type=int, default=512, help="hidden width of the --dev members")
    parser.add_argument("--rounds", type=int, default=8, help="interleaved profile/serve/profile rounds (even: balanced)")
    parser.add_argument("--min-queries", type=int, default=1024, help="queries per profile and per serving phase")
    parser.add_argument("--min-seconds", type=float, default=0.5, help="seconds per profile and per serving phase")
    parser.add_argument("--budget-ms", type=float, help="default: the first half of the members just fits (see above)")
    parser.add_argument(
        "--contention-seconds", type=float, help="the busy process stops by itself after this (default: phase length + 30 s)"
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    try:
        result = run(args)
    except FileNotFoundError as exc:
        print(f"profile_accuracy: {exc}", file=sys.stderr)
        return 2
    _print(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
