"""Choose what to deploy: accuracy on validation data against latency and memory measured on this device.

Candidates come from bundles. A one-member bundle (a single student) is one candidate; an ensemble of K
members gives K candidates, its prefixes 1..k (deploy the first k members), plus one more when the
bundle is calibrated: all K members with the calibrated entropy exit.

* Accuracy: every member is run on the validation set once (``AnytimeRuntime.evaluate_prefixes``); prefix
  k's accuracy is that of the answer after member k. The thresholded candidate's answer for a sample is
  the one after the first member whose entropy is at or below the threshold (the rule the runtime
  applies), which needs no second run.
* Latency: from the bundle's stored profile for this device (measured first, and stored, when there is
  none or it was measured with other session settings, e.g. thread count). Prefix k's percentiles are
  those of the single-stream one-pass time of members 1..k. For the
  thresholded candidate each validation sample costs the prefix it exits at; its quantile q is the q
  quantile over samples of their exit prefix's q latency (an estimate: it assumes exit depth and
  per-member latency are independent).
* Budget runs (``budget_runs``): the validation set goes through the runtime one request at a time under
  each latency budget (entropy exit off), with the budget policy predicting member latencies from this
  profile; each sample's depth is what the runtime really chose, and its latency, as for the threshold
  candidate, is its exit prefix's profiled latency. So every candidate, single or anytime, sits on one
  latency basis: the profiled single-stream time at batch 1 on this device (never wall time of a run).
  :func:`auto_budgets` picks budgets between consecutive prefixes' p99.
* Another device (``device``): the latencies and memory come from that device's stored profile (merged
  in with ``anytime-edge profile merge``); nothing is measured, and budget runs, which would run here,
  are skipped. Accuracy does not depend on the device.
* Memory: the estimated peak RSS of a process serving the candidate: a runtime process's RSS before
  loading (Python, numpy, ONNX Runtime), plus what each of its members added when its session was
  created, plus the growth seen while running the whole bundle (``profiles.store`` documents the fields;
  by default they are measured in a fresh process, so they compare across bundles).

The Pareto front keeps every candidate that no other beats on both accuracy (higher) and p50 latency
(lower). The choice is the most accurate candidate whose latency at the budget quantile (p90 by default,
MLPerf's single-stream metric) fits ``budget_ms`` and whose memory fits ``memory_mb``; ties go to the
faster, then the smaller.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edge_runtime.bundle import load_bundle
from edge_runtime.device import fingerprint
from edge_runtime.ensemble import AnytimeRuntime
from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.session import SessionConfig
from profiles.errors import SelectionError
from profiles.measure import MeasureConfig, profile_bundle
from profiles.plots import load_pyplot, save_figure
from profiles.store import find_profile, store_profile

__all__ = [
    "BUDGET_QUANTILES",
    "Candidate",
    "Selection",
    "auto_budgets",
    "choose",
    "evaluate_candidates",
    "pareto_front",
    "plot_selection",
    "select",
]

BUDGET_QUANTILES = ("p50", "p90", "p95", "p99")


@dataclass(frozen=True)
class Candidate:
    """One deployable choice and what it costs on this device."""

    name: str  # e.g. "ensemble[1..2]" or "ensemble@H<=0.31"
    bundle: str  # the bundle it comes from
    kind: str  # "prefix" (members 1..k, no early exit), "threshold" (all members, entropy exit) or "budget"
    members: int  # members loaded
    mean_members: float  # members evaluated per sample on average (= members for a prefix)
    threshold: float | None  # entropy exit threshold (nats) for kind "threshold"
    accuracy: float  # on the validation data
    latency_ms: Mapping[str, float]  # p50/p90/p95/p99 (see the module docstring)
    memory_mb: float  # estimated peak RSS of a process serving it
    size_bytes: int  # ONNX files of its members
    pareto: bool = False  # on the accuracy/p50 Pareto front
    budget_ms: float | None = None  # kind "budget": the latency budget the runtime ran under (ms per request)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Selection:
    """The outcome of :func:`select`."""

    candidates: tuple[Candidate, ...]  # all, Pareto flags set, in input order
    chosen: Candidate  # the best under the budget and cap
    budget_ms: float | None  # the latency budget, if any
    budget_quantile: str  # which latency quantile must fit the budget
    memory_mb: float | None  # the memory cap, if any
    fingerprint: str  # the device the latencies belong to
    notes: tuple[str, ...] = field(default_factory=tuple)  # e.g. which bundles were measured now

    def to_dict(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "budget_ms": self.budget_ms,
            "budget_quantile": self.budget_quantile,
            "memory_mb": self.memory_mb,
            "chosen": self.chosen.name,
            "front": [c.name for c in self.candidates if c.pareto],
            "candidates": [c.to_dict() for c in self.candidates],
            "notes": list(self.notes),
        }


def _check_labels(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != len(x) or len(y) == 0:
        raise SelectionError(f"validation y has shape {list(y.shape)} for {len(x)} inputs; give one integer label per row of x")
    if y.dtype.kind not in "iu":
        if y.dtype.kind != "f" or not np.all(np.equal(np.mod(y, 1), 0)):
            raise SelectionError(f"validation y has dtype {y.dtype}; give integer class ids")
        y = y.astype(np.int64)
    return y


def _latency_quantiles(profile: Mapping[str, Any], k: int) -> dict[str, float]:
    record = profile["prefixes"][k - 1]["latency_ms"]
    return {q: float(record[q]) for q in BUDGET_QUANTILES}


def _memory_mb(profile: Mapping[str, Any], k: int) -> float:
    memory = profile["memory_mb"]
    loaded = memory["process_baseline"] + sum(m["rss_load_delta_mb"] for m in profile["members"][:k])
    run_peak = memory["run"]["kernel_peak_mb"] or memory["run"]["rss_sampled_peak_mb"]
    growth = max(0.0, run_peak - memory["rss_after_load"])  # buffers allocated by running, whole bundle
    total: float = round(loaded + growth, 2)
    return total


def _exit_latency(profile: Mapping[str, Any], exit_at: np.ndarray) -> dict[str, float]:
    """Quantile q over samples of the q latency of the prefix each one exits at (``exit_at``: 0-based member)."""
    return {
        q: float(np.quantile([profile["prefixes"][e]["latency_ms"][q] for e in exit_at], float(q[1:]) / 100))
        for q in BUDGET_QUANTILES
    }


def auto_budgets(profile: Mapping[str, Any]) -> list[float]:
    """Budgets (ms) midway between consecutive prefixes' profiled p99: one per member after the first."""
    p99 = [float(p["latency_ms"]["p99"]) for p in profile["prefixes"]]
    return [round((a + b) / 2, 4) for a, b in zip(p99, p99[1:])]


