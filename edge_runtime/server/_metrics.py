"""Prometheus metrics of the V2 server, served at ``GET /metrics`` in the text exposition format.

Each server has its own registry (``prometheus_client.CollectorRegistry``), so two apps in one process (tests)
keep separate counts. Every series carries the served model's name as ``model``.

Counted as requests are answered (on the event loop, a few microseconds a request: labelled children are
resolved once, an observation is a lock and an add):

=====================================  =========  ==================================================================
``anytime_requests_total``             counter    inference requests answered, by ``status`` (HTTP status code)
``anytime_shed_total``                 counter    503s for overload, by ``reason``: ``queue_full`` (every worker busy
                                                  and the queue full), ``deadline`` (the queue shows the budget cannot
                                                  be met), ``expired`` (the budget ran out while queued), ``shutdown``
``anytime_exits_total``                counter    answered samples by ``exit_reason`` (confident, budget, complete, error)
``anytime_members_used``               histogram  members evaluated per answered sample (buckets 1..N, one per member count)
``anytime_request_duration_seconds``   histogram  arrival (first byte) to answer built, per 200 response
``anytime_queue_wait_seconds``         histogram  time a 200 request waited for a worker (all its chunks)
=====================================  =========  ==================================================================

Read when scraped (nothing on the hot path):

=====================================  =========  ==================================================================
``anytime_member_errors_total``        counter    times each ``member`` raised during a request (the runtime's count)
``anytime_latency_estimate_seconds``   gauge      the runtime's predicted time from the start of ``member`` to the answer
                                                  (what the budget policy reads; :meth:`LatencyEstimator.describe`)
``anytime_latency_samples``            gauge      runs of ``member`` inside the estimator's window
``anytime_queue_depth``                gauge      requests waiting for a worker now
``anytime_workers_busy``               gauge      workers running a request now (of ``anytime_workers``)
``anytime_connections_held``           gauge      connections held now by backpressure (read, not parsed; under :func:`serve` only)
``anytime_holds_total``                counter    times a connection was held (backpressure)
``anytime_hold_refreshes_total``       counter    held requests refused early so their clients resend in time ("turns")
``process_*``                          various    prometheus_client's process metrics (RSS, CPU seconds, open fds)
=====================================  =========  ==================================================================

Connection-level refusals (every open connection busy with a request) are answered before any route and are
not counted here.
"""

from __future__ import annotations

import collections
from typing import Any, Iterable, Iterator, Sequence

from edge_runtime.extras import install_hint

try:
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError as exc:  # name the extra, as the rest of the server does
    raise ImportError(
        f"the anytime-edge server needs 'prometheus_client', which is not installed; {install_hint('serve')}",
        name="prometheus_client",
    ) from exc

