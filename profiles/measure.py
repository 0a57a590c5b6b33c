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

Memory (``memory_mb``, see :mod:`profiles.memory` for sampled RSS vs the kernel's peak): by default it
is measured in a fresh Python process that imports only what a runtime process imports, then creates
the sessions one by one and runs untimed passes at each batch size (random inputs: memory does not
depend on values). So ``process_baseline`` is what any runtime process costs before a model, each
member's ``rss_load_delta_mb`` is what it adds (the first also carries ONNX Runtime's one-off
environment), and the numbers do not depend on what the profiling process did before (a test runner
with torch loaded, a ``select`` that already profiled another bundle). With ``memory_probe=False`` the
same quantities are taken in this process instead. RSS is sampled every few passes, outside the timed
intervals.

Inputs cycle through a pool of distinct batches (random normal, or rows of ``--data``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from edge_runtime.bundle import REQUIRED_OUTPUTS, Bundle, Manifest, connection_inputs, load_bundle

# The runtime itself, and its own call path: the profile must time what the runtime will pay per member.
from edge_runtime.ensemble import AnytimeRuntime
from edge_runtime.errors import EdgeRuntimeError, error_line
from edge_runtime.session import SessionConfig, create_session, fast_run
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
    "time_sessions",
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
    # Measure memory in a fresh runtime process (see "Memory" above); False: in this process (faster,
    # but its baseline includes whatever this process imported and loaded before).
    memory_probe: bool = True
    memory_passes: int = 256  # untimed passes per batch size in the memory probe

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
        if self.memory_passes < 1:
            raise MeasurementError("memory_passes must be >= 1")

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


def time_sessions(
    sessions: Mapping[str, Any],
    feeds: Mapping[str, Sequence[Mapping[str, np.ndarray]]],
    *,
    rounds: int,
    calls_per_round: int = 1,
    warmup: int = 0,
) -> dict[str, np.ndarray]:
    """Time several ONNX Runtime sessions side by side, interleaved; the one timer of the latency searches.

    Latency on a shared machine drifts with whatever else runs, so models that are compared are timed in
    the same process and interleaved: every round times a burst of ``calls_per_round`` calls to each
    session in turn, the order rotated by one each round, so a slow phase of the machine hits every model
    alike. Each call is ``session.run(None, feed)`` timed with ``time.perf_counter``. With two sessions
    and ``calls_per_round=1`` the calls simply alternate, the order swapped every call.

    Args:
        sessions: name -> ``onnxruntime.InferenceSession`` (e.g. from :func:`edge_runtime.session.create_session`).
        feeds: name -> a pool of feeds (input name -> array) for that session; call ``i`` of round ``r``
            uses feed ``(r + i) % len(pool)``, the ``warmup`` calls feed ``i % len(pool)``.
        rounds: interleaved rounds (>= 1).
        calls_per_round: timed calls per session per round (>= 1).
        warmup: untimed calls per session first, one session after the other (>= 0).

    Returns:
        name -> float64 array of ``rounds * calls_per_round`` call latencies in milliseconds, in call
        order; summarise with :func:`latency_stats` or percentiles.

    Raises:
        MeasurementError: no sessions, a session without feeds, or counts out of range.
    """
    if not sessions:
        raise MeasurementError("give at least one session to time")
    if rounds < 1 or calls_per_round < 1 or warmup < 0:
        raise MeasurementError("rounds and calls_per_round must be >= 1 and warmup >= 0")
    names = list(sessions)
    missing = [name for name in names if not feeds.get(name)]
    if missing:
        raise MeasurementError(f"sessions {missing} have no feeds; give each at least one input feed")
    for name in names:
        session, pool = sessions[name], feeds[name]
        for i in range(warmup):
            session.run(None, pool[i % len(pool)])
    times = {name: np.empty(rounds * calls_per_round) for name in names}
    clock = time.perf_counter
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            session, pool, out = sessions[name], feeds[name], times[name]
            base = r * calls_per_round
            for i in range(calls_per_round):
                inputs = pool[(r + i) % len(pool)]
                start = clock()
                session.run(None, inputs)
                out[base + i] = (clock() - start) * 1e3
    return times


class _Chain:
    """Members' sessions and how each is fed from the task input and the members before it.

    Members are called the way the runtime calls them (:func:`edge_runtime.session.fast_run`: the ORT
    binding under ``InferenceSession.run``, which skips a per-call name check worth several µs), and
    member k's time is the interval the runtime observes for it: from the moment member k-1's outputs
    are back to the moment member k's are, i.e. building its feed plus its run.
    """

    def __init__(
        self, sessions: Sequence[Any], fetches: Sequence[list[str]], feeders: Sequence[Callable[..., dict[str, np.ndarray]]]
    ) -> None:
        self.sessions = list(sessions)
        self.runs = [fast_run(s) for s in sessions]
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


def _bundle_feeder(manifest: Manifest, k: int, session: Any) -> Callable[..., dict[str, np.ndarray]]:
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
            f"member '{member.name}' takes inputs {unknown} that neither the task nor a connection provides; re-export the bundle"
        )

    def feed(feed0: Mapping[str, np.ndarray], outputs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        out = {}
        for name in wanted:
            src = sources[name]
            out[name] = feed0[x_name] if src is None else outputs[src[0]][src[1]]
        return out

    return feed


def _timed_passes(
    chain: _Chain, pool: Sequence[Mapping[str, np.ndarray]], config: MeasureConfig, tracker: PeakTracker
) -> np.ndarray:
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
    observed = runtime.latency_estimator.observed  # one deque per member of (time_s, ms); predict() appends
    k = len(observed)

    def serve(row: np.ndarray) -> None:
        answer = runtime.predict(row)[0]
        if answer.members_used != k:  # a member failed (the runtime answered from fewer): no valid timing
            name = runtime.manifest.members[answer.members_used].name
            raise MeasurementError(f"member '{name}' failed inside the runtime; check it with `anytime-edge inspect --check`")

    for i in range(config.warmup_queries):
        serve(rows[i % len(rows)])
    out = np.empty((max(config.min_queries, 1024), k))
    q = 0
    start = time.perf_counter()
    while q < config.min_queries or time.perf_counter() - start < config.min_seconds:
        if q == len(out):
            out = np.concatenate([out, np.empty_like(out)])
        serve(rows[q % len(rows)])
        out[q] = [window[-1][1] for window in observed]
        q += 1
        if q % _SAMPLE_EVERY == 0:
            tracker.sample()
    return out[:q]


@dataclass(frozen=True)
class _Subject:
    """What to measure: member bytes and names, and how to chain, feed and serve them."""

    name: str
    blobs: Sequence[bytes]
    member_names: Sequence[str]
    make_chain: Callable[[list[Any]], _Chain]
    make_pool: Callable[[list[Any], int], list[dict[str, np.ndarray]]]
    make_server: Callable[[list[Any]], tuple[Any, list[np.ndarray]]] | None = None


def _load(subject: _Subject, config: MeasureConfig) -> tuple[list[Any], list[float], dict[str, Any]]:
    """Create every member's session: sessions, creation ms, memory of loading (per-member RSS deltas)."""
    rss_before = rss_mb()
    tracker = PeakTracker().start()
    sessions, create_ms, deltas = [], [], []
    for member_name, blob in zip(subject.member_names, subject.blobs):
        before = tracker.sample()
        t0 = time.perf_counter()
        try:
            sessions.append(create_session(blob, config.session, name=member_name))
        except EdgeRuntimeError as exc:
            raise MeasurementError(str(exc)) from exc
        create_ms.append((time.perf_counter() - t0) * 1e3)
        deltas.append(round(tracker.sample() - before, 3))
    memory = {
        "process_baseline": round(rss_before, 2),
        "rss_after_load": round(rss_mb(), 2),
        "member_load_delta": deltas,
        "load": tracker.result(),
    }
    return sessions, create_ms, memory


def _failing_run(name: str, exc: Exception) -> MeasurementError:
    return MeasurementError(f"'{name}' failed while running: {error_line(exc)}")


def _memory_run(subject: _Subject, config: MeasureConfig) -> dict[str, Any]:
    """Memory of loading and running ``subject`` in this process (the probe's body), no timing."""
    sessions, _, memory = _load(subject, config)
    chain = subject.make_chain(sessions)
    tracker = PeakTracker().start()
    try:
        for b in config.batch_sizes:
            pool = subject.make_pool(sessions, b)
            for i in range(config.memory_passes):
                chain.run(pool[i % len(pool)])
                if i % _SAMPLE_EVERY == 0:
                    tracker.sample()
    except Exception as exc:  # ORT raises several unrelated types for a failing run
        raise _failing_run(subject.name, exc) from exc
    memory["run"] = tracker.result()
    return memory


def _probe_memory(kind: str, source: Path, config: MeasureConfig) -> dict[str, Any]:
    """Run :func:`_memory_run` in a fresh runtime process (``python -m profiles._probe``)."""
    spec = {
        "kind": kind,
        "source": str(source),
        "batch": config.batch,
        "passes": config.memory_passes,
        "seed": config.seed,
        "session": asdict(config.session),
    }
    package_root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "profiles._probe", json.dumps(spec)],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
    except subprocess.TimeoutExpired as exc:
        raise MeasurementError("the memory probe ran for over 600 s; profile with --no-memory-probe") from exc
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        reason = lines[-1] if lines else f"exit status {proc.returncode}"
        raise MeasurementError(f"the memory probe failed ({reason}); profile with --no-memory-probe")
    probed: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return probed