def _bundle_candidates(
    path: str | os.PathLike[str],
    x: np.ndarray,
    y: np.ndarray,
    session_config: SessionConfig,
    measure: MeasureConfig,
    store: bool,
    notes: list[str],
    budget_runs: Sequence[float] | str = (),
    device: str | None = None,
) -> list[Candidate]:
    bundle = load_bundle(path)
    manifest = bundle.manifest
    if int(y.max()) >= manifest.task.num_classes or int(y.min()) < 0:
        raise SelectionError(
            f"validation labels run {int(y.min())}..{int(y.max())} but '{manifest.name}' has "
            f"{manifest.task.num_classes} classes; use validation data of this task"
        )
    profile = find_profile(manifest, device)
    wanted = session_config.describe()
    stale = profile is not None and any(profile["settings"].get(k) != v for k, v in wanted.items())
    if device is not None:
        _check_device_profile(path, device, profile, wanted)
    elif profile is None or stale:
        why = "its profile here used other session settings" if stale else "no profile for this device"
        profile = profile_bundle(bundle, replace(measure, session=session_config), data=x, data_label="validation x")
        if store:
            store_profile(path, profile)
            notes.append(f"{path}: {why}; measured now and stored")
        else:
            notes.append(f"{path}: {why}; measured now (not stored)")
    assert profile is not None  # _check_device_profile refuses a missing one; otherwise it was measured above
    try:
        # warmup=1: one pass bounded by session_config.load_timeout_s, so a member that never finishes is
        # refused in one line instead of hanging on the whole validation set.
        runtime = AnytimeRuntime(bundle, session_config, entropy_threshold="off", warmup=1)
        prefixes = runtime.evaluate_prefixes(x)
    except EdgeRuntimeError as exc:
        raise SelectionError(f"{path}: {exc}") from exc
    accuracy = prefixes.accuracy(y)
    sizes = [len(b) for b in bundle.member_bytes]
    label = manifest.name if manifest.name else Path(path).name
    count = manifest.num_members
    out = []
    for k in range(1, count + 1):
        out.append(
            Candidate(
                name=label if count == 1 else f"{label}[1..{k}]",
                bundle=str(path),
                kind="prefix",
                members=k,
                mean_members=float(k),
                threshold=None,
                accuracy=float(accuracy[k - 1]),
                latency_ms=_latency_quantiles(profile, k),
                memory_mb=_memory_mb(profile, k),
                size_bytes=int(sum(sizes[:k])),
            )
        )
    if manifest.calibration is not None and count > 1:
        threshold = manifest.calibration.entropy_threshold
        confident = prefixes.entropy[:-1] <= threshold  # (K-1, N): the last member always answers
        exit_at = np.where(confident.any(axis=0), confident.argmax(axis=0), count - 1)  # 0-based member
        answer = prefixes.labels[exit_at, np.arange(len(y))]
        latency = _exit_latency(profile, exit_at)
        out.append(
            Candidate(
                name=f"{label}@H<={threshold:.3g}",
                bundle=str(path),
                kind="threshold",
                members=count,
                mean_members=float(exit_at.mean() + 1),
                threshold=float(threshold),
                accuracy=float((answer == y).mean()),
                latency_ms=latency,
                memory_mb=_memory_mb(profile, count),
                size_bytes=int(sum(sizes)),
            )
        )
    budgets = auto_budgets(profile) if isinstance(budget_runs, str) else list(budget_runs)  # the one str: "auto" (checked)
    if device is not None and budgets:
        notes.append(f"{path}: budget runs skipped: they would run on this machine, not on device {device}")
        budgets = []
    if count > 1 and budgets:
        # The runtime's budget policy predicts member latencies from this profile (stored or not).
        profiled = bundle.with_manifest(replace(manifest, profiles={**manifest.profiles, fingerprint(): profile}))
        served = AnytimeRuntime(profiled, session_config, entropy_threshold="off")
        for budget in budgets:
            answers = [served.predict(row, budget_ms=budget)[0] for row in x]
            exit_at = np.array([a.members_used - 1 for a in answers])
            out.append(
                Candidate(
                    name=f"{label}@{budget:.4g}ms",
                    bundle=str(path),
                    kind="budget",
                    members=count,
                    mean_members=float(exit_at.mean() + 1),
                    threshold=None,
                    accuracy=float(np.mean([a.label == t for a, t in zip(answers, y)])),
                    latency_ms=_exit_latency(profile, exit_at),
                    memory_mb=_memory_mb(profile, count),
                    size_bytes=int(sum(sizes)),
                    budget_ms=float(budget),
                )
            )
    return out