__all__ = ["CONTENT_TYPE", "Outcome", "ServerMetrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST  # the text exposition format, version 0.0.4
# Request latencies span a 0.25 ms budget to a 10 s batch: roughly 1-2-5 steps.
LATENCY_BUCKETS_S = (0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Outcome:
    """What an answered inference request was, for the metrics and the access log (never tensor data)."""

    __slots__ = ("request_id", "budget_ms", "members_used", "exit_reason", "batch", "queue_ms", "counts")

    def __init__(self) -> None:
        self.request_id: str | None = None  # the request's "id", or the one the server generated
        self.budget_ms: float | None = None  # the budget applied (ms), None = no budget
        self.members_used: int | None = None  # the most members any sample used
        self.exit_reason: str | None = None  # the samples' exit reason, "mixed" when they differ
        self.batch = 0  # samples answered
        self.queue_ms = 0.0  # waiting for a worker, all chunks together
        self.counts: dict[tuple[int, str], int] = {}  # (members used, exit reason) -> samples

    def record(self, predictions: Sequence[Any]) -> None:
        """Fill in the per-sample counts from the predictions (one pass)."""
        self.batch = len(predictions)
        self.counts = collections.Counter((int(p.members_used), str(p.exit_reason)) for p in predictions)


class _Scraped(Collector):
    """The series read from the runtime and the scheduler when /metrics is scraped."""

    def __init__(self, metrics: "ServerMetrics") -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        m = self.metrics
        model = [m.model]
        members = HistogramMetricFamily("anytime_members_used", "Members evaluated per answered sample.", labels=["model"])
        cumulative, buckets = 0, []
        for k in range(1, len(m.member_names) + 1):
            cumulative += m.members_hist[k]
            buckets.append((str(float(k)), cumulative))
        buckets.append(("+Inf", cumulative + m.members_hist[0]))  # [0]: more than the bundle has (a fake runtime)
        members.add_metric(model, buckets, float(m.members_sum))
        yield members

        errors_of = getattr(m.runtime, "member_errors", None)
        if callable(errors_of):
            errors = CounterMetricFamily(
                "anytime_member_errors", "Times each member raised during a request.", labels=["model", "member"]
            )
            for name, count in zip(m.member_names, errors_of()):
                errors.add_metric([m.model, name], float(count))
            yield errors

        estimator = getattr(m.runtime, "latency_estimator", None)
        if estimator is not None:
            estimate = GaugeMetricFamily(
                "anytime_latency_estimate_seconds",
                "Predicted time from the start of a member to the answer (the budget policy's).",
                labels=["model", "member"],
            )
            samples = GaugeMetricFamily(
                "anytime_latency_samples", "Runs of a member inside the estimator's window.", labels=["model", "member"]
            )
            state = estimator.describe()
            for row in state["members"]:
                estimate.add_metric([m.model, row["member"]], row["estimate_ms"] / 1e3)
                samples.add_metric([m.model, row["member"]], float(row["samples"]))
            yield estimate
            yield samples
            load = GaugeMetricFamily(
                "anytime_latency_load",
                "How many times slower than its reference member 1 runs now (1: quiet); re-tried members are predicted that much slower.",
                labels=["model"],
            )
            load.add_metric(model, float(state["load"]))
            yield load

        scheduler = m.scheduler
        for name, doc, value in (
            ("anytime_queue_depth", "Requests waiting for a worker.", scheduler.queued),
            ("anytime_workers_busy", "Workers running a request.", scheduler.running),
            ("anytime_workers", "Inference worker threads.", scheduler.workers),
        ):
            gauge = GaugeMetricFamily(name, doc, labels=["model"])
            gauge.add_metric(model, float(value))
            yield gauge
        if m.gate is not None:
            gate = m.gate
            for family, name, doc, value in (
                (
                    GaugeMetricFamily,
                    "anytime_connections_held",
                    "Connections held now (backpressure): what they send is read but not parsed until a worker is free.",
                    gate.waiting,
                ),
                (
                    CounterMetricFamily,
                    "anytime_holds",
                    "Times a connection was held until a worker was free (backpressure).",
                    gate.held,
                ),
                (
                    CounterMetricFamily,
                    "anytime_hold_refreshes",
                    "Held requests refused early, their budgets spent, so that their clients resend in time (hold order turns).",
                    gate.refreshed,
                ),
            ):
                metric = family(name, doc, labels=["model"])
                metric.add_metric(model, float(value))
                yield metric


class ServerMetrics:
    """The counters of one server and the registry /metrics renders.

    Args:
        model: the served model's name (the ``model`` label).
        member_names: the bundle's members in evaluation order.
        runtime: read when scraped for ``member_errors()`` and ``latency_estimator`` (either may be absent).
        scheduler: read when scraped for its queue depth and busy workers.
        process: add prometheus_client's ``process_*`` metrics (off in tests that build many apps).
    """

    def __init__(self, model: str, member_names: Sequence[str], runtime: Any, scheduler: Any, process: bool = True) -> None:
        self.model = model
        self.member_names = tuple(member_names)
        self.runtime = runtime
        self.scheduler = scheduler
        self.gate: Any = None  # the connection layer's ReadGate when serving with backpressure (set by serve())
        self.registry = CollectorRegistry(auto_describe=False)
        self._requests = Counter(
            "anytime_requests", "Inference requests answered, by HTTP status.", ["model", "status"], registry=self.registry
        )
        self._shed = Counter(
            "anytime_shed", "Requests refused with 503 for overload, by reason.", ["model", "reason"], registry=self.registry
        )
        self._exits = Counter(
            "anytime_exits", "Answered samples by exit reason.", ["model", "exit_reason"], registry=self.registry
        )
        latency = Histogram(
            "anytime_request_duration_seconds",
            "From a request's arrival to its answer (200s).",
            ["model"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        queue = Histogram(
            "anytime_queue_wait_seconds",
            "Time a request waited for a worker (200s).",
            ["model"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self._latency = latency.labels(model)
        self._queue = queue.labels(model)
        self._status_child: dict[int, Any] = {}
        self._shed_child: dict[str, Any] = {}
        self._exit_child: dict[str, Any] = {}
        # members used: index k = samples that used k members; index 0 = more than the bundle's count
        self.members_hist = [0] * (len(self.member_names) + 1)
        self.members_sum = 0
        self.registry.register(_Scraped(self))
        if process:
            ProcessCollector(registry=self.registry)

    # -- hot path (the event loop) ---------------------------------------------------------------------

    def answered(self, status: int, elapsed_s: float, outcome: Outcome | None) -> None:
        """Count one inference request; ``outcome`` (a 200's) adds its samples, latency and queue time."""
        child = self._status_child.get(status)
        if child is None:
            child = self._status_child[status] = self._requests.labels(self.model, str(status))
        child.inc()
        if outcome is None or not outcome.counts:
            return
        self._latency.observe(elapsed_s)
        self._queue.observe(outcome.queue_ms / 1e3)
        hist, top = self.members_hist, len(self.member_names)
        reasons: dict[str, int] = {}
        for (used, reason), count in outcome.counts.items():
            hist[used if 1 <= used <= top else 0] += count
            self.members_sum += used * count
            reasons[reason] = reasons.get(reason, 0) + count
        for reason, count in reasons.items():
            exit_child = self._exit_child.get(reason)
            if exit_child is None:
                exit_child = self._exit_child[reason] = self._exits.labels(self.model, reason)
            exit_child.inc(count)

    def shed(self, reason: str) -> None:
        """Count one 503 for overload (the request is counted by :meth:`answered` too)."""
        child = self._shed_child.get(reason)
        if child is None:
            child = self._shed_child[reason] = self._shed.labels(self.model, reason)
        child.inc()

    # -- scraping ----------------------------------------------------------------------------------------

    def render(self) -> bytes:
        """The text exposition of every metric (what ``GET /metrics`` answers)."""
        return generate_latest(self.registry)

    def families(self) -> Iterator[Metric]:
        """The metric families as collected now (for tests and reports)."""
        return iter(self.registry.collect())
