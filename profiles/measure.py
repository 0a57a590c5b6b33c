"""Measure bundles and ONNX models on this device: latency percentiles, start-up costs, memory.

Method (after onnxruntime_perf_test and MLPerf's single-stream scenario):

1. Load: each member's InferenceSession is created and timed (``session_create_ms``), with RSS sampled
   before and after each, so ``rss_load_delta_mb`` is what that member adds to a process.
2. First inference: one pass over the members right after loading, each call timed
   (``first_inference_ms``: lazy allocations and kernel selection make it slower than the rest).
3. Warm-up passes, untimed.
4. Timed single-stream passes, at batch 1 and at a chosen batch: the next query starts when the previous
   one has completed, until both ``min_queries`` and ``min_seconds`` are reached. A pass evaluates the
   members in manifest order exactly as the runtime does, and each member is timed on its own: from the
   moment member k-1's outputs are back to the moment member k's are (its feed plus its run). So member
   k is timed with the real inputs produced by the members before it (``prev_logits`` and any
   connections) right after they ran: its latency is its cost *given its predecessors*, which is what
   the runtime's latency-budget policy must predict. The cumulative time of members 1..k in the same
   pass gives each prefix's latency distribution (percentiles of the sum, not sums of percentiles).

   For a bundle at batch 1 the passes *are* runtime requests: an
   :class:`~edge_runtime.ensemble.AnytimeRuntime` built on the measured sessions serves every query with
   all members run, and the per-member latencies it records for its own budget policy are read back
   after each request. The profile therefore holds exactly the quantity the runtime will observe,
   including the request handling around member 1, rather than a re-creation of it. At a larger batch
   (the runtime records per-member time only for single samples) and for plain ONNX files, the passes
   call the members the way the runtime does (``_Chain``).

RSS is sampled every few passes, outside the timed intervals.
Inputs cycle through a pool of distinct batches (random normal, or rows of ``--data``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from edge_runtime.bundle import REQUIRED_OUTPUTS, Bundle, Manifest, connection_inputs, load_bundle
# The runtime itself, and its own call path: the profile must time what the runtime will pay per member.
from edge_runtime.ensemble import AnytimeRuntime, _bound_run
from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.session import SessionConfig, create_session
from profiles.device import LoadMeter, describe_device, describe_settings
from profiles.errors import MeasurementError
from profiles.inputs import graph_input_specs, random_feed, task_batches
from profiles.memory import PeakTracker, rss_mb

__all__ = [
    "PROFILE_VERSION",
    "QUANTILES",
    "MeasureConfig",
    "latency_stats",
    "profile_bundle",
    "profile_onnx",
]

PROFILE_VERSION = 1
# The quantiles every latency record holds (the runtime's budget policy reads one of them).
QUANTILES = ("min", "p50", "p90", "p95", "p99", "max")
_SAMPLE_EVERY = 64  # passes between RSS samples: often enough for a curve, rare enough to cost nothing


@dataclass(frozen=True)
class MeasureConfig:
    """How long and how to measure."""

    min_queries: int = 1024  # timed single-stream passes per batch size at least (MLPerf's classic minimum)
    min_seconds: float = 1.0  # ... and at least this long per batch size
    warmup_queries: int = 64  # untimed passes first
    batch: int = 8  # the batch size timed beside batch 1 (1 = batch 1 only)
    pool: int = 64  # distinct input batches cycled through
    seed: int = 0  # for random inputs and row order
    session: SessionConfig = field(default_factory=SessionConfig)  # threads, spinning, optimisation

    def __post_init__(self) -> None:
        if self.min_queries < 1:
            raise MeasurementError("min_queries must be >= 1 (the classic single-stream rule is 1024)")
        if not self.min_seconds >= 0:
            raise MeasurementError("min_seconds must be >= 0")
        if self.warmup_queries < 0:
            raise MeasurementError("warmup_queries must be >= 0")
        if self.batch < 1:
            raise MeasurementError("batch must be >= 1")
        if self.pool < 1:
            raise MeasurementError("pool must be >= 1")

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        return tuple(sorted({1, self.batch}))

    def describe(self) -> dict[str, Any]:
        return {
            "mode": "single-stream; members chained as the runtime runs them (batch 1 of a bundle: runtime requests); each member timed (feed + run)",
            "min_queries": self.min_queries,
            "min_seconds": self.min_seconds,
            "warmup_queries": self.warmup_queries,
            "batch_sizes": list(self.batch_sizes),
        }


def latency_stats(ms: np.ndarray | Sequence[float]) -> dict[str, float]:
    """min/p50/p90/p95/p99/max, mean and std of latencies in ms, plus the number of queries."""
    a = np.asarray(ms, dtype=np.float64)
    if a.size == 0:
        raise MeasurementError("no latencies were recorded; raise min_queries")
    p50, p90, p95, p99 = np.percentile(a, [50, 90, 95, 99])
    return {
        "min": round(float(a.min()), 5),
        "p50": round(float(p50), 5),
        "p90": round(float(p90), 5),
        "p95": round(float(p95), 5),
        "p99": round(float(p99), 5),
        "max": round(float(a.max()), 5),
        "mean": round(float(a.mean()), 5),
        "std": round(float(a.std()), 5),
        "queries": int(a.size),
    }


class _Chain:
    """Members' sessions and how each is fed from the task input and the members before it.

    Members are called the way the runtime calls them (``edge_runtime.ensemble._bound_run``: the ORT
    binding under ``InferenceSession.run``, which skips a per-call name check worth several µs), and
    member k's time is the interval the runtime observes for it: from the moment member k-1's outputs
    are back to the moment member k's are, i.e. building its feed plus its run.
    """

    def __init__(self, sessions: Sequence[Any], fetches: Sequence[list[str]], feeders: Sequence[Callable[..., dict]]):
        self.sessions = list(sessions)
        self.runs = [_bound_run(s) for s in sessions]
        self.fetches = list(fetches)
        self.feeders = list(feeders)

    def run(self, feed0: Mapping[str, np.ndarray], times: np.ndarray | None = None) -> None:
        outputs: list[dict[str, np.ndarray]] = []
        clock = time.perf_counter
        t_prev = clock()
        for k, run in enumerate(self.runs):
            feed = self.feeders[k](feed0, outputs)
            result = run(self.fetches[k], feed, None)
            t = clock()
            if times is not None:
                times[k] = (t - t_prev) * 1e3
            t_prev = t
            outputs.append(dict(zip(self.fetches[k], result)))


def _bundle_feeder(manifest: Manifest, k: int, session: Any) -> Callable[..., dict]:
    """Feed of member k: the task input, the previous member's logits, its connections."""
    member = manifest.members[k]
    x_name = manifest.task.input.name
    wanted = [arg.name for arg in session.get_inputs()]
    sources: dict[str, tuple[int, str] | None] = {x_name: None}
    if k > 0:
        sources["prev_logits"] = (k - 1, "logits")
    for conn in member.connections:
        sources[conn.input] = (conn.member, conn.output)
    unknown = [name for name in wanted if name not in sources]
    if unknown:
        raise MeasurementError(
            f"member '{member.name}' takes inputs {unknown} that neither the task nor a connection provides; "
            "re-export the bundle"
        )

    def feed(feed0: Mapping[str, np.ndarray], outputs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        out = {}
        for name in wanted:
            src = sources[name]
            out[name] = feed0[x_name] if src is None else outputs[src[0]][src[1]]
        return out

    return feed


def _timed_passes(chain: _Chain, pool: Sequence[Mapping[str, np.ndarray]], config: MeasureConfig, tracker: PeakTracker) -> np.ndarray:
    """Warm-up, then single-stream passes until both minimums are met; (queries, members) ms."""
    for i in range(config.warmup_queries):
        chain.run(pool[i % len(pool)])
    k = len(chain.sessions)
    rows = np.empty((max(config.min_queries, 1024), k))
    q = 0
    start = time.perf_counter()
    while q < config.min_queries or time.perf_counter() - start < config.min_seconds:
        if q == len(rows):
            rows = np.concatenate([rows, np.empty_like(rows)])
        chain.run(pool[q % len(pool)], rows[q])
        q += 1
        if q % _SAMPLE_EVERY == 0:
            tracker.sample()
    return rows[:q]


def _served_passes(runtime: Any, rows: Sequence[np.ndarray], config: MeasureConfig, tracker: PeakTracker) -> np.ndarray:
    """Single-sample runtime requests, every member run; the runtime's own per-member times (ms)."""
    observed = runtime.latency_estimator.observed  # one deque per member; predict() appends to each
    for i in range(config.warmup_queries):
        runtime.predict(rows[i % len(rows)])
    k = len(observed)
    out = np.empty((max(config.min_queries, 1024), k))
    q = 0
    start = time.perf_counter()
    while q < config.min_queries or time.perf_counter() - start < config.min_seconds:
        if q == len(out):
            out = np.concatenate([out, np.empty_like(out)])
        runtime.predict(rows[q % len(rows)])
        out[q] = [window[-1] for window in observed]
        q += 1
        if q % _SAMPLE_EVERY == 0:
            tracker.sample()
    return out[:q]


def _measure(
    name: str,
    blobs: Sequence[bytes],
    member_names: Sequence[str],
    make_chain: Callable[[list[Any]], _Chain],
    make_pool: Callable[[list[Any], int], list[dict[str, np.ndarray]]],
    config: MeasureConfig,
    make_server: Callable[[list[Any]], tuple[Any, list[np.ndarray]]] | None = None,
) -> dict[str, Any]:
    """Load, first inference, timed passes per batch size; the profile (see profiles.store)."""
    meter = LoadMeter().start()
    rss_before = rss_mb()
    load_tracker = PeakTracker().start()
    sessions, create_ms, load_delta = [], [], []
    for member_name, blob in zip(member_names, blobs):
        before = load_tracker.sample()
        t0 = time.perf_counter()
        try:
            sessions.append(create_session(blob, config.session, name=member_name))
        except EdgeRuntimeError as exc:
            raise MeasurementError(str(exc)) from exc
        create_ms.append((time.perf_counter() - t0) * 1e3)
        load_delta.append(load_tracker.sample() - before)
    rss_after = rss_mb()
    load_memory = load_tracker.result()
    chain = make_chain(sessions)
    run_tracker = PeakTracker().start()
    pools = {b: make_pool(sessions, b) for b in config.batch_sizes}
    first = np.empty(len(sessions))
    try:
        chain.run(pools[1][0], first)
        timings = {}
        for b in config.batch_sizes:
            if b == 1 and make_server is not None:
                runtime, rows = make_server(sessions)
                timings[b] = _served_passes(runtime, rows, config, run_tracker)
            else:
                timings[b] = _timed_passes(chain, pools[b], config, run_tracker)
    except Exception as exc:  # noqa: BLE001 - ORT raises several unrelated types for a failing run
        raise MeasurementError(f"'{name}' failed while running: {str(exc).strip().splitlines()[0]}") from exc
    run_memory = run_tracker.result()
    conditions = meter.stop()
    device = describe_device()

    members = []
    for k, member_name in enumerate(member_names):
        row: dict[str, Any] = {
            "name": member_name,
            "size_bytes": len(blobs[k]),
            "inputs": {arg.name: _shape(arg.shape) for arg in sessions[k].get_inputs()},
            "session_create_ms": round(create_ms[k], 4),
            "first_inference_ms": round(float(first[k]), 5),
            "rss_load_delta_mb": round(load_delta[k], 3),
            "latency_ms": latency_stats(timings[1][:, k]),
            "batches": {},
        }
        for b in config.batch_sizes:
            stats = latency_stats(timings[b][:, k])
            row["batches"][str(b)] = {"latency_ms": stats, "throughput_per_s": round(b * 1e3 / stats["mean"], 2)}
        members.append(row)
    prefixes = []
    for k in range(len(sessions)):
        entry: dict[str, Any] = {
            "members": k + 1,
            "latency_ms": latency_stats(timings[1][:, : k + 1].sum(axis=1)),
            "batches": {},
        }
        for b in config.batch_sizes:
            stats = latency_stats(timings[b][:, : k + 1].sum(axis=1))
            entry["batches"][str(b)] = {"latency_ms": stats, "throughput_per_s": round(b * 1e3 / stats["mean"], 2)}
        prefixes.append(entry)
    return {
        "profile_version": PROFILE_VERSION,
        "name": name,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "fingerprint": device["fingerprint"],
        "device": device["info"],
        "settings": describe_settings(config.session),
        "measurement": config.describe(),
        "conditions": conditions,
        "model_size_bytes": int(sum(len(b) for b in blobs)),
        "memory_mb": {
            "rss_before_load": round(rss_before, 2),
            "rss_after_load": round(rss_after, 2),
            "load": load_memory,
            "run": run_memory,
        },
        "members": members,
        "prefixes": prefixes,
    }


def _shape(shape: Sequence[Any]) -> list[Any]:
    return [d if isinstance(d, int) else -1 for d in shape]


def profile_bundle(
    bundle: str | os.PathLike[str] | Bundle,
    config: MeasureConfig | None = None,
    data: np.ndarray | None = None,
    data_label: str = "",
) -> dict[str, Any]:
    """Profile every member of a bundle on this device, chained as the runtime evaluates them.

    Args:
        bundle: a bundle directory, ``.zip``, or a loaded :class:`~edge_runtime.bundle.Bundle`.
        config: how long and how to measure (defaults: 1024 queries, 1 s, batch 1 and 8).
        data: raw inputs of the task's shape (rows), or None for standard-normal inputs.
        data_label: where ``data`` came from, recorded in the profile.

    Returns:
        The profile, in the format documented in :mod:`profiles.store` (not yet stored).

    Raises:
        MeasurementError: a member cannot be loaded or run, or ``data`` has the wrong shape.
        edge_runtime.errors.BundleError: the bundle is invalid.
    """
    config = config or MeasureConfig()
    loaded = load_bundle(bundle)
    manifest = loaded.manifest
    keep = connection_inputs(manifest.members)
    fetches = []
    for k, member in enumerate(manifest.members):
        # What the runtime needs back: the anytime answer, plus what later members consume.
        extra = [o for o in member.outputs if (k, o) in keep and o not in REQUIRED_OUTPUTS]
        fetches.append([*REQUIRED_OUTPUTS, *extra])
    rng = np.random.default_rng(config.seed)

    def make_chain(sessions: list[Any]) -> _Chain:
        feeders = [_bundle_feeder(manifest, k, s) for k, s in enumerate(sessions)]
        return _Chain(sessions, fetches, feeders)

    def make_pool(sessions: list[Any], batch: int) -> list[dict[str, np.ndarray]]:
        xs = task_batches(manifest, batch, config.pool, data, rng)
        return [{manifest.task.input.name: x} for x in xs]

    def make_server(sessions: list[Any]) -> tuple[Any, list[np.ndarray]]:
        runtime = AnytimeRuntime(loaded, config.session, entropy_threshold="off", warmup=0, sessions=sessions)
        rows = task_batches(manifest, 1, config.pool, data, rng, preprocess=False)  # the runtime preprocesses
        return runtime, rows

    profile = _measure(
        manifest.name, loaded.member_bytes, [m.name for m in manifest.members], make_chain, make_pool, config,
        make_server,
    )
    profile["measurement"]["inputs"] = _inputs_label(data, data_label)
    for k, (row, member) in enumerate(zip(profile["members"], manifest.members)):
        row["file"] = member.file
        row["params"] = member.params
        # Whose outputs this member takes: its latency was measured with those inputs, right after they ran.
        sources = {c.member for c in member.connections} | ({k - 1} if k > 0 else set())
        row["conditional_on"] = [manifest.members[i].name for i in sorted(sources)]
    return profile


def profile_onnx(
    model: str | os.PathLike[str] | bytes,
    config: MeasureConfig | None = None,
    data: np.ndarray | None = None,
    data_label: str = "",
    name: str | None = None,
) -> dict[str, Any]:
    """Profile a plain ONNX model (not a bundle): input shapes and dtypes come from the graph.

    A dynamic leading dimension becomes the batch size being timed; other dynamic dimensions become 1.

    Args:
        model: a ``.onnx`` path or its bytes.
        config: how long and how to measure.
        data: rows for the model's single input (its shape after the batch dim must match), or None.
        data_label: where ``data`` came from, recorded in the profile.
        name: the name to report (default: the file's stem).

    Returns:
        A profile with one member (same format as :func:`profile_bundle`).

    Raises:
        MeasurementError: the file is missing, ONNX Runtime rejects it, or ``data`` does not fit.
    """
    config = config or MeasureConfig()
    if isinstance(model, bytes):
        blob, name = model, name or "model"
    else:
        path = Path(model)
        if not path.is_file():
            raise MeasurementError(f"{path} does not exist; pass a bundle directory, a .zip bundle or an .onnx file")
        blob, name = path.read_bytes(), name or path.stem
    rng = np.random.default_rng(config.seed)

    def make_chain(sessions: list[Any]) -> _Chain:
        outputs = [o.name for o in sessions[0].get_outputs()]
        return _Chain(sessions, [outputs], [lambda feed0, _outputs: dict(feed0)])

    def make_pool(sessions: list[Any], batch: int) -> list[dict[str, np.ndarray]]:
        specs = graph_input_specs(sessions[0], batch)
        if data is None:
            return [random_feed(specs, rng) for _ in range(config.pool)]
        if len(specs) != 1 or tuple(data.shape[1:]) != specs[0].shape[1:]:
            raise MeasurementError(
                f"data x has shape {list(data.shape)} but '{name}' takes "
                f"{[(s.name, list(s.shape)) for s in specs]}; pass data for its one input or omit --data"
            )
        rows = np.take(data, np.arange(config.pool * batch), axis=0, mode="wrap").astype(specs[0].dtype)
        return [{specs[0].name: np.ascontiguousarray(rows[i * batch : (i + 1) * batch])} for i in range(config.pool)]

    profile = _measure(name, [blob], [name], make_chain, make_pool, config)
    profile["measurement"]["inputs"] = _inputs_label(data, data_label)
    profile["members"][0]["conditional_on"] = []
    return profile


def _inputs_label(data: np.ndarray | None, label: str) -> str:
    if data is None:
        return "random: standard normal floats of the input shape"
    return f"data: {label or 'array'} ({len(data)} rows)"