def _check_device_profile(path: Any, device: str, profile: Mapping[str, Any] | None, wanted: Mapping[str, Any]) -> None:
    """Refuse a bundle without a usable profile of ``device``, or one measured with other session settings."""
    if profile is None:
        raise SelectionError(
            f"{path} has no profile for device {device}; on that device run `anytime-edge profile BUNDLE --out "
            f"device.json`, then `anytime-edge profile merge {path} device.json` here (`inspect` lists the devices)"
        )
    differ = {k: profile["settings"].get(k) for k, v in wanted.items() if profile["settings"].get(k) != v}
    if differ:
        raise SelectionError(
            f"{path}: device {device} was profiled with other session settings {differ}; select with those "
            "(e.g. --threads), or profile that device again with these"
        )


def evaluate_candidates(
    bundles: Sequence[str | os.PathLike[str]],
    x: np.ndarray,
    y: np.ndarray,
    session_config: SessionConfig | None = None,
    measure: MeasureConfig | None = None,
    store: bool = True,
    notes: list[str] | None = None,
    budget_runs: Sequence[float] | str = (),
    device: str | None = None,
) -> list[Candidate]:
    """Every candidate of ``bundles`` with its validation accuracy, latency and memory on this device.

    Args:
        bundles: bundle directories or ``.zip`` files.
        x: validation inputs (raw, as clients send them), rows of each bundle's task shape.
        y: integer labels, one per row of ``x``.
        session_config: ORT settings for measuring and evaluating (should match deployment).
        measure: how to measure a bundle that has no profile for this device.
        store: store such a new profile in its bundle.
        notes: if given, receives one line per bundle measured now.
        budget_runs: latency budgets (ms) to run each multi-member bundle under, one validation request at
            a time, or ``"auto"`` (:func:`auto_budgets` of its profile); each gives a "budget" candidate.
        device: another device's fingerprint: its stored profiles give latency and memory; nothing is
            measured and no budget run is made (None: this device).

    Raises:
        SelectionError: no bundles, bad labels, or data that does not fit a bundle's task.
        edge_runtime.errors.BundleError: a bundle cannot be loaded.
    """
    if not bundles:
        raise SelectionError("no candidates given; pass one or more bundle paths")
    y = _check_labels(np.asarray(x), y)
    if isinstance(budget_runs, str) and budget_runs != "auto":
        raise SelectionError(f"budget runs '{budget_runs}' is unknown; give budgets in ms or 'auto'")
    if not isinstance(budget_runs, str) and any(not (float(b) > 0) for b in budget_runs):
        raise SelectionError("every budget run needs a positive budget in ms")
    config = session_config or SessionConfig()
    measure = measure or MeasureConfig()
    notes = [] if notes is None else notes
    out: list[Candidate] = []
    for path in bundles:
        out.extend(_bundle_candidates(path, np.asarray(x), y, config, measure, store, notes, budget_runs, device))
    names = [c.name for c in out]
    if len(set(names)) != len(names):  # two bundles with the same manifest name: qualify by path
        out = [replace(c, name=f"{Path(c.bundle).name}:{c.name}") for c in out]
    return out