def _measure(subject: _Subject, config: MeasureConfig, probe: tuple[str, Path] | None) -> dict[str, Any]:
    """Load, first inference, timed passes per batch size, memory; the profile (see profiles.store)."""
    meter = LoadMeter().start()
    sessions, create_ms, memory = _load(subject, config)
    inputs = [{arg.name: _shape(arg.shape) for arg in s.get_inputs()} for s in sessions]
    chain = subject.make_chain(sessions)
    run_tracker = PeakTracker().start()
    pools = {b: subject.make_pool(sessions, b) for b in config.batch_sizes}
    first = np.empty(len(sessions))
    try:
        chain.run(pools[1][0], first)
        timings = {}
        for b in config.batch_sizes:
            if b == 1 and subject.make_server is not None:
                runtime, rows = subject.make_server(sessions)
                timings[b] = _served_passes(runtime, rows, config, run_tracker)
            else:
                timings[b] = _timed_passes(chain, pools[b], config, run_tracker)
    except MeasurementError:
        raise
    except Exception as exc:  # ORT raises several unrelated types for a failing run
        raise _failing_run(subject.name, exc) from exc
    memory["run"] = run_tracker.result()
    memory["method"] = "this process"
    conditions = meter.stop()
    if config.memory_probe and probe is not None:
        memory = {**_probe_memory(*probe, config), "method": "fresh runtime process"}
    device = describe_device()

    members = []
    for k, member_name in enumerate(subject.member_names):
        row: dict[str, Any] = {
            "name": member_name,
            "size_bytes": len(subject.blobs[k]),
            "inputs": inputs[k],
            "session_create_ms": round(create_ms[k], 4),
            "first_inference_ms": round(float(first[k]), 5),
            "rss_load_delta_mb": memory["member_load_delta"][k],
            "latency_ms": latency_stats(timings[1][:, k]),
            "batches": {},
        }
        for b in config.batch_sizes:
            stats = latency_stats(timings[b][:, k])
            row["batches"][str(b)] = {"latency_ms": stats, "throughput_per_s": round(b * 1e3 / stats["mean"], 2)}
        members.append(row)
    prefixes = []
    for k in range(len(subject.member_names)):
        entry: dict[str, Any] = {
            "members": k + 1,
            "latency_ms": latency_stats(timings[1][:, : k + 1].sum(axis=1)),
            "batches": {},
        }
        for b in config.batch_sizes:
            stats = latency_stats(timings[b][:, : k + 1].sum(axis=1))
            entry["batches"][str(b)] = {"latency_ms": stats, "throughput_per_s": round(b * 1e3 / stats["mean"], 2)}
        prefixes.append(entry)
    del memory["member_load_delta"]  # it lives in the member rows
    return {
        "profile_version": PROFILE_VERSION,
        "name": subject.name,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "fingerprint": device["fingerprint"],
        "device": device["info"],
        "settings": describe_settings(config.session),
        "measurement": config.describe(),
        "conditions": conditions,
        "model_size_bytes": int(sum(len(b) for b in subject.blobs)),
        "memory_mb": memory,
        "members": members,
        "prefixes": prefixes,
    }


