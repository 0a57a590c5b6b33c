"""``anytime-edge profile``: measure bundles and ONNX models on this device, store the profile in bundles.

``profile BUNDLE --out device.json`` writes the profile to a file instead (a device that cannot write into
the bundle); ``profile merge BUNDLE device*.json`` merges such files from many devices into the bundle, one
profile per device fingerprint (see :mod:`profiles.fleet`). A bundle directory named ``merge`` is given
as ``./merge``.
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from pathlib import Path

from edge_runtime.bundle import load_bundle
from edge_runtime.cli.flags import add_load_timeout, add_threads
from edge_runtime.session import SessionConfig
from profiles.errors import MeasurementError
from profiles.fleet import merge_profiles, read_profile_file, write_profile_file
from profiles.inputs import load_npz
from profiles.measure import MeasureConfig, profile_bundle, profile_onnx
from profiles.report import profile_table
from profiles.store import store_profile

HELP = "measure latency and memory of bundles/ONNX models on this device, or merge other devices' profiles"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="BUNDLE_OR_ONNX",
        help="bundle directories, .zip bundles or .onnx files; or: merge BUNDLE PROFILE.json...",
    )
    add_threads(parser)
    parser.add_argument("--spinning", action="store_true", help="let idle ORT threads spin (default off)")
    parser.add_argument("--batch", type=int, default=8, help="batch size timed beside batch 1 (default 8)")
    parser.add_argument("--min-queries", type=int, default=1024, help="timed queries per batch size at least (default 1024)")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="seconds per batch size at least (default 1)")
    parser.add_argument("--warmup", type=int, default=64, help="untimed warm-up queries (default 64)")
    parser.add_argument("--data", type=Path, help="an .npz with inputs 'x' (default: random inputs of the task's shape)")
    parser.add_argument(
        "--no-memory-probe",
        action="store_true",
        help="measure memory in this process instead of a fresh runtime process (faster, less exact)",
    )
    parser.add_argument("--json", action="store_true", help="print the profiles as JSON instead of tables")
    parser.add_argument("--no-store", action="store_true", help="do not write the profile into the bundles")
    parser.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help="write the profile of the one BUNDLE to FILE (JSON) instead of into the bundle; "
        "merge files from many devices with `profile merge BUNDLE FILE...`",
    )
    add_load_timeout(parser)
    parser.set_defaults(_parser=parser)


def run(args: argparse.Namespace) -> int:
    if args.paths[0] == "merge":
        return _merge(args)
    if args.out is not None and (len(args.paths) != 1 or args.no_store):
        args._parser.error("--out takes exactly one BUNDLE (and writes nothing into it; drop --no-store)")
    try:
        session = SessionConfig(intra_op_threads=args.threads, allow_spinning=args.spinning, load_timeout_s=args.load_timeout)
    except ValueError as exc:
        raise MeasurementError(f"{exc}; fix --threads") from exc
    config = MeasureConfig(
        min_queries=args.min_queries,
        min_seconds=args.min_seconds,
        warmup_queries=args.warmup,
        batch=args.batch,
        session=session,
        memory_probe=not args.no_memory_probe,
    )
    data = load_npz(args.data)["x"] if args.data else None
    label = str(args.data) if args.data else ""
    results = []
    for path in args.paths:
        target = Path(path)
        if target.is_file() and not zipfile.is_zipfile(target):
            if args.out is not None:
                args._parser.error(f"--out writes a bundle's profile; {target} is a plain ONNX file (see --json)")
            profile = profile_onnx(target, config, data, label)
            stored = "not stored (plain ONNX file, not a bundle)"
        else:
            profile = profile_bundle(target, config, data, label)
            if args.out is not None:
                write_profile_file(args.out, profile, load_bundle(target).manifest)
                stored = f"written to {args.out} (fingerprint {profile['fingerprint']}); merge it with `profile merge {target} {args.out}`"
            elif args.no_store:
                stored = "not stored (--no-store)"
            else:
                store_profile(target, profile)
                stored = f"stored in {target} under fingerprint {profile['fingerprint']}"
        results.append(profile)
        if not args.json:
            print(profile_table(profile))
            print(stored)
            print()
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()
    return 0


def _merge(args: argparse.Namespace) -> int:
    """``profile merge BUNDLE FILE...``: store the profiles of other devices in BUNDLE."""
    if len(args.paths) < 3:
        args._parser.error("usage: profile merge BUNDLE PROFILE.json [PROFILE.json ...]")
    bundle, files = args.paths[1], args.paths[2:]
    profiles = {name: read_profile_file(name) for name in files}
    manifest = merge_profiles(bundle, profiles)
    keys = [str(p["fingerprint"]) for p in profiles.values()]
    print(
        f"merged {len(files)} profile(s) into {bundle}: {', '.join(keys)}; the bundle now holds "
        f"{len(manifest.profiles)} device profile(s) (see `anytime-edge inspect {bundle}`)"
    )
    return 0