def pareto_front(candidates: Sequence[Candidate], quantile: str = "p50") -> list[Candidate]:
    """``candidates`` with ``pareto`` set on those no other beats on accuracy (up) and latency (down).

    Args:
        candidates: the candidates, in any order.
        quantile: the latency statistic compared (the selection's front uses p50).
    """
    flagged = []
    for c in candidates:
        dominated = any(
            o.accuracy >= c.accuracy
            and o.latency_ms[quantile] <= c.latency_ms[quantile]
            and (o.accuracy > c.accuracy or o.latency_ms[quantile] < c.latency_ms[quantile])
            for o in candidates
        )
        flagged.append(replace(c, pareto=not dominated))
    return flagged


def _check_request(budget_ms: float | None, memory_mb: float | None, quantile: str) -> None:
    if quantile not in BUDGET_QUANTILES:
        raise SelectionError(f"budget quantile '{quantile}' is unknown; use one of {list(BUDGET_QUANTILES)}")
    if budget_ms is not None and not budget_ms > 0:
        raise SelectionError("--budget-ms must be a positive number of milliseconds")
    if memory_mb is not None and not memory_mb > 0:
        raise SelectionError("--memory-mb must be a positive number of MiB")


def choose(
    candidates: Sequence[Candidate],
    budget_ms: float | None = None,
    memory_mb: float | None = None,
    quantile: str = "p90",
) -> Candidate:
    """The most accurate candidate within the budget and memory cap (ties: faster, then smaller).

    Raises:
        SelectionError: bad arguments, or nothing fits; the message names the fastest and smallest.
    """
    _check_request(budget_ms, memory_mb, quantile)
    if not candidates:
        raise SelectionError("no candidates to choose from; pass one or more bundle paths")
    fits = [
        c
        for c in candidates
        if (budget_ms is None or c.latency_ms[quantile] <= budget_ms) and (memory_mb is None or c.memory_mb <= memory_mb)
    ]
    if not fits:
        fastest = min(candidates, key=lambda c: c.latency_ms[quantile])
        smallest = min(candidates, key=lambda c: c.memory_mb)
        wanted = " and ".join(
            ([f"{quantile} <= {budget_ms} ms"] if budget_ms is not None else [])
            + ([f"memory <= {memory_mb} MiB"] if memory_mb is not None else [])
        )
        raise SelectionError(
            f"no candidate fits {wanted}: the fastest, "
            f"{fastest.name}, takes {fastest.latency_ms[quantile]:.4g} ms, the smallest, {smallest.name}, "
            f"{smallest.memory_mb:.1f} MiB; raise the budget or cap, or add smaller candidates"
        )
    return max(fits, key=lambda c: (c.accuracy, -c.latency_ms[quantile], -c.memory_mb))


