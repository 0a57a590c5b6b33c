"""Fleet profiles: the device fingerprint, profiles written to files, merged from many devices, chosen for.

Two "other devices" are this machine's profile with another device record and fingerprint: latencies
and memory as measured here, the identity of a different CPU (what a real device's file differs by).
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edge_runtime
from edge_runtime.bundle import MANIFEST_NAME, load_bundle, save_manifest
from edge_runtime.cli import main as runtime_main
from edge_runtime.cli.inspect import describe_bundle
from edge_runtime.device import cpu_facts, device_info, find_profile_key, fingerprint, legacy_fingerprint
from onnx_members import make_bundle
from profiles import (
    MeasureConfig,
    ProfileError,
    SelectionError,
    find_profile,
    merge_profiles,
    profile_bundle,
    read_profile_file,
    select,
    store_profile,
    write_profile_file,
)
from profiles.cli import main

FAST = MeasureConfig(min_queries=20, min_seconds=0.0, warmup_queries=2, batch=2, pool=4, memory_probe=False)
FAST_FLAGS = ["--min-queries", "20", "--min-seconds", "0", "--warmup", "2", "--batch", "2", "--no-memory-probe"]

X86_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8480+
stepping\t: 8
flags\t\t: fpu sse4_1 sse4_2 avx avx2 fma avx512f avx512bw avx512vl avx512_vnni amx_tile amx_int8 amx_bf16 hypervisor md_clear

processor\t: 1
vendor_id\t: GenuineIntel
"""

ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp sve i8mm bf16
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x1
CPU part\t: 0xd40
CPU revision\t: 1
"""


# -- the fingerprint ---------------------------------------------------------------------------------------


def test_cpu_facts_read_x86_identity_and_only_the_kernel_choosing_flags() -> None:
    facts = cpu_facts(X86_CPUINFO)
    assert facts == {
        "cpu_vendor": "GenuineIntel",
        "cpu_model": "Intel(R) Xeon(R) Platinum 8480+",
        "cpu_family": "6",
        "cpu_model_number": "143",
        "cpu_stepping": "8",
        "isa": sorted(
            [
                "sse4_1",
                "sse4_2",
                "avx",
                "avx2",
                "fma",
                "avx512f",
                "avx512bw",
                "avx512vl",
                "avx512_vnni",
                "amx_tile",
                "amx_int8",
                "amx_bf16",
            ]
        ),
    }  # "hypervisor", "md_clear" and the like are left out: a kernel update may add or rename them


def test_cpu_facts_read_arm_identity() -> None:
    facts = cpu_facts(ARM_CPUINFO)
    assert (facts["cpu_vendor"], facts["cpu_family"], facts["cpu_model_number"], facts["cpu_stepping"]) == (
        "0x41",
        "8",
        "0xd40",
        "0x1/1",
    )
    assert facts["isa"] == ["asimd", "asimddp", "asimdhp", "bf16", "i8mm", "sve"]


def test_fingerprint_survives_a_kernel_update_and_other_noise() -> None:
    info = dict(device_info())
    key = fingerprint(info)
    assert re.fullmatch(r"v2-[0-9a-f]{16}", key) and key == fingerprint()  # this machine's, stable across calls
    for field, value in {"os": "Linux 9.9.9-patched", "python": "3.99.0", "memory_total_mb": 1, "cpu_affinity": [0]}.items():
        assert fingerprint({**info, field: value}) == key, field
    # the old scheme hashed the kernel release: a patch update gave the device a new key
    assert legacy_fingerprint({**info, "os": "Linux 9.9.9-patched"}) != legacy_fingerprint(info)


@pytest.mark.parametrize(
    "field, value",
    [
        ("cpu_vendor", "GenuineIntel"),
        ("cpu_model", "Other CPU"),
        ("cpu_family", "25"),
        ("cpu_model_number", "17"),
        ("cpu_stepping", "0"),
        ("isa", ["avx2"]),
        ("logical_cores", 64),
        ("physical_cores", 32),
        ("machine", "aarch64"),
        ("system", "Windows"),
        ("onnxruntime", "1.0.0"),
    ],
)
def test_fingerprint_tells_machines_apart(field: str, value: Any) -> None:
    info = dict(device_info())
    assert fingerprint({**info, field: value}) != fingerprint(info)


# -- profiles under the old fingerprint --------------------------------------------------------------------


def test_profile_under_the_old_fingerprint_is_still_used_then_replaced(tiny_bundle: Path) -> None:
    profile = profile_bundle(tiny_bundle, FAST)
    old_key = legacy_fingerprint()
    old = {
        **profile,
        "fingerprint": old_key,
        "device": {k: v for k, v in profile["device"].items() if k not in ("isa", "system")},
    }
    manifest = load_bundle(tiny_bundle).manifest
    save_manifest(tiny_bundle, replace(manifest, profiles={old_key: old}))  # as an earlier release stored it

    assert find_profile_key(load_bundle(tiny_bundle).manifest.profiles) == old_key
    assert find_profile(tiny_bundle) == old
    runtime = edge_runtime.load(tiny_bundle, warmup=0)
    assert runtime._profile_latencies("p99") == [m["latency_ms"]["p99"] for m in old["members"]]
    described = describe_bundle(str(tiny_bundle))["profiles"][old_key]
    assert described["this_device"] and described["old_fingerprint"]

    store_profile(tiny_bundle, profile)  # profiling again on this device
    assert set(load_bundle(tiny_bundle).manifest.profiles) == {fingerprint()}


# -- --out, merge, inspect, select --device -----------------------------------------------------------------


def _other_device(profile: dict[str, Any], model: str, isa: list[str], cores: int, slower: float) -> dict[str, Any]:
    """``profile`` as if measured on another CPU: its device record and fingerprint, latencies scaled."""
    device = {**profile["device"], "cpu_model": model, "isa": isa, "logical_cores": cores, "physical_cores": cores}
    out = json.loads(json.dumps(profile))
    out["device"], out["fingerprint"] = device, fingerprint(device)
    for row in out["members"] + out["prefixes"]:
        row["latency_ms"] = {q: v * slower if isinstance(v, float) else v for q, v in row["latency_ms"].items()}
    return out


def test_profile_out_writes_a_file_and_leaves_the_bundle(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (tiny_bundle / MANIFEST_NAME).read_bytes()
    out = tmp_path / "device.json"
    assert main(["profile", str(tiny_bundle), *FAST_FLAGS, "--out", str(out)]) == 0
    assert (tiny_bundle / MANIFEST_NAME).read_bytes() == before
    written = read_profile_file(out)
    assert written["fingerprint"] == fingerprint() and [m["name"] for m in written["members"]] == [
        "member_1",
        "member_2",
        "member_3",
    ]
    manifest = load_bundle(tiny_bundle).manifest
    assert written["bundle"]["members"] == [{"name": m.name, "sha256": m.sha256} for m in manifest.members]
    assert "profile merge" in capsys.readouterr().out


def test_profile_out_takes_one_bundle(tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["profile", str(tiny_bundle), str(tiny_bundle), "--out", str(tmp_path / "d.json")])
    assert exited.value.code == 2 and "exactly one BUNDLE" in capsys.readouterr().err
    assert not (tmp_path / "d.json").exists()


def test_merge_two_devices_then_inspect_and_select_for_each(
    calibrated_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    here = profile_bundle(calibrated_bundle, FAST)
    manifest = load_bundle(calibrated_bundle).manifest
    fast = _other_device(here, "Intel Xeon 8480+", ["amx_tile", "avx2", "avx512_vnni", "avx512f"], 8, slower=1.0)
    slow = _other_device(here, "Intel Atom x6425E", ["sse4_2"], 4, slower=50.0)
    files = [
        write_profile_file(tmp_path / "xeon.json", fast, manifest),
        write_profile_file(tmp_path / "atom.json", slow, manifest),
    ]

    assert main(["profile", "merge", str(calibrated_bundle), *map(str, files)]) == 0
    assert "merged 2 profile(s)" in capsys.readouterr().out
    profiles = load_bundle(calibrated_bundle).manifest.profiles
    assert set(profiles) == {fast["fingerprint"], slow["fingerprint"]}
    assert "bundle" not in profiles[fast["fingerprint"]]  # the file's bundle record is not stored
    assert find_profile(calibrated_bundle, slow["fingerprint"])["members"] == slow["members"]
    assert find_profile(calibrated_bundle) is None  # neither is this machine

    listed = describe_bundle(str(calibrated_bundle))["profiles"]
    assert set(listed) == set(profiles) and not any(p["this_device"] or p["old_fingerprint"] for p in listed.values())
    assert "Intel Atom x6425E" in listed[slow["fingerprint"]]["cpu"]
    assert runtime_main(["inspect", str(calibrated_bundle)]) == 0
    text = capsys.readouterr().out
    assert f"profile  {slow['fingerprint']}: Intel Atom x6425E" in text

    # select for each device from its merged profile: nothing measured, nothing stored here
    x = np.random.default_rng(2).normal(size=(60, 1, 4, 4)).astype(np.float32)
    y = edge_runtime.load(calibrated_bundle, entropy_threshold="off", warmup=0).evaluate_prefixes(x).labels[-1]
    # the slow device's first member fits the budget, its three do not; on the fast device everything fits
    budget = slow["prefixes"][0]["latency_ms"]["p90"] * 1.01
    on_fast = select([calibrated_bundle], x, y, budget_ms=budget, device=fast["fingerprint"], budget_runs="auto")
    on_slow = select([calibrated_bundle], x, y, budget_ms=budget, device=slow["fingerprint"], budget_runs="auto")
    assert on_fast.fingerprint == fast["fingerprint"] and on_slow.fingerprint == slow["fingerprint"]
    prefix3 = {c.name: c for c in on_slow.candidates}["tiny[1..3]"]
    assert prefix3.latency_ms["p90"] == pytest.approx(slow["prefixes"][2]["latency_ms"]["p90"])
    assert not any(c.kind == "budget" for c in on_fast.candidates) and any("budget runs skipped" in n for n in on_fast.notes)
    assert on_fast.chosen.accuracy == 1.0  # the labels are the whole ensemble's answers
    assert on_slow.chosen.name != "tiny[1..3]" and on_slow.chosen.latency_ms["p90"] <= budget
    with pytest.raises(SelectionError, match="no candidate fits"):  # 50x slower: nothing fits a tenth of it there
        select([calibrated_bundle], x, y, budget_ms=budget / 10, device=slow["fingerprint"])
    assert set(load_bundle(calibrated_bundle).manifest.profiles) == set(profiles)


def test_select_for_a_device_without_a_profile_names_the_fix(calibrated_bundle: Path, tmp_path: Path) -> None:
    x = np.zeros((4, 1, 4, 4), np.float32)
    with pytest.raises(SelectionError, match="no profile for device v2-0000000000000000; on that device run"):
        select([calibrated_bundle], x, np.zeros(4, np.int64), device="v2-0000000000000000")


def test_merge_refuses_another_build_and_writes_nothing(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "a", num_members=2)
    rebuilt = make_bundle(tmp_path / "b", num_members=2, hidden=8)  # same member names, other weights
    file = write_profile_file(tmp_path / "b.json", profile_bundle(rebuilt, FAST), load_bundle(rebuilt).manifest)
    good = write_profile_file(
        tmp_path / "a.json", _other_device(profile_bundle(bundle, FAST), "X", [], 2, 1.0), load_bundle(bundle).manifest
    )
    before = (bundle / MANIFEST_NAME).read_bytes()
    with pytest.raises(ProfileError, match="other member files than this bundle's"):
        merge_profiles(bundle, {str(good): read_profile_file(good), str(file): read_profile_file(file)})
    assert (bundle / MANIFEST_NAME).read_bytes() == before  # all or nothing


def test_merge_errors_are_one_line(tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "junk.json").write_text("{not json")
    assert main(["profile", "merge", str(tiny_bundle), str(tmp_path / "junk.json")]) == 1
    err = capsys.readouterr().err.strip()
    assert "is not JSON" in err and "\n" not in err
    twice = write_profile_file(tmp_path / "d.json", profile_bundle(tiny_bundle, FAST), load_bundle(tiny_bundle).manifest)
    (tmp_path / "copy.json").write_bytes(twice.read_bytes())
    assert main(["profile", "merge", str(tiny_bundle), str(twice), str(tmp_path / "copy.json")]) == 1
    assert "both profile device" in capsys.readouterr().err


@pytest.fixture
def calibrated_bundle(tmp_path: Path) -> Path:
    return make_bundle(tmp_path / "calibrated", num_members=3, calibration=0.6, scales=[1.0, 2.0, 3.0])