def _shape(shape: Sequence[Any]) -> list[Any]:
    return [d if isinstance(d, int) else -1 for d in shape]


def _bundle_subject(loaded: Bundle, config: MeasureConfig, data: np.ndarray | None) -> _Subject:
    manifest = loaded.manifest
    keep = connection_inputs(manifest.members)
    fetches = []
    for k, member in enumerate(manifest.members):
        # What the runtime needs back: the anytime answer, plus what later members consume.
        extra = [o for o in member.outputs if (k, o) in keep and o not in REQUIRED_OUTPUTS]
        fetches.append([*REQUIRED_OUTPUTS, *extra])
    rng = np.random.default_rng(config.seed)

    def make_chain(sessions: list[Any]) -> _Chain:
        # One bounded warm-up pass first (SessionConfig.load_timeout_s, RunOptions.terminate): a member
        # that never finishes is refused with one line instead of hanging the measurement.
        try:
            AnytimeRuntime(loaded, config.session, entropy_threshold="off", warmup=1, sessions=sessions)
        except EdgeRuntimeError as exc:
            raise MeasurementError(str(exc)) from exc
        feeders = [_bundle_feeder(manifest, k, s) for k, s in enumerate(sessions)]
        return _Chain(sessions, fetches, feeders)

    def make_pool(sessions: list[Any], batch: int) -> list[dict[str, np.ndarray]]:
        xs = task_batches(manifest, batch, config.pool, data, rng)
        return [{manifest.task.input.name: x} for x in xs]

    def make_server(sessions: list[Any]) -> tuple[Any, list[np.ndarray]]:
        runtime = AnytimeRuntime(loaded, config.session, entropy_threshold="off", warmup=0, sessions=sessions)
        rows = task_batches(manifest, 1, config.pool, data, rng, preprocess=False)  # the runtime preprocesses
        return runtime, rows

    names = [m.name for m in manifest.members]
    return _Subject(manifest.name, loaded.member_bytes, names, make_chain, make_pool, make_server)


