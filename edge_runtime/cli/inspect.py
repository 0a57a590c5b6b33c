"""``anytime-edge inspect BUNDLE``: what a bundle holds, after verifying it.

Shows the task, each member (file size, parameters, outputs, connections), the calibrated threshold and
its trade-off, and the latency profiles per device (marking this device's). ``--check`` also builds the
ONNX Runtime sessions and warms them up, proving the members load here.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from edge_runtime.cli.flags import DEFAULT_LOAD_TIMEOUT_S, add_load_timeout

__all__ = ["HELP", "configure", "describe_bundle", "run"]

HELP = "show a bundle's task, members, threshold and profiles"


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``inspect`` arguments."""
    parser.add_argument("bundle", help="bundle directory or .zip")
    parser.add_argument("--check", action="store_true", help="also load every member in ONNX Runtime")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_load_timeout(parser)


def describe_bundle(path: str, check: bool = False, load_timeout_s: float | None = DEFAULT_LOAD_TIMEOUT_S) -> dict[str, Any]:
    """A JSON-ready description of the bundle at ``path`` (checksums verified).

    ``load_timeout_s`` bounds each member's first warm-up run under ``check`` (None: no limit).

    Raises:
        BundleError: the bundle cannot be read or verified (or, with ``check``, loaded by ORT).
    """
    from edge_runtime.bundle import load_bundle
    from edge_runtime.device import FINGERPRINT_PREFIX, find_profile_key, fingerprint

    bundle = load_bundle(path)
    m = bundle.manifest
    here = fingerprint()
    here_key = find_profile_key(m.profiles)  # this device's profile: its fingerprint, else its old-scheme key
    members = []
    for spec, blob in zip(m.members, bundle.member_bytes):
        members.append(
            {
                "name": spec.name,
                "file": spec.file,
                "size_bytes": len(blob),
                "params": spec.params,
                "outputs": list(spec.outputs),
                "connections": [
                    {"input": c.input, "from": m.members[c.member].name, "output": c.output} for c in spec.connections
                ],
                "info": dict(spec.info),
            }
        )
    profiles = {}
    for key, profile in m.profiles.items():
        rows = {row.get("name"): row.get("latency_ms", {}) for row in profile.get("members", ())}
        stored = profile.get("device")
        device: dict[str, Any] = stored if isinstance(stored, dict) else {}
        profiles[key] = {
            "this_device": key == here_key,
            "old_fingerprint": not key.startswith(FINGERPRINT_PREFIX),  # stored before the v2- scheme
            "cpu_model": device.get("cpu_model"),
            "cpu": _cpu_summary(device),
            "onnxruntime": device.get("onnxruntime"),
            "created_utc": profile.get("created_utc"),
            "members": {
                name: {q: rows.get(name, {}).get(q) for q in ("p50", "p90", "p99")} for name in (s.name for s in m.members)
            },
        }
    out: dict[str, Any] = {
        "name": m.name,
        "source": str(bundle.source),
        "version": m.version,
        "task": {
            "labels": list(m.task.labels),
            "input": {"name": m.task.input.name, "shape": list(m.task.input.shape), "dtype": m.task.input.dtype},
            "preprocess": m.task.preprocess.to_dict(),
            "member_input_shape": list(m.task.model_input_shape),
        },
        "combine": m.combine,
        "members": members,
        "size_bytes": sum(len(b) for b in bundle.member_bytes),
        "calibration": None
        if m.calibration is None
        else {
            "entropy_threshold": m.calibration.entropy_threshold,
            "target": m.calibration.target,
            "accuracy": m.calibration.accuracy,
            "mean_members": m.calibration.mean_members,
            "curve_points": len(m.calibration.curve),
        },
        "quantization": None if m.quantization is None else {**m.quantization.to_dict(), "describe": m.quantization.describe()},
        "this_device": here,
        "profiles": profiles,
        "metadata": dict(m.metadata),
    }
    if check:
        from edge_runtime.ensemble import AnytimeRuntime
        from edge_runtime.session import SessionConfig

        runtime = AnytimeRuntime(bundle, SessionConfig(load_timeout_s=load_timeout_s), warmup=2)
        out["check"] = {"loaded": True, "session_config": runtime.session_config.describe()}
    return out


