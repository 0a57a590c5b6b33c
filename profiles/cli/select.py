"""``anytime-edge select``: choose what to deploy from validation accuracy and on-device latency/memory."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edge_runtime.cli.flags import add_budget_ms, add_threads
from edge_runtime.session import SessionConfig
from profiles.errors import SelectionError
from profiles.inputs import load_npz
from profiles.measure import MeasureConfig
from profiles.report import format_table
from profiles.select import BUDGET_QUANTILES, Selection, plot_selection, select

HELP = "choose what to deploy from measured accuracy, latency and memory"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundles", nargs="+", metavar="CANDIDATES", help="bundle directories or .zip bundles")
    parser.add_argument("--data", type=Path, required=True, help="validation .npz with inputs 'x' and labels 'y'")
    add_budget_ms(parser, what="latency budget per query (see --quantile)")
    parser.add_argument(
        "--quantile", choices=BUDGET_QUANTILES, default="p90", help="latency quantile that must fit the budget (default p90)"
    )
    parser.add_argument("--memory-mb", type=float, help="cap on the serving process's peak RSS, MiB")
    parser.add_argument("--plot", type=Path, help="write accuracy vs p50 latency, front marked, to this PNG")
    add_threads(parser)
    parser.add_argument("--min-queries", type=int, default=1024, help="when a bundle has no profile here: queries to time")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="when a bundle has no profile here: seconds to time")
    parser.add_argument(
        "--budget-runs",
        default="auto",
        metavar="auto|none|B[,B...]",
        help="run each anytime bundle on the validation data under these latency budgets (ms), one request at a time; "
        "'auto' (default): one budget between each pair of consecutive prefixes' p99",
    )
    parser.add_argument("--no-store", action="store_true", help="do not store profiles measured now in the bundles")
    parser.add_argument(
        "--device",
        metavar="FINGERPRINT",
        help="choose for this device (its profile merged into every bundle, see `inspect`) instead of "
        "this machine; nothing is measured and budget runs are skipped",
    )
    parser.add_argument("--json", action="store_true", help="print the selection as JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    try:
        session = SessionConfig(intra_op_threads=args.threads)
    except ValueError as exc:
        raise SelectionError(f"{exc}; fix --threads") from exc
    budget_runs = _budget_runs(args.budget_runs)
    data = load_npz(args.data, ("x", "y"))
    measure = MeasureConfig(min_queries=args.min_queries, min_seconds=args.min_seconds, session=session)
    selection = select(
        args.bundles,
        data["x"],
        data["y"],
        budget_ms=args.budget_ms,
        memory_mb=args.memory_mb,
        quantile=args.quantile,
        session_config=session,
        measure=measure,
        store=not args.no_store,
        budget_runs=budget_runs,
        device=args.device,
    )
    plot_note = plot_selection(selection, args.plot) if args.plot else None
    if args.json:
        out = selection.to_dict()
        out["plot"] = None if plot_note or not args.plot else str(args.plot)
        json.dump(out, sys.stdout, indent=2)
        print()
    else:
        print(_table(selection))
        if args.plot and not plot_note:
            print(f"plot: {args.plot}")
    if plot_note:
        print(plot_note, file=sys.stderr)
    return 0


def _budget_runs(text: str) -> str | list[float]:
    if text in ("auto", "none"):
        return "auto" if text == "auto" else []
    try:
        return [float(b) for b in text.split(",")]
    except ValueError:
        raise SelectionError(f"--budget-runs '{text}' is not 'auto', 'none' or comma-separated ms values") from None


def _table(selection: Selection) -> str:
    q = selection.budget_quantile
    rows = []
    for c in selection.candidates:
        mark = "<- chosen" if c is selection.chosen else ""
        rows.append(
            [
                c.name,
                c.kind,
                c.mean_members,
                c.accuracy,
                c.latency_ms["p50"],
                c.latency_ms[q] if q != "p50" else None,
                c.latency_ms["p99"],
                c.memory_mb,
                c.size_bytes / 1024,
                "*" if c.pareto else "",
                mark,
            ]
        )
    headers = ["candidate", "kind", "members", "accuracy", "p50 ms", f"{q} ms", "p99 ms", "MiB", "KiB", "front", ""]
    budget = "none" if selection.budget_ms is None else f"{selection.budget_ms} ms at {q}"
    memory = "none" if selection.memory_mb is None else f"{selection.memory_mb} MiB"
    lines = [
        f"device {selection.fingerprint}; latency from that device's profiles (batch 1, single stream; budget and "
        "threshold rows: each sample's exit prefix); "
        f"budget {budget}; memory cap {memory}",
        "",
        format_table(headers, rows),
        "",
        f"chosen: {selection.chosen.name} (accuracy {selection.chosen.accuracy:.4f}, "
        f"p50 {selection.chosen.latency_ms['p50']:.4g} ms, {selection.chosen.memory_mb:.1f} MiB)",
        *selection.notes,
    ]
    return "\n".join(lines)
