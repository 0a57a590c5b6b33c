"""Plain-text tables for the command line: the one table formatter (:func:`format_table`) and profiles."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

__all__ = ["format_table", "profile_table"]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned first column, right-aligned others, widths fitted to the content."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths))).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == 0:
            return "0"
        return f"{value:.4f}" if abs(value) < 1 else f"{value:.2f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def profile_table(profile: Mapping[str, Any]) -> str:
    """One profile as text: the device and settings, then one row per member and per prefix."""
    device = profile["device"]
    settings = profile["settings"]
    memory = profile["memory_mb"]
    conditions = profile["conditions"]
    batches = profile["measurement"]["batch_sizes"]
    big = str(max(batches))
    lines = [
        f"{profile['name']}: {device['cpu_model']}, {device['logical_cores']} logical cores, {device['os']}, "
        f"onnxruntime {device['onnxruntime']} (fingerprint {profile['fingerprint']})",
        f"settings: intra-op threads {settings['intra_op_threads']}, {settings['execution_mode']}, "
        f"spinning {'on' if settings['allow_spinning'] else 'off'}, affinity {settings['cpu_affinity']}; "
        f"inputs {profile['measurement']['inputs']}",
        f"conditions: machine CPU {conditions['cpu_percent_system']}%, this process {conditions['cpu_percent_process']}%, "
        f"load average {conditions['load_average']}",
        f"memory MiB ({memory['method']}): RSS before load {memory['process_baseline']}, after load "
        f"{memory['rss_after_load']}, peak while running {memory['run']['kernel_peak_mb']} (kernel, "
        f"{memory['run']['kernel_peak_scope']}) / {memory['run']['rss_sampled_peak_mb']} (sampled); "
        f"model files {profile['model_size_bytes'] / 1024:.1f} KiB",
        "",
    ]
    headers = ["member", "given", "create", "first", "min", "p50", "p90", "p95", "p99", "max", f"p50@b{big}", "KiB", "+RSS MiB"]
    rows = []
    for m in profile["members"]:
        lat = m["latency_ms"]
        rows.append(
            [
                m["name"],
                ",".join(m.get("conditional_on", ())) or "-",
                m["session_create_ms"],
                m["first_inference_ms"],
                lat["min"],
                lat["p50"],
                lat["p90"],
                lat["p95"],
                lat["p99"],
                lat["max"],
                m["batches"][big]["latency_ms"]["p50"],
                m["size_bytes"] / 1024,
                m["rss_load_delta_mb"],
            ]
        )
    lines.append(format_table(headers, rows))
    lines.append(
        "(ms; given: members whose outputs it takes, run just before it; create/first: session creation and "
        "first inference; min..max: batch 1)"
    )
    lines.append("")
    prefix_rows = []
    for p in profile["prefixes"]:
        lat = p["latency_ms"]
        prefix_rows.append(
            [
                f"members 1..{p['members']}",
                lat["p50"],
                lat["p90"],
                lat["p99"],
                p["batches"][big]["latency_ms"]["p50"],
                p["batches"][big]["throughput_per_s"],
            ]
        )
    lines.append(format_table(["prefix (ms, one pass)", "p50", "p90", "p99", f"p50@b{big}", f"items/s@b{big}"], prefix_rows))
    return "\n".join(lines)