def run(args: argparse.Namespace) -> int:
    """Print the description as text or JSON."""
    d = describe_bundle(args.bundle, check=args.check, load_timeout_s=args.load_timeout)
    if args.json:
        sys.stdout.write(json.dumps(d, indent=2) + "\n")
        return 0
    task = d["task"]
    labels = task["labels"]
    shown = ", ".join(labels[:10]) + (f", ... ({len(labels)} classes)" if len(labels) > 10 else "")
    lines = [
        f"bundle   {d['name']}  ({d['source']}, manifest v{d['version']}, {d['size_bytes'] / 1024:.1f} KiB)",
        f"task     input {task['input']['name']} {task['input']['shape']} {task['input']['dtype']}, "
        f"preprocess {_describe_preprocess(task['preprocess'], task['member_input_shape'])}; labels: {shown}",
        f"members  {len(d['members'])}, logits combined by {d['combine']}",
    ]
    for k, mem in enumerate(d["members"], 1):
        conns = ", ".join(f"{c['input']}<-{c['from']}.{c['output']}" for c in mem["connections"]) or "-"
        lines.append(
            f"  {k}. {mem['name']:<16} {mem['size_bytes'] / 1024:8.1f} KiB  {mem['params']:>9,d} params  connections: {conns}"
        )
    if d["quantization"] is not None:
        q = d["quantization"]
        lines.append(f"int8     {q['describe']}; from '{q['source'].get('name', '?')}' with {q['tool']}")
    cal = d["calibration"]
    if cal is None:
        lines.append("calibration  none (no entropy exit by default; run `calibrate`)")
    else:
        lines.append(
            f"calibration  entropy <= {cal['entropy_threshold']:.4f}: accuracy {100 * cal['accuracy']:.2f}%, "
            f"mean members {cal['mean_members']:.2f} ({cal['target']})"
        )
    if not d["profiles"]:
        lines.append(f"profiles none (this device {d['this_device']}: budgets use observed latencies)")
    for key, prof in d["profiles"].items():
        mark = (" (this device)" if prof["this_device"] else "") + (" (old fingerprint)" if prof["old_fingerprint"] else "")
        lines.append(
            f"profile  {key}{mark}: {prof['cpu'] or 'unknown CPU'}, ORT {prof['onnxruntime'] or '?'}, {prof['created_utc'] or ''}"
        )
        for name, q in prof["members"].items():
            lines.append(f"  {name:<16} " + "  ".join(f"{k} {_ms(v)}" for k, v in q.items()))
    if "check" in d:
        lines.append(f"check    every member loads in ONNX Runtime ({d['check']['session_config']})")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _cpu_summary(device: dict[str, Any]) -> str:
    """``"AMD EPYC (AuthenticAMD 26/2/1), 2 cores, avx2 avx512f ..."`` from a profile's device record."""
    if not device.get("cpu_model"):
        return ""
    ids = "/".join(str(device[k]) for k in ("cpu_family", "cpu_model_number", "cpu_stepping") if device.get(k))
    vendor = " ".join(x for x in (str(device.get("cpu_vendor") or ""), ids) if x)
    isa = " ".join(device.get("isa") or ())
    parts = [f"{device['cpu_model']}" + (f" ({vendor})" if vendor else ""), f"{device.get('logical_cores', '?')} logical cores"]
    return ", ".join(parts + ([isa] if isa else []))


def _ms(value: Any) -> str:
    return f"{float(value):.3f} ms" if isinstance(value, (int, float)) else "-"


def _describe_preprocess(pre: dict[str, Any], member_shape: list[int]) -> str:
    """``x*s+o`` for scalars; per-channel vectors summarised by their length and range."""

    def value(v: Any) -> str:
        if isinstance(v, list):
            return f"[{len(v)} values, {min(v):g}..{max(v):g}]"
        return f"{v:g}"

    text = f"x*{value(pre['scale'])}+{value(pre['offset'])}"
    if pre.get("layout"):
        text = f"{pre['layout']} -> members {member_shape}, then {text}"
    return text
