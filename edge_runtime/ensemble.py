"""Anytime evaluation: run a bundle's members one after another and stop early, keeping the best answer.

:class:`AnytimeRuntime` holds one ONNX Runtime session per member, created once at load. A request is
validated and preprocessed once, then member k gets ``x``, the previous member's combined ``logits`` (as
``prev_logits``; not for a ``combine="replace"`` cascade, whose members stand alone) and any connection
tensors, and returns the combined ``logits``/``probs``/``entropy`` after k members (the graphs do the
combining, softmax and entropy; Python only compares one float per member and sample). After each
member an :class:`~edge_runtime.policies.ExitPolicy` says whether the sample stops; the first member
always runs.

Batches: each sample exits on its own. Rows that stop are settled and sliced out, so later members run
on a smaller batch (``x``, ``prev_logits`` and the carried connection tensors are sliced together). A
latency budget is per request: when it stops, every remaining row stops.

Deadlines (:mod:`edge_runtime.deadline`): a budget is per request and counted from the start of
``predict``; every answer carries ``elapsed_ms`` and ``late``. A member k > 1 predicted to take at least
``DeadlineConfig.stop_min_ms`` runs under the runtime's watchdog, which stops it in flight at the deadline;
the answer is then the one before it (exit reason ``"budget"``, ``stopped_in_flight``).

Threads: the latency refresher and the watchdog, one each per runtime, started on first use; :meth:`close`
(or leaving a ``with`` block, or interpreter exit) stops and joins both.

Errors: if member k > 1 raises during a request, the rows still running get the answer after member
k-1 with exit reason ``"error"``, the error is logged and counted, and the runtime keeps serving. If
the first member raises there is no answer, and :class:`~edge_runtime.errors.MemberError` is raised.

Thread safety: :meth:`AnytimeRuntime.predict` may be called from several threads at once. ONNX Runtime
sessions are thread-safe for ``run``; all per-request state is local; the shared latency windows are
deques (appends are atomic in CPython).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from time import perf_counter
from typing import Any, Callable, Sequence, cast

import numpy as np

from edge_runtime.bundle import Bundle, Manifest, PathLike, connection_inputs, load_bundle
from edge_runtime.deadline import DeadlineConfig, StoppedInFlight, Watchdog
from edge_runtime.errors import InputError, MemberError, ModelLoadError, PolicyError, error_line
from edge_runtime.latency import LatencyEstimator
from edge_runtime.policies import (
    CALIBRATED,
    ExitPolicy,
    RunAll,
    ThresholdSpec,
    parse_budget,
    parse_entropy_threshold,
    policy_for,
)
from edge_runtime.result import Prediction
from edge_runtime.session import RunTimeout, SessionConfig, create_session, fast_run, run_bounded

__all__ = ["AnytimeRuntime", "PrefixEvaluation"]

_QUANTILES = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99, "p99.5": 0.995}
# Profiles record p50/p90/p95/p99 (profiles.measure); p99.5 starts from the profile's p99.
_PROFILE_KEY = {"p99.5": "p99"}
# Why p99.5 by default: a request is late when any of its last member runs plus the answer's finish overruns
# its prediction, and short stalls arrive per unit of time (timer interrupts: ~380 a second of 17-24 us on
# the development VM), not per member run: predicting each piece at p99 left 0.95-1.5% of requests late at
# the tightest budgets, p99.5 0.25-0.55% (benchmarks/deadline.py --phases budgets, 3-4 runs each, README).
_HEAD = ("logits", "probs", "entropy")  # every member's first three fetched outputs, in this order
_PREV = "prev_logits"
_FLOAT32 = np.dtype(np.float32)
# A single-sample run this many times its prediction raises the prediction at once (LatencyEstimator.raise_to);
# smaller overruns (the ~1% a p99 lets through) wait for the next refresh, so one hiccup moves nothing.
_SURPRISE = 2.0


@dataclass(frozen=True)
class PrefixEvaluation:
    """Every member run on a whole batch: the anytime answer after each prefix of the ensemble."""

    probs: np.ndarray  # (K, N, C) float32: probabilities after members 1..k
    entropy: np.ndarray  # (K, N) float32: entropy (nats) after members 1..k
    member_ms: np.ndarray  # (K,) float64: wall time of each member over the whole batch

    @property
    def labels(self) -> np.ndarray:
        """(K, N) predicted class after each prefix."""
        return np.asarray(self.probs.argmax(axis=-1))

    def accuracy(self, y: np.ndarray) -> np.ndarray:
        """(K,) accuracy of each prefix against integer labels ``y`` of shape (N,)."""
        y = np.asarray(y).reshape(-1)
        if y.shape[0] != self.probs.shape[1]:
            raise InputError(f"{y.shape[0]} labels for {self.probs.shape[1]} samples; give one label per sample")
        return np.asarray((self.labels == y[None, :]).mean(axis=1))


# One member's hot-path plan: bound run, output names to fetch, connection feeds, outputs to keep.
_Step = tuple[Callable[..., Any], list[str], tuple[tuple[str, tuple[int, str]], ...], tuple[tuple[tuple[int, str], int], ...]]


def _compile_preprocess(manifest: Manifest) -> tuple[Any, Any, tuple[int, ...] | None, tuple[int, ...]] | None:
    """The bundle's preprocess as hot-path constants, computed once at load; None for the identity.

    Returns ``(scale, offset, transpose, model_shape)``: float32 scalars (a version-1, scalar preprocess:
    the cheapest multiply) or arrays shaped ``(C, 1, ..., 1)`` that broadcast over a batch in the members'
    layout; ``scale`` is None when only the layout changes; ``transpose`` is the axis order taking the
    client's batch to the members' layout (None: same layout); ``model_shape`` the members' sample shape.
    """
    pre = manifest.task.preprocess
    if pre.is_identity:
        return None
    model_shape = tuple(manifest.task.model_input_shape[1:])
    transpose = pre.transpose_axes
    if pre.is_affine_identity:
        return None, None, transpose, model_shape
    if pre.channels is None:
        # no channels: scale and offset are scalars (Preprocess checks it)
        return np.float32(cast(float, pre.scale)), np.float32(cast(float, pre.offset)), transpose, model_shape
    scale, offset = pre.arrays(model_shape)
    return scale, offset, transpose, model_shape


class AnytimeRuntime:
    """Evaluates a bundle's members in order with early exit; see the module docstring.

    Args:
        bundle: a loaded bundle, or a path to one (verified before any session is built).
        session_config: how ORT sessions are built (threads, optimisation); defaults suit small members.
        entropy_threshold: default entropy exit: a number (nats), ``"calibrated"`` (the manifest's, or
            no entropy exit if the bundle was never calibrated) or ``"off"``.
        budget_ms: default latency budget per request in ms, or ``None``/``"off"`` for none.
        latency_quantile: which quantile of observed latencies predicts a member's latency for the budget:
            ``"p50"``, ``"p90"``, ``"p95"``, ``"p99"`` or ``"p99.5"`` (default: keeps late answers under 1%;
            ``"p99"`` uses more members at the tightest budgets, with about 1% late). Until a member has
            been observed, the profile's quantile (its p99 for ``"p99.5"``) stands in.
        warmup: single-sample warm-up runs per member at load (the first run of a session is slow, and the
            later ones seed the observed latencies).
        sessions: pre-built sessions, one per member (tests use fakes); built from the bundle when None.
        deadline: latency-estimate ageing and the in-flight stop (:class:`~edge_runtime.deadline.DeadlineConfig`).

    Raises:
        BundleError: the bundle cannot be read, verified or loaded by ONNX Runtime.
        PolicyError: an impossible default threshold, budget or quantile.
    """

    def __init__(
        self,
        bundle: Bundle | PathLike,
        session_config: SessionConfig | None = None,
        *,
        entropy_threshold: ThresholdSpec = CALIBRATED,
        budget_ms: float | str | None = None,
        latency_quantile: str = "p99.5",
        warmup: int = 8,
        sessions: Sequence[Any] | None = None,
        deadline: DeadlineConfig | None = None,
    ) -> None:
        bundle = load_bundle(bundle)
        manifest = bundle.manifest
        self._bundle = bundle
        self._config = session_config or SessionConfig()
        calibrated = manifest.calibration.entropy_threshold if manifest.calibration else None
        self._calibrated = calibrated
        self._default_threshold = parse_entropy_threshold(entropy_threshold, calibrated)
        self._default_budget = parse_budget(budget_ms)
        if latency_quantile not in _QUANTILES:
            raise PolicyError(f"latency quantile '{latency_quantile}' is unknown; use one of {sorted(_QUANTILES)}")
        if warmup < 0:
            raise PolicyError("warmup must be >= 0 runs per member")
        if sessions is None:
            sessions = [
                create_session(blob, self._config, name=member.name)
                for member, blob in zip(manifest.members, bundle.member_bytes)
            ]
        elif len(sessions) != manifest.num_members:
            raise ModelLoadError(f"{len(sessions)} sessions for {manifest.num_members} members; give one per member")
        self._sessions = tuple(sessions)
        self._chains = manifest.chains_logits  # members k > 1 take prev_logits (not in a "replace" cascade)
        self._plan = self._build_plan()
        self._labels = manifest.task.labels
        self._x_name = manifest.task.input.name
        self._sample_shape = tuple(manifest.task.input.shape[1:])
        self._preprocess = _compile_preprocess(manifest)
        self._fast_finite = _dot_flags_non_finite(int(np.prod(self._sample_shape)))
        self._errors = [0] * manifest.num_members
        self._policies: dict[tuple[float | None, float | None], ExitPolicy] = {}
        self._default_policy = policy_for(self._default_threshold, self._default_budget)
        self._zeros = (0.0,) * manifest.num_members  # "no prediction" for policies that ignore latency
        self._deadline = deadline = deadline or DeadlineConfig()
        self._estimator = LatencyEstimator(
            manifest.num_members,
            profile_ms=self._profile_latencies(latency_quantile),
            quantile=_QUANTILES[latency_quantile],
            window_s=deadline.latency_window_s,
            refresh_s=deadline.latency_refresh_s,
            clock=perf_counter,  # the module's clock, read now: tests that fake it fake both
            names=[m.name for m in manifest.members],
        )
        self._watchdog = Watchdog(deadline.stop_lead_ms, clock=perf_counter)
        self._stop_min_ms = deadline.stop_min_ms if deadline.in_flight_stop else math.inf
        self._warm_up(warmup)

    # ------------------------------------------------------------------ properties
    @property
    def manifest(self) -> Manifest:
        """The bundle's :class:`~edge_runtime.bundle.Manifest`."""
        return self._bundle.manifest

    @property
    def bundle(self) -> Bundle:
        """The verified bundle this runtime was built from."""
        return self._bundle

    @property
    def num_members(self) -> int:
        return len(self._sessions)

    @property
    def session_config(self) -> SessionConfig:
        return self._config

    @property
    def member_sessions(self) -> tuple[Any, ...]:
        """The ORT sessions, one per member, in evaluation order (read-only)."""
        return self._sessions

    @property
    def entropy_threshold(self) -> float | None:
        """The default entropy threshold (None: no entropy exit unless a call asks for one)."""
        return self._default_threshold

    @property
    def budget_ms(self) -> float | None:
        """The default latency budget per request (None: no budget unless a call asks for one)."""
        return self._default_budget

    @property
    def latency_estimator(self) -> LatencyEstimator:
        """Where the budget policy's latency predictions come from (``.describe()`` shows its state)."""
        return self._estimator

    @property
    def watchdog(self) -> Watchdog:
        """The in-flight stop (``.describe()``: guarded runs, stops, stop latency)."""
        return self._watchdog

    @property
    def deadline_config(self) -> DeadlineConfig:
        return self._deadline

    def close(self) -> None:
        """Stop and join the runtime's threads (latency refresher, watchdog). Idempotent.

        ``predict`` keeps working afterwards, with the estimates as they were and no in-flight stop.
        Interpreter exit does the same for runtimes never closed.
        """
        self._stop_min_ms = math.inf
        self._watchdog.close()
        self._estimator.close()

    def __enter__(self) -> "AnytimeRuntime":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def latency_observations(self) -> list[np.ndarray]:
        """Recent observed single-sample latencies (ms) per member: the session run plus the runtime's
        per-member work, from warm-up and batch-1 requests, oldest first."""
        return self._estimator.observations()

    def member_errors(self) -> tuple[int, ...]:
        """How many times each member raised during a request since load."""
        return tuple(self._errors)

    # ------------------------------------------------------------------ requests
    def predict(
        self,
        x: Any,
        budget_ms: float | str | None = None,
        entropy_threshold: ThresholdSpec = None,
    ) -> list[Prediction]:
        """Classify a batch with early exit; one :class:`Prediction` per sample, in input order.

        The budget is per request: it covers the whole call for the whole batch (validation, every
        member, the results), not each sample. The next member runs only if the time spent plus its
        predicted latency fits; a member k > 1 still running at the deadline is stopped in flight (when
        predicted to take at least ``DeadlineConfig.stop_min_ms``), and those rows answer with the members
        before it. Member 1 always runs to the end (there is no answer without it), so a request can still
        end after its budget: each :class:`Prediction` carries ``elapsed_ms`` (from the start of the call)
        and ``late`` (``elapsed_ms`` > budget), whatever its exit reason.

        Args:
            x: a batch shaped ``(N, *task.input.shape[1:])``, or one unbatched sample shaped
                ``task.input.shape[1:]`` (answered as a batch of one). Any real numeric dtype (cast to
                float32); raw values in the client's layout (e.g. ``(N, H, W, C)`` images for a bundle whose
                preprocess has ``layout="nhwc"``); the bundle's preprocess is applied here.
            budget_ms: latency budget for this whole request (all its samples) in ms, ``"off"``, or None for
                the runtime default.
            entropy_threshold: a number (nats), ``"calibrated"``, ``"off"``, or None for the runtime default.

        Returns:
            One prediction per sample.

        Raises:
            InputError: wrong shape or dtype, NaN/inf, or an empty batch.
            PolicyError: an impossible threshold or budget.
            MemberError: the first member raised (there is no answer at all).
        """
        t0 = perf_counter()  # the budget covers the whole call, validation included
        batch = self._prepare(x)
        policy = self._policy(entropy_threshold, budget_ms)
        estimates = self._estimator.estimates() if policy.uses_latency else self._zeros
        if batch.shape[0] == 1:
            return [self._predict_one(batch, policy, estimates, t0)]
        return self._predict_batch(batch, policy, estimates, t0)

    def evaluate_prefixes(self, x: Any, batch_size: int = 1024) -> PrefixEvaluation:
        """Run every member on every sample (no early exit) and keep the answer after each prefix.

        Calibration, the profiler's ``select``, the demo and the benchmarks use this: from it the outcome
        of any entropy threshold follows without running members again.

        Args:
            x: a batch as for :meth:`predict` (raw values; preprocess is applied).
            batch_size: rows per ORT call, to bound memory on big validation sets.

        Raises:
            InputError: bad input, as for :meth:`predict`.
            MemberError: a member raised.
        """
        if batch_size < 1:
            raise InputError("batch_size must be >= 1")
        batch = self._prepare(x)
        n, k_all = batch.shape[0], self.num_members
        probs = np.empty((k_all, n, len(self._labels)), dtype=np.float32)
        entropy = np.empty((k_all, n), dtype=np.float32)
        member_ms = np.zeros(k_all, dtype=np.float64)
        for start in range(0, n, batch_size):
            chunk = batch[start : start + batch_size]
            feed: dict[str, np.ndarray] = {self._x_name: chunk}
            carried: dict[tuple[int, str], np.ndarray] = {}
            for k, (run, names, conns, keeps) in enumerate(self._plan):
                for name, key in conns:
                    feed[name] = carried[key]
                t = perf_counter()
                try:
                    outs = run(names, feed, None)
                except Exception as exc:  # any failure inside ORT is the member's
                    self._errors[k] += 1
                    raise MemberError(f"member '{self.manifest.members[k].name}' failed: {error_line(exc)}") from exc
                member_ms[k] += (perf_counter() - t) * 1e3
                for name, _ in conns:  # a connection input is this member's only: the next one rejects it
                    del feed[name]
                for key, i in keeps:
                    carried[key] = outs[i]
                probs[k, start : start + len(chunk)] = outs[1]
                entropy[k, start : start + len(chunk)] = outs[2]
                if self._chains:
                    feed[_PREV] = outs[0]
        return PrefixEvaluation(probs=probs, entropy=entropy, member_ms=member_ms)

    # ------------------------------------------------------------------ hot paths
    def _predict_one(self, x: np.ndarray, policy: ExitPolicy, estimates: tuple[float, ...], t0: float) -> Prediction:
        plan = self._plan
        last = len(plan) - 1
        observed = self._estimator.observed
        stop = policy.stop_reason
        budget = policy.budget_ms
        deadline = None if budget is None else t0 + budget / 1e3
        stop_min = self._stop_min_ms if budget is not None else math.inf
        raise_to = self._estimator.raise_to if policy.uses_latency else None
        chains = self._chains
        feed: dict[str, np.ndarray] = {self._x_name: x}
        carried: dict[tuple[int, str], np.ndarray] = {}
        good: Any = None  # set by the first member, which always answers (it runs unguarded; its failure raises)
        reason = "complete"
        used = 0
        stopped = False
        entropy = best_entropy = 0.0  # of the member just run / of the best answer so far
        t_prev = perf_counter()
        for k, (run, names, conns, keeps) in enumerate(plan):
            if conns:
                for name, key in conns:
                    feed[name] = carried[key]
            try:
                if k and estimates[k] >= stop_min:
                    outs = self._watchdog.run(run, names, feed, deadline)  # type: ignore[arg-type]  # set: stop_min is inf without a budget
                else:
                    outs = run(names, feed, None)
            except StoppedInFlight:
                t = perf_counter()
                ms = (t - t_prev) * 1e3  # a lower bound of its latency, still worth knowing
                observed[k].append((t, ms))
                if raise_to is not None:
                    raise_to(k, ms)
                t_prev = t
                reason, stopped, entropy = "budget", True, best_entropy
                break
            except Exception as exc:  # noqa: BLE001 - a member failing must not take the runtime down
                self._member_failed(k, exc)
                reason = "error"
                entropy = best_entropy
                break
            t = perf_counter()
            ms = (t - t_prev) * 1e3
            observed[k].append((t, ms))
            if raise_to is not None and ms > _SURPRISE * estimates[k]:
                raise_to(k, ms)  # far slower than predicted (a re-tried member still under load): skip it now
            t_prev = t
            if conns:  # a connection input is this member's only: the next one rejects it
                for name, _ in conns:
                    del feed[name]
            entropy = outs[2].item()
            good, used = outs, k + 1
            if k == last:
                break
            r = stop(entropy, (t - t0) * 1e3, estimates[k + 1])
            if r is not None:
                reason = r
                break
            if keeps:
                for key, i in keeps:
                    carried[key] = outs[i]
            if chains:
                feed[_PREV] = outs[0]
            best_entropy = entropy
        probs = good[1][0]
        label = int(probs.argmax())
        t = perf_counter()
        elapsed = (t - t0) * 1e3
        late = budget is not None and elapsed > budget
        answer = Prediction(label, self._labels[label], probs, used, reason, entropy, elapsed, late, stopped)
        t = perf_counter()
        self._estimator.finish.append((t, (t - t_prev) * 1e3))
        return answer

    def _predict_batch(self, x: np.ndarray, policy: ExitPolicy, estimates: tuple[float, ...], t0: float) -> list[Prediction]:
        n = x.shape[0]
        plan = self._plan
        last = len(plan) - 1
        stop = policy.stop_reason
        budget = policy.budget_ms
        deadline = None if budget is None else t0 + budget / 1e3
        stop_min = self._stop_min_ms if budget is not None else math.inf
        results: list[Prediction | None] = [None] * n
        rows = np.arange(n)  # original index of every row still running
        feed: dict[str, np.ndarray] = {self._x_name: x}
        carried: dict[tuple[int, str], np.ndarray] = {}
        good: list[np.ndarray] | None = None
        next_ms = estimates[0]
        t_prev = perf_counter()
        for k, (run, names, conns, keeps) in enumerate(plan):
            for name, key in conns:
                feed[name] = carried[key]
            try:
                if k and next_ms >= stop_min:
                    outs = self._watchdog.run(run, names, feed, deadline)  # type: ignore[arg-type]  # set: stop_min is inf without a budget
                else:
                    outs = run(names, feed, None)
            except StoppedInFlight:
                self._settle(results, rows, good, range(len(rows)), k, "budget", t0, budget, stopped=True)
                return results  # type: ignore[return-value]  # every row is settled by now
            except Exception as exc:  # noqa: BLE001 - a member failing must not take the runtime down
                self._member_failed(k, exc)
                self._settle(results, rows, good, range(len(rows)), k, "error", t0, budget)
                return results  # type: ignore[return-value]  # every row is settled by now
            t = perf_counter()
            took_ms, t_prev = (t - t_prev) * 1e3, t
            for name, _ in conns:  # a connection input is this member's only: the next one rejects it
                del feed[name]
            good = outs
            if k == last:
                self._settle(results, rows, outs, range(len(rows)), k + 1, "complete", t0, budget)
                break
            # A batch runs longer than the single-sample prediction: scale the next member's prediction
            # by how much slower this member ran than its own prediction (never below 1).
            scale = max(1.0, took_ms / estimates[k]) if estimates[k] > 0 else 1.0
            elapsed = (t - t0) * 1e3
            next_ms = estimates[k + 1] * scale
            reasons = [stop(e, elapsed, next_ms) for e in outs[2].tolist()]
            leaving = [i for i, r in enumerate(reasons) if r is not None]
            for i in leaving:
                self._settle(results, rows, outs, (i,), k + 1, reasons[i], t0, budget)  # type: ignore[arg-type]  # leaving: not None
            if len(leaving) == len(rows):
                break
            for key, i in keeps:
                carried[key] = outs[i]
            logits = outs[0]
            if leaving:
                keep = np.ones(len(rows), dtype=bool)
                keep[leaving] = False
                rows = rows[keep]
                feed[self._x_name] = feed[self._x_name][keep]
                logits = logits[keep]
                carried = {key: value[keep] for key, value in carried.items()}
                good = [o[keep] for o in outs]
            if self._chains:
                feed[_PREV] = logits
        return results  # type: ignore[return-value]  # every row is settled by now

    def _settle(
        self,
        results: list[Prediction | None],
        rows: np.ndarray,
        outs: Sequence[np.ndarray] | None,
        which: Sequence[int],
        used: int,
        reason: str,
        t0: float,
        budget: float | None,
        stopped: bool = False,
    ) -> None:
        assert outs is not None and used >= 1  # the first member's failure raises before this, and it is never stopped
        elapsed = (perf_counter() - t0) * 1e3
        late = budget is not None and elapsed > budget
        probs, entropy = outs[1], outs[2]
        for i in which:
            p = probs[i]
            label = int(p.argmax())
            results[int(rows[i])] = Prediction(
                label, self._labels[label], p, used, reason, float(entropy[i]), elapsed, late, stopped
            )

    def _member_failed(self, k: int, exc: BaseException) -> None:
        self._errors[k] += 1
        name = self.manifest.members[k].name
        if k == 0:
            raise MemberError(f"the first member '{name}' failed, so there is no answer: {error_line(exc)}") from exc
        import logging  # only on this rare path: logging costs ~10 ms of import time on a small CPU

        logging.getLogger("edge_runtime").warning(
            "member '%s' failed; answering with members 1..%d: %s", name, k, error_line(exc)
        )

    # ------------------------------------------------------------------ set-up helpers
    def _policy(self, entropy_threshold: ThresholdSpec, budget_ms: float | str | None) -> ExitPolicy:
        if entropy_threshold is None and budget_ms is None:
            return self._default_policy
        threshold = (
            self._default_threshold if entropy_threshold is None else parse_entropy_threshold(entropy_threshold, self._calibrated)
        )
        budget = self._default_budget if budget_ms is None else parse_budget(budget_ms)
        key = (threshold, budget)
        policy = self._policies.get(key)
        if policy is None:
            if len(self._policies) > 1024:  # many distinct per-call values: do not grow without bound
                self._policies.clear()
            policy = self._policies[key] = policy_for(threshold, budget)
        return policy

    def _prepare(self, x: Any) -> np.ndarray:
        """Validate and preprocess a request: (N, *sample_shape) float32, finite, N >= 1.

        Written for the common case (a float32 ndarray) to touch as little of numpy as possible: after a
        member that runs for milliseconds the CPU caches are cold, and every numpy call then costs
        microseconds to tens of microseconds (see benchmarks/runtime_overhead.py).
        """
        if type(x) is np.ndarray:
            arr = x
        else:
            try:
                arr = np.asarray(x)
            except (TypeError, ValueError) as exc:
                raise InputError(f"input is not an array ({error_line(exc)}); send a numeric batch") from None
        dtype = arr.dtype
        if dtype is not _FLOAT32:
            if dtype.kind not in "biuf":
                raise InputError(f"input dtype {dtype} is not a real number type; send float32 (or ints) values")
            if dtype.kind == "f" and dtype.itemsize > 4:
                with np.errstate(over="ignore"):  # out-of-range values become inf, rejected below
                    arr = arr.astype(np.float32)
            else:
                arr = arr.astype(np.float32)
        shape = arr.shape
        if shape == self._sample_shape:
            arr = arr[None]
        elif shape[1:] != self._sample_shape or len(shape) != len(self._sample_shape) + 1:
            raise InputError(
                f"input shape {list(shape)} does not match the bundle's {[-1, *self._sample_shape]}; "
                f"send (N, {', '.join(map(str, self._sample_shape))})"
            )
        if arr.shape[0] == 0:
            raise InputError("input batch is empty; send at least one sample")
        if self._preprocess is not None:
            scale, offset, transpose, model_shape = self._preprocess
            if transpose is not None:  # client layout -> members' layout, written C-contiguous in one pass
                out = np.empty((arr.shape[0], *model_shape), dtype=np.float32)
                if scale is None:
                    np.copyto(out, arr.transpose(transpose))
                else:
                    np.multiply(arr.transpose(transpose), scale, out=out)
                    out += offset
                arr = out
            else:
                arr = arr * scale + offset
        if not self._finite(arr):
            raise InputError("input holds NaN or inf (after preprocessing); send finite values")
        return arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)

    def _finite(self, arr: np.ndarray) -> bool:
        # One BLAS dot x.x instead of a ufunc and a reduction: it is NaN or inf exactly when some element is
        # (squares never cancel, and NaN/inf raise no floating-point flag here), and it costs a quarter as
        # much on a cold cache. A non-finite result can also be an overflow of huge finite values
        # (|x| > 1.8e19), so the exact check decides then. Single samples only: a long dot could start
        # BLAS threads. ``_fast_finite`` is False where a self-test at load found the dot unreliable.
        if self._fast_finite and arr.shape[0] == 1:
            flat = arr.reshape(-1)
            if math.isfinite(flat.dot(flat)):
                return True
        return bool(np.isfinite(arr).all())

    def _build_plan(self) -> tuple[_Step, ...]:
        manifest = self.manifest
        needed = connection_inputs(manifest.members)
        plan = []
        for k, (member, session) in enumerate(zip(manifest.members, self._sessions)):
            kept = sorted(o for (j, o) in needed if j == k)
            names = [*_HEAD, *kept]
            conns = tuple((c.input, (c.member, c.output)) for c in member.connections)
            keeps = tuple(((k, o), len(_HEAD) + i) for i, o in enumerate(kept))
            feed_names = {manifest.task.input.name, *(c.input for c in member.connections)}
            if k > 0 and manifest.chains_logits:
                feed_names.add(_PREV)
            self._check_contract(member.name, session, feed_names, names)
            plan.append((fast_run(session), names, conns, keeps))
        return tuple(plan)

    @staticmethod
    def _check_contract(name: str, session: Any, feed_names: set[str], fetch: list[str]) -> None:
        try:
            graph_inputs = {i.name for i in session.get_inputs()}
            graph_outputs = {o.name for o in session.get_outputs()}
        except AttributeError:
            raise ModelLoadError(f"session for member '{name}' has no get_inputs/get_outputs; pass ORT sessions") from None
        if graph_inputs != feed_names and _PREV in graph_inputs - feed_names:
            raise ModelLoadError(
                f"member '{name}' takes '{_PREV}', but a combine='replace' cascade feeds none (and the first member "
                "never gets one); build the cascade from one-member bundles (`anytime-edge cascade`) or set combine"
            )
        if graph_inputs != feed_names:
            raise ModelLoadError(
                f"member '{name}' takes inputs {sorted(graph_inputs)} but the manifest feeds {sorted(feed_names)}; "
                "re-export the member or fix its connections"
            )
        missing = [o for o in fetch if o not in graph_outputs]
        if missing:
            raise ModelLoadError(f"member '{name}' lacks graph outputs {missing}; re-export it")
        # The hot path reads one entropy per row: a [N, 1] entropy would break it, so say so at load.
        shapes = {o.name: getattr(o, "shape", None) for o in session.get_outputs()}
        for output, rank in (("logits", 2), ("probs", 2), ("entropy", 1)):
            shape = shapes.get(output)
            if isinstance(shape, (list, tuple)) and shape and len(shape) != rank:
                raise ModelLoadError(
                    f"member '{name}' output '{output}' has shape {list(shape)}; the contract wants rank {rank} "
                    "(entropy [N], logits/probs [N, C]); re-export it"
                )

    def _profile_latencies(self, quantile: str) -> list[float] | None:
        if not self.manifest.profiles:
            return None
        from edge_runtime.device import find_profile_key  # reads /proc and ORT's version: only when profiles exist

        key = find_profile_key(self.manifest.profiles)
        return None if key is None else self.manifest.member_latency_ms(key, _PROFILE_KEY.get(quantile, quantile))

    def _warm_up(self, runs: int) -> None:
        """Run every member ``runs`` times on one zero sample; the first pass is bounded in time.

        The first run of a session is slow (allocations, lazy initialisation) and not recorded. It runs
        under ``session_config.load_timeout_s`` per member, enforced by ONNX Runtime's
        ``RunOptions.terminate``: a member that would run for hours (a ``Loop`` with a huge trip count)
        fails to load instead of hanging ``run``, ``serve`` and ``inspect --check``. The later runs seed
        the observed latencies; they stop early once the warm-up has used the timeout once per member.
        """
        if runs == 0:
            return
        x = np.zeros((1, *self._sample_shape), dtype=np.float32)
        prepared = self._prepare(x)  # members take the preprocessed input (another layout, for some bundles)
        t0 = perf_counter()
        self._first_pass(prepared)
        timeout = self._config.load_timeout_s
        budget_s = math.inf if timeout is None else timeout * self.num_members
        for _ in range(runs - 1):  # these seed the observed latencies
            if perf_counter() - t0 > budget_s:
                break
            self._predict_one(prepared, _RUN_ALL, self._zeros, perf_counter())
        self._estimator.refresh()

    def _first_pass(self, x: np.ndarray) -> None:
        timeout = self._config.load_timeout_s
        feed: dict[str, np.ndarray] = {self._x_name: x}
        carried: dict[tuple[int, str], np.ndarray] = {}
        for k, ((_, names, conns, keeps), session) in enumerate(zip(self._plan, self._sessions)):
            name = self.manifest.members[k].name
            for input_name, key in conns:
                feed[input_name] = carried[key]
            try:
                outs = run_bounded(session, names, feed, timeout)
            except RunTimeout:
                raise ModelLoadError(
                    f"member '{name}' did not finish one single-sample warm-up run within {timeout:g} s, so ONNX "
                    "Runtime stopped it (a member that slow, or one that loops without end, cannot serve); "
                    "re-export the member, or allow more time with --load-timeout"
                ) from None
            except Exception as exc:  # noqa: BLE001 - any failure inside ORT is the member's
                self._errors[k] += 1
                raise ModelLoadError(
                    f"member '{name}' failed: {error_line(exc)}; the member cannot answer a warm-up input, re-export it"
                ) from None
            for input_name, _ in conns:
                del feed[input_name]
            for key, i in keeps:
                carried[key] = outs[i]
            if self._chains:
                feed[_PREV] = outs[0]


def _dot_flags_non_finite(size: int) -> bool:
    """Whether ``x.dot(x)`` is non-finite for every placement of NaN/+inf/-inf in a float32 vector of ``size``
    elements (checked at the start, middle and end, where SIMD kernels split their work)."""
    for bad in (np.nan, np.inf, -np.inf):
        for pos in {0, size // 2, size - 1}:
            probe = np.ones(size, dtype=np.float32)
            probe[pos] = bad
            if math.isfinite(probe.dot(probe)):
                return False
    return True


_RUN_ALL = RunAll()