def _onnx_subject(blob: bytes, name: str, config: MeasureConfig, data: np.ndarray | None) -> _Subject:
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

    return _Subject(name, [blob], [name], make_chain, make_pool)


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
    profile = _measure(_bundle_subject(loaded, config, data), config, ("bundle", loaded.source))
    profile["measurement"]["inputs"] = _inputs_label(data, data_label)
    for k, (row, member) in enumerate(zip(profile["members"], manifest.members)):
        row["file"] = member.file
        row["params"] = member.params
        # Whose outputs this member takes: its latency was measured with those inputs, right after they ran.
        sources = {c.member for c in member.connections} | ({k - 1} if k > 0 and manifest.chains_logits else set())
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
        with tempfile.TemporaryDirectory(prefix="anytime-edge-probe.") as tmp:
            source = Path(tmp) / "model.onnx"  # the memory probe reads a file
            source.write_bytes(blob)
            profile = _measure(_onnx_subject(blob, name, config, data), config, ("onnx", source))
    else:
        path = Path(model)
        if not path.is_file():
            raise MeasurementError(f"{path} does not exist; pass a bundle directory, a .zip bundle or an .onnx file")
        blob, name = path.read_bytes(), name or path.stem
        profile = _measure(_onnx_subject(blob, name, config, data), config, ("onnx", path))
    profile["measurement"]["inputs"] = _inputs_label(data, data_label)
    profile["members"][0]["conditional_on"] = []
    return profile


def _probe_main(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Body of the memory probe process (``profiles._probe``): load, run untimed, report memory."""
    config = MeasureConfig(
        batch=int(spec["batch"]),
        memory_passes=int(spec["passes"]),
        seed=int(spec["seed"]),
        session=SessionConfig(**spec["session"]),
        memory_probe=False,
    )
    source = Path(spec["source"])
    if spec["kind"] == "bundle":
        subject = _bundle_subject(load_bundle(source), config, None)
    else:
        subject = _onnx_subject(source.read_bytes(), source.stem, config, None)
    return _memory_run(subject, config)


def _inputs_label(data: np.ndarray | None, label: str) -> str:
    if data is None:
        return "random: standard normal floats of the input shape"
    return f"data: {label or 'array'} ({len(data)} rows)"