def select(
    bundles: Sequence[str | os.PathLike[str]],
    x: np.ndarray,
    y: np.ndarray,
    budget_ms: float | None = None,
    memory_mb: float | None = None,
    quantile: str = "p90",
    session_config: SessionConfig | None = None,
    measure: MeasureConfig | None = None,
    store: bool = True,
    budget_runs: Sequence[float] | str = (),
    device: str | None = None,
) -> Selection:
    """Evaluate the candidates, mark the Pareto front and choose under the budget and cap.

    Args:
        bundles: bundle directories or ``.zip`` files.
        x: validation inputs; y: their integer labels.
        budget_ms: latency budget per query (ms) at ``quantile``, or None for none.
        memory_mb: memory cap (MiB of process RSS), or None for none.
        quantile: the latency quantile that must fit the budget (p50, p90, p95, p99).
        session_config: ORT settings (should match deployment).
        measure: how to measure a bundle without a profile for this device.
        store: store such new profiles in their bundles.
        budget_runs: budgets (ms) or ``"auto"``: see :func:`evaluate_candidates`.
        device: choose for the device with this fingerprint (its merged profiles) instead of this one.

    Raises:
        SelectionError: bad inputs, a bundle without that device's profile, or nothing fits.
    """
    _check_request(budget_ms, memory_mb, quantile)  # before minutes of measuring, not after
    notes: list[str] = []
    candidates = pareto_front(evaluate_candidates(bundles, x, y, session_config, measure, store, notes, budget_runs, device))
    chosen = choose(candidates, budget_ms, memory_mb, quantile)
    return Selection(tuple(candidates), chosen, budget_ms, quantile, memory_mb, device or fingerprint(), tuple(notes))


def plot_selection(selection: Selection, path: str | os.PathLike[str]) -> str | None:
    """Write a PNG of accuracy vs latency with the Pareto front, the budget and the choice marked.

    The latency axis is the statistic the budget is judged on (the selection's budget quantile when there
    is a budget, else p50), so the budget line and the points compare like for like; the front drawn is
    the front on that statistic. Labels are moved apart by adjustText, so close candidates stay legible.

    Returns:
        None when written, else a one-line reason (matplotlib or adjustText is not installed); the
        convention of every plot (:mod:`profiles.plots`).
    """
    plt, reason = load_pyplot("adjustText")
    if reason is not None:
        return reason
    from adjustText import adjust_text

    stat = selection.budget_quantile if selection.budget_ms is not None else "p50"
    cands = pareto_front(selection.candidates, stat)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    others = [c for c in cands if not c.pareto]
    front = sorted((c for c in cands if c.pareto), key=lambda c: c.latency_ms[stat])
    ax.scatter([c.latency_ms[stat] for c in others], [c.accuracy for c in others], c="0.6", label="candidate")
    ax.step([c.latency_ms[stat] for c in front], [c.accuracy for c in front], where="post", c="C0", lw=1)
    ax.scatter([c.latency_ms[stat] for c in front], [c.accuracy for c in front], c="C0", label=f"Pareto front ({stat})")
    chosen = selection.chosen
    ax.scatter(
        [chosen.latency_ms[stat]],
        [chosen.accuracy],
        s=160,
        facecolors="none",
        edgecolors="C3",
        lw=2,
        label=f"chosen: {chosen.name}",
    )
    labels: dict[tuple[float, float], list[str]] = {}
    for c in cands:  # candidates at the same point (e.g. a full prefix and its threshold) share one label
        labels.setdefault((c.latency_ms[stat], c.accuracy), []).append(c.name)
    texts = [ax.text(x, y, ", ".join(names), fontsize=7) for (x, y), names in labels.items()]
    if selection.budget_ms is not None:
        ax.axvline(selection.budget_ms, c="C3", ls="--", lw=1, label=f"budget {selection.budget_ms:g} ms ({stat})")
    ax.margins(0.1)  # room for labels at the edges
    ax.set_xlabel(f"{stat} latency per query, batch 1 (ms, profiled on this device)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"accuracy vs latency on device {selection.fingerprint}", fontsize=9)
    legend = ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    xs, ys = zip(*labels)
    adjust_text(
        texts,
        x=list(xs),
        y=list(ys),
        objects=[legend],
        ax=ax,  # labels stay off the points and the legend
        arrowprops={"arrowstyle": "-", "color": "0.5", "lw": 0.5},
    )
    save_figure(plt, fig, path)
    return None
