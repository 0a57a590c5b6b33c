"""Bundles as untrusted input (issue 15, bundle rows) and bundles as deployed (issue 17 items 1 and 2).

Each test is one row of the issue's table, built from a tiny bundle in-process (the shared cases in
../shared/cases/untrusted and ../shared/cases/deploy use the demo bundle; these are the same attacks).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edge_runtime
from edge_runtime.bundle import (
    MANIFEST_NAME,
    Bundle,
    Calibration,
    LoadLimits,
    Manifest,
    load_bundle,
    save_manifest,
    sha256_bytes,
    update_manifest,
)
from edge_runtime.calibrate import save_calibration
from edge_runtime.cli import main as runtime_main
from edge_runtime.errors import BundleError, ChecksumError, ManifestError, ModelLoadError
from edge_runtime.session import SessionConfig
from exporters.bundle import archive_bundle
from onnx_members import looping_member_graph, make_bundle, member_graph, set_member_bytes
from profiles.measure import QUANTILES
from profiles.store import store_profile

ROOT = Path(__file__).parents[1]


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / MANIFEST_NAME).read_text())


def _write_manifest(bundle: Path, data: dict) -> None:
    (bundle / MANIFEST_NAME).write_text(json.dumps(data))


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = runtime_main(list(argv))
    err = capsys.readouterr().err
    return code, err


def _one_line_error(code: int, err: str) -> str:
    assert code == 1
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# ---------------------------------------------------------------- members must be self-contained


def _external_member(location: str = "weights.bin") -> bytes:
    model = onnx.load_from_string(member_graph(0, (1, 4, 4), 3))
    for t in model.graph.initializer:
        if t.name == "w2":
            del t.external_data[:]
            for key, value in (("location", location), ("offset", "0"), ("length", str(16 * 3 * 4))):
                entry = t.external_data.add()
                entry.key, entry.value = key, value
            t.ClearField("raw_data")
            t.data_location = TensorProto.EXTERNAL
    return model.SerializeToString()


def test_member_with_external_data_is_refused_before_onnx_runtime_reads_the_cwd(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_member_bytes(tiny_bundle, 0, _external_member())
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "weights.bin").write_bytes(np.zeros(48, np.float32).tobytes())  # what ORT would have read
    monkeypatch.chdir(cwd)
    with pytest.raises(ModelLoadError, match=r"member_1.*external data.*self-contained"):
        load_bundle(tiny_bundle)
    (tiny_bundle / "weights.bin").write_bytes(np.zeros(48, np.float32).tobytes())  # inside the bundle: still no checksum
    with pytest.raises(ModelLoadError, match="external data"):
        edge_runtime.load(tiny_bundle)


def test_external_data_inside_a_subgraph_is_found(tiny_bundle: Path) -> None:
    """An external tensor in an ``If`` branch (a node attribute of a subgraph) is refused like an initializer."""
    model = onnx.load_from_string(member_graph(0, (1, 4, 4), 3))
    const = helper.make_tensor("hidden", TensorProto.FLOAT, [3], [0.0, 0.0, 0.0])
    const.ClearField("float_data")
    entry = const.external_data.add()
    entry.key, entry.value = "location", "/etc/passwd"
    const.data_location = TensorProto.EXTERNAL
    branch = helper.make_graph(
        [helper.make_node("Constant", [], ["b"], value=const)],
        "branch",
        [],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, [3])],
    )
    model.graph.initializer.append(numpy_helper.from_array(np.array(True), "cond"))
    model.graph.node.append(helper.make_node("If", ["cond"], ["unused"], then_branch=branch, else_branch=branch))
    set_member_bytes(tiny_bundle, 0, model.SerializeToString())
    with pytest.raises(ModelLoadError, match="'hidden'.*external data"):
        load_bundle(tiny_bundle)


# ---------------------------------------------------------------- every file resolves inside the bundle


def test_manifest_symlink_outside_the_bundle_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.move(str(tiny_bundle / MANIFEST_NAME), elsewhere / "real.json")
    (tiny_bundle / MANIFEST_NAME).symlink_to(elsewhere / "real.json")
    with pytest.raises(BundleError, match="resolves outside the bundle"):
        load_bundle(tiny_bundle)
    (tiny_bundle / MANIFEST_NAME).unlink()
    (tiny_bundle / MANIFEST_NAME).symlink_to("/etc/passwd")
    with pytest.raises(BundleError, match="resolves outside the bundle"):
        load_bundle(tiny_bundle)


def test_symlinks_inside_the_bundle_still_load(tiny_bundle: Path) -> None:
    shutil.move(str(tiny_bundle / MANIFEST_NAME), tiny_bundle / "real.json")
    (tiny_bundle / MANIFEST_NAME).symlink_to("real.json")
    assert load_bundle(tiny_bundle).manifest.num_members == 3


@pytest.mark.parametrize("name", ["../outside.onnx", "/etc/passwd", "a/../../x.onnx", "sub\\x.onnx", ""])
def test_member_paths_that_climb_out_are_refused(tiny_bundle: Path, name: str) -> None:
    data = _manifest(tiny_bundle)
    data["members"][0]["file"] = name
    _write_manifest(tiny_bundle, data)
    with pytest.raises(ManifestError, match="relative path inside the bundle"):
        load_bundle(tiny_bundle)


def test_a_fifo_is_not_read(tiny_bundle: Path) -> None:
    (tiny_bundle / "member_1.onnx").unlink()
    os.mkfifo(tiny_bundle / "member_1.onnx")  # reading it would block forever
    with pytest.raises(BundleError, match="not a regular file"):
        load_bundle(tiny_bundle)


# ---------------------------------------------------------------- a member that never finishes


def _loop_member(trip_count: int = 10**15) -> bytes:
    """Member 1 with ``logits += 0 * Loop(trip_count, identity body)``: valid ONNX that runs for ever
    (../shared/cases/untrusted/02)."""
    return looping_member_graph(0, (1, 4, 4), 3, trip_count)


def test_a_member_that_never_finishes_is_stopped_at_the_load_timeout(tiny_bundle: Path) -> None:
    set_member_bytes(tiny_bundle, 0, _loop_member())
    with pytest.raises(ModelLoadError, match=r"member 'member_1' did not finish .* within 0.3 s.*--load-timeout"):
        edge_runtime.load(tiny_bundle, session_config=SessionConfig(load_timeout_s=0.3), warmup=2)


def test_inspect_check_stops_a_looping_member_with_one_line(tiny_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    set_member_bytes(tiny_bundle, 0, _loop_member())
    line = _one_line_error(*_cli(capsys, "inspect", "--check", "--load-timeout", "0.3", str(tiny_bundle)))
    assert "member 'member_1' did not finish" in line


def test_a_short_loop_loads_within_the_timeout(tiny_bundle: Path) -> None:
    set_member_bytes(tiny_bundle, 0, _loop_member(trip_count=10))
    runtime = edge_runtime.load(tiny_bundle, session_config=SessionConfig(load_timeout_s=5.0), warmup=2)
    assert len(runtime.predict(np.zeros((2, 1, 4, 4), np.float32))) == 2


# ---------------------------------------------------------------- damaged archives


def _damaged_archives(bundle: Path, out: Path) -> dict[str, Path]:
    """The four kinds of damage of ../shared/cases/untrusted/04: bad CRC, broken central directory,
    encrypted flag, unknown compression method."""
    names = sorted(os.listdir(bundle))
    names = [n for n in names if not n.startswith(".")]
    stored = out / "stored.zip"
    with zipfile.ZipFile(stored, "w", zipfile.ZIP_STORED) as z:
        for n in names:
            z.write(bundle / n, n)
    b = bytearray(stored.read_bytes())
    m1 = (bundle / "member_1.onnx").read_bytes()
    b[b.find(m1[:64]) + 200] ^= 0xFF
    paths = {"bad_crc": out / "bad_crc.zip"}
    paths["bad_crc"].write_bytes(bytes(b))
    ok = out / "ok.zip"
    with zipfile.ZipFile(ok, "w", zipfile.ZIP_DEFLATED) as z:
        for n in names:
            z.write(bundle / n, n)
    raw = ok.read_bytes()
    cd = raw.rfind(b"PK\x01\x02")
    paths["broken_central_directory"] = out / "broken_central_directory.zip"
    paths["broken_central_directory"].write_bytes(raw[: cd + 20] + raw[raw.rfind(b"PK\x05\x06") :])

    def patch(local: int, central: int, value: int, path: Path) -> None:
        c = bytearray(raw)
        for sig, off, nlo, hdr in ((b"PK\x03\x04", local, 26, 30), (b"PK\x01\x02", central, 28, 46)):
            pos = 0
            while (pos := c.find(sig, pos)) >= 0:
                nlen = struct.unpack("<H", c[pos + nlo : pos + nlo + 2])[0]
                if bytes(c[pos + hdr : pos + hdr + nlen]) == b"member_1.onnx":
                    old = struct.unpack("<H", c[pos + off : pos + off + 2])[0]
                    c[pos + off : pos + off + 2] = struct.pack("<H", value(old))
                pos += 4
        path.write_bytes(bytes(c))

    paths["encrypted_flag"] = out / "encrypted_flag.zip"
    patch(6, 8, lambda f: f | 1, paths["encrypted_flag"])
    paths["unknown_method"] = out / "unknown_method.zip"
    patch(8, 10, lambda m: 99, paths["unknown_method"])
    return paths


@pytest.mark.parametrize(
    "kind, message",
    [
        ("bad_crc", "damaged.*CRC"),
        ("broken_central_directory", "zip"),
        ("encrypted_flag", "encrypted; zip the bundle without"),
        ("unknown_method", "compression method 99"),
    ],
)
def test_damaged_archives_give_one_line(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, message: str
) -> None:
    path = _damaged_archives(tiny_bundle, tmp_path)[kind]
    with pytest.raises(BundleError, match=message):
        load_bundle(path)
    assert message.split(".*")[0] in _one_line_error(*_cli(capsys, "inspect", "--check", str(path)))


# ---------------------------------------------------------------- bombs: caps from headers and while inflating


def test_manifest_bomb_is_refused_from_the_zip_header(tiny_bundle: Path, tmp_path: Path) -> None:
    path = tmp_path / "manifest_bomb.zip"
    raw = (tiny_bundle / MANIFEST_NAME).read_bytes().rstrip()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open(MANIFEST_NAME, "w") as f:
            f.write(raw[:-1] + b',"pad":"')
            for _ in range(8):
                f.write(b" " * (1 << 20))
            f.write(b'"}')
        for n in ("member_1.onnx", "member_2.onnx", "member_3.onnx"):
            z.write(tiny_bundle / n, n)
    assert path.stat().st_size < 200_000
    with pytest.raises(
        BundleError, match=r"manifest file .*manifest.json holds 8,3\d\d,\d\d\d bytes, over the 1,048,576-byte limit"
    ):
        load_bundle(path, LoadLimits(max_manifest_bytes=1 << 20))


def test_member_bomb_is_refused_from_the_zip_header(tiny_bundle: Path, tmp_path: Path) -> None:
    path = tmp_path / "member_bomb.zip"
    data = _manifest(tiny_bundle)
    data["members"][0]["sha256"] = sha256_bytes(bytes(32 << 20))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(MANIFEST_NAME, json.dumps(data))
        with z.open("member_1.onnx", "w") as f:
            for _ in range(32):
                f.write(bytes(1 << 20))
        for n in ("member_2.onnx", "member_3.onnx"):
            z.write(tiny_bundle / n, n)
    with pytest.raises(BundleError, match="member 'member_1' file .* holds 33,554,432 bytes"):
        load_bundle(path, LoadLimits(max_member_bytes=8 << 20))


def test_a_header_that_lies_about_the_size_is_caught_while_inflating(tiny_bundle: Path, tmp_path: Path) -> None:
    """The central directory says 100 bytes; the stream inflates to 4 MiB: never more than the cap is kept."""
    path = tmp_path / "liar.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(tiny_bundle / MANIFEST_NAME, MANIFEST_NAME)
        z.writestr("member_1.onnx", bytes(4 << 20))
        for n in ("member_2.onnx", "member_3.onnx"):
            z.write(tiny_bundle / n, n)
    b = bytearray(path.read_bytes())
    for sig, off, nlo, hdr in ((b"PK\x03\x04", 22, 26, 30), (b"PK\x01\x02", 24, 28, 46)):  # uncompressed size fields
        pos = 0
        while (pos := b.find(sig, pos)) >= 0:
            nlen = struct.unpack("<H", b[pos + nlo : pos + nlo + 2])[0]
            if bytes(b[pos + hdr : pos + hdr + nlen]) == b"member_1.onnx":
                b[pos + off : pos + off + 4] = struct.pack("<I", 100)
            pos += 4
    path.write_bytes(bytes(b))
    with pytest.raises(BundleError):
        load_bundle(path, LoadLimits(max_member_bytes=1 << 20))


def test_directory_members_are_capped_too(tiny_bundle: Path) -> None:
    size = (tiny_bundle / "member_1.onnx").stat().st_size
    with pytest.raises(BundleError, match="over the 100-byte limit"):
        load_bundle(tiny_bundle, LoadLimits(max_member_bytes=100))
    with pytest.raises(BundleError, match="over the"):
        load_bundle(tiny_bundle, LoadLimits(max_bundle_bytes=size + 10))


# ---------------------------------------------------------------- manifests that used to escape as tracebacks


def _nested(data: dict) -> None:
    data["metadata"]["deep"] = json.loads("[" * 500 + "]" * 500)


def _set(path: str, value: object) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        *head, last = path.split(".")
        target = data
        for key in head:
            target = target[int(key)] if key.isdigit() else target[key]
        target[int(last) if last.isdigit() else last] = value

    return edit


MANIFEST_ROWS = [
    ("deep_json", _nested, "nests JSON deeper than 64 levels"),
    (
        "shape_infinity",
        _set("task.input.shape", [-1, 1, 4, float("inf")]),
        r"task.input.shape\[3\] must be an integer, not a non-finite",
    ),
    ("params_infinity", _set("members.0.params", float("inf")), r"members\[0\].params must be an integer"),
    ("preprocess_string", _set("task.preprocess", "x"), "task.preprocess must be an object or null, not a string"),
    ("profile_string", _set("profiles", {"any": "junk"}), "profiles.any must be an object, not a string"),
    ("labels_string", _set("task.labels", "ab"), "task.labels must be an array"),
    (
        "latency_nan",
        _set("profiles", {"d": {"members": [{"name": "member_1", "latency_ms": {"p99": float("nan")}}]}}),
        r"latency_ms.p99 must be a finite number or null",
    ),
    (
        "threshold_infinity",
        _set("calibration", {"entropy_threshold": float("inf")}),
        "calibration.entropy_threshold must be a finite",
    ),
    ("connections_object", _set("members.1.connections", {"a": 1}), r"members\[1\].connections must be an array"),
    ("members_string", _set("members", "member_1"), "members must be an array"),
    ("format_missing", lambda d: d.pop("format"), "not an anytime-edge-bundle manifest"),
    ("task_missing", lambda d: d.pop("task"), "manifest lacks 'task'"),
]


@pytest.mark.parametrize("edit, message", [row[1:] for row in MANIFEST_ROWS], ids=[row[0] for row in MANIFEST_ROWS])
def test_bad_manifest_values_give_one_line_naming_the_field(
    tiny_bundle: Path, capsys: pytest.CaptureFixture[str], edit: Callable[[dict[str, Any]], object], message: str
) -> None:
    data = _manifest(tiny_bundle)
    edit(data)
    (tiny_bundle / MANIFEST_NAME).write_text(json.dumps(data))  # json writes Infinity/NaN as the case does
    with pytest.raises(ManifestError, match=message):
        load_bundle(tiny_bundle)
    _one_line_error(*_cli(capsys, "inspect", str(tiny_bundle)))


def test_json_nested_past_the_parser_recursion_limit(tiny_bundle: Path) -> None:
    text = (
        (tiny_bundle / MANIFEST_NAME)
        .read_text()
        .replace('"metadata": {', '"metadata": {"deep": ' + "[" * 100_000 + "]" * 100_000 + ", ", 1)
    )
    (tiny_bundle / MANIFEST_NAME).write_text(text)
    with pytest.raises(ManifestError, match="nests JSON"):
        load_bundle(tiny_bundle)


def test_huge_manifest_shape_is_refused_before_allocating(tiny_bundle: Path) -> None:
    """[-1, 1, 100000, 100000] would be 37 GiB per sample: refused by the graph check, before any array exists."""
    data = _manifest(tiny_bundle)
    data["task"]["input"]["shape"] = [-1, 1, 100000, 100000]
    _write_manifest(tiny_bundle, data)
    with pytest.raises(BundleError, match="over the 67,108,864 limit"):
        load_bundle(tiny_bundle)
    with pytest.raises(ModelLoadError, match=r"member 'member_1' takes 'x' shaped \['\?', 1, 4, 4\].*\[-1, 1, 100000, 100000\]"):
        load_bundle(tiny_bundle, LoadLimits(max_sample_elements=10**11))
    data["task"]["input"]["shape"] = [-1, 1, 4, 5]
    _write_manifest(tiny_bundle, data)
    with pytest.raises(ModelLoadError, match="fix task.input.shape"):
        load_bundle(tiny_bundle)


# ---------------------------------------------------------------- concurrent manifest updates


_SLOW_CALIBRATE = """
import sys, time
from dataclasses import replace
from pathlib import Path
from edge_runtime.bundle import Calibration, update_manifest
def change(bundle):
    Path(sys.argv[2]).write_text("read")  # the other writer starts now, while this one holds the old manifest
    time.sleep(1.0)
    return replace(bundle.manifest, calibration=Calibration(0.3, "slow writer", 0.9, 1.5))
update_manifest(sys.argv[1], change)
"""


@pytest.mark.parametrize("archive", [False, True], ids=["directory", "zip"])
def test_two_processes_updating_the_manifest_both_keep_their_result(tiny_bundle: Path, tmp_path: Path, archive: bool) -> None:
    """Case 07: a calibration and a profile stored by two processes at once; both must survive."""
    target = archive_bundle(tiny_bundle, tmp_path / "b.zip") if archive else tiny_bundle
    marker = tmp_path / "marker"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    slow = subprocess.Popen([sys.executable, "-c", _SLOW_CALIBRATE, str(target), str(marker)], env=env)
    try:
        for _ in range(600):
            if marker.exists() or slow.poll() is not None:
                break
            import time

            time.sleep(0.02)
        assert marker.exists()
        profile = {
            "profile_version": 1,
            "fingerprint": "fp-test",
            "device": {"cpu_model": "test"},
            "created_utc": "now",
            "members": [{"name": f"member_{k}", "latency_ms": {q: 1.0 for q in QUANTILES}} for k in (1, 2, 3)],
        }
        store_profile(target, profile)  # waits for the lock, then reads the slow writer's result
    finally:
        assert slow.wait(timeout=60) == 0
    manifest = load_bundle(target).manifest
    assert manifest.calibration is not None and manifest.calibration.target == "slow writer"
    assert "fp-test" in manifest.profiles


def test_stale_temp_files_of_a_dead_writer_are_removed_at_the_next_write(tiny_bundle: Path, tmp_path: Path) -> None:
    stale = tiny_bundle / ".manifest.json.k3j2h1.tmp"
    stale.write_text("{half a manif")
    archive = archive_bundle(tiny_bundle, tmp_path / "b.zip")
    stale_zip = tmp_path / ".b.zip.a8s7d6.tmp"
    stale_zip.write_bytes(b"PK")
    unrelated = tmp_path / ".other.zip.a8s7d6.tmp"
    unrelated.write_bytes(b"PK")
    save_calibration(tiny_bundle, Calibration(0.2, "t", 1.0, 1.0))
    save_calibration(archive, Calibration(0.2, "t", 1.0, 1.0))
    assert not stale.exists() and not stale_zip.exists()
    assert unrelated.exists()
    assert load_bundle(archive).manifest.calibration.entropy_threshold == 0.2


def test_update_manifest_reads_under_the_lock(tiny_bundle: Path) -> None:
    seen = []

    def change(bundle: Bundle) -> Manifest:
        seen.append((tiny_bundle / ".manifest.json.lock").exists())
        return replace(bundle.manifest, name="renamed")

    assert update_manifest(tiny_bundle, change).name == "renamed"
    assert seen == [True] and load_bundle(tiny_bundle).manifest.name == "renamed"


# ---------------------------------------------------------------- issue 17.1: file modes


@pytest.mark.parametrize("umask, dir_mode, file_mode", [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640), (0o077, 0o700, 0o600)])
def test_bundle_files_follow_the_umask(tmp_path: Path, umask: int, dir_mode: int, file_mode: int) -> None:
    old = os.umask(umask)
    try:
        bundle = make_bundle(tmp_path / "bundle", num_members=2)
        archive = archive_bundle(bundle, tmp_path / "bundle.zip")
    finally:
        os.umask(old)

    def mode(p: Path) -> int:
        return stat.S_IMODE(p.stat().st_mode)

    assert mode(bundle) == dir_mode
    assert mode(bundle / MANIFEST_NAME) == file_mode
    assert mode(bundle / "member_1.onnx") == file_mode
    assert mode(archive) == file_mode


def test_an_existing_manifest_keeps_its_mode_on_rewrite(tiny_bundle: Path, tmp_path: Path) -> None:
    (tiny_bundle / MANIFEST_NAME).chmod(0o640)
    save_calibration(tiny_bundle, Calibration(0.2, "t", 1.0, 1.0))
    assert stat.S_IMODE((tiny_bundle / MANIFEST_NAME).stat().st_mode) == 0o640
    archive = archive_bundle(tiny_bundle, tmp_path / "b.zip")
    archive.chmod(0o604)
    save_calibration(archive, Calibration(0.1, "t", 1.0, 1.0))
    assert stat.S_IMODE(archive.stat().st_mode) == 0o604


def test_an_unreadable_bundle_gives_one_line_naming_the_fix(tiny_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tiny_bundle.chmod(0o700)
    tiny_bundle.parent.chmod(0o755)
    if os.geteuid() != 0:
        (tiny_bundle / MANIFEST_NAME).chmod(0)
        line = _one_line_error(*_cli(capsys, "inspect", str(tiny_bundle)))
        assert "give this user read access" in line
        return
    python = shutil.which("python3", path="/usr/bin:/bin")  # root reads everything: ask the user 'nobody'
    if python is None:
        pytest.skip("no system python3 for the user 'nobody'")
    code = "import sys; from edge_runtime.cli import main; sys.exit(main(['inspect', sys.argv[1]]))"
    site = sysconfig.get_paths()["purelib"]  # this venv's numpy/onnxruntime/psutil, if 'nobody' can read them
    try:
        done = subprocess.run(
            [python, "-c", code, str(tiny_bundle)],
            env={"PYTHONPATH": f"{ROOT}:{site}", "PATH": "/usr/bin:/bin"},
            user=65534,
            capture_output=True,
            text=True,
            timeout=60,
            cwd="/",
        )
    except (PermissionError, OSError) as exc:
        pytest.skip(f"cannot run as 'nobody' here: {exc}")
    if "No module named" in done.stderr:
        pytest.skip(f"the system python cannot import the runtime: {done.stderr.strip().splitlines()[-1]}")
    line = _one_line_error(done.returncode, done.stderr)
    assert "give this user read access (chmod -R a+rX" in line


# ---------------------------------------------------------------- issue 17.2: archives zipped the usual way


def _zip_tree(root: Path, archive: Path, extra: dict[str, bytes] | None = None) -> Path:
    """``cd root && zip -r archive .`` in Python, plus ``extra`` entries (OS metadata a Mac adds)."""
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for path in sorted(root.rglob("*")):
            if path.name.startswith(".manifest.json"):
                continue
            z.write(path, path.relative_to(root).as_posix() + ("/" if path.is_dir() else ""))
        for name, data in (extra or {}).items():
            z.writestr(name, data)
    return archive


def test_a_zip_whose_top_folder_holds_the_bundle_loads(tiny_bundle: Path, tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(4, 1, 4, 4)).astype(np.float32)
    flat = _zip_tree(tiny_bundle, tmp_path / "flat.zip")
    (tmp_path / "parent").mkdir()
    shutil.copytree(tiny_bundle, tmp_path / "parent" / "bundle")
    nested = _zip_tree(
        tmp_path / "parent",
        tmp_path / "nested.zip",
        {"__MACOSX/bundle/._manifest.json": b"\0\5\26\7", "bundle/.DS_Store": b"\0\0\0\1Bud1"},
    )
    assert "bundle/manifest.json" in zipfile.ZipFile(nested).namelist()
    want = [p.label for p in edge_runtime.load(flat, warmup=0).predict(x)]
    assert [p.label for p in edge_runtime.load(nested, warmup=0).predict(x)] == want
    save_calibration(nested, Calibration(0.2, "t", 1.0, 1.0))  # the rewrite keeps the folder
    assert "bundle/manifest.json" in zipfile.ZipFile(nested).namelist()
    assert load_bundle(nested).manifest.calibration.entropy_threshold == 0.2


def test_a_zip_with_the_bundle_deeper_down_names_the_fix(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "two").mkdir()
    shutil.copytree(tiny_bundle, tmp_path / "two" / "a")
    (tmp_path / "two" / "readme.txt").write_text("hi")
    archive = _zip_tree(tmp_path / "two", tmp_path / "two.zip")
    with pytest.raises(ManifestError, match=r"holds a/manifest.json, not manifest.json at its root.*zip -r ../bundle.zip \."):
        load_bundle(archive)
    _one_line_error(*_cli(capsys, "run", str(archive), "--input", str(tmp_path / "x.npy")))


def test_save_manifest_of_an_archive_keeps_only_bundle_files(tiny_bundle: Path, tmp_path: Path) -> None:
    archive = _zip_tree(tiny_bundle, tmp_path / "b.zip", {"notes.txt": b"x"})
    save_manifest(archive, replace(load_bundle(archive).manifest, name="renamed"))
    with zipfile.ZipFile(archive) as z:
        assert sorted(z.namelist()) == [MANIFEST_NAME, "member_1.onnx", "member_2.onnx", "member_3.onnx"]


def test_a_missing_member_in_an_archive_is_a_checksum_error(tiny_bundle: Path, tmp_path: Path) -> None:
    archive = tmp_path / "b.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(tiny_bundle / MANIFEST_NAME, MANIFEST_NAME)
        z.write(tiny_bundle / "member_1.onnx", "member_1.onnx")
    with pytest.raises(ChecksumError, match="member_2.onnx' is missing"):
        load_bundle(archive)


def test_profile_refuses_a_member_that_never_finishes(tiny_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The profiler builds its own sessions; it runs the same bounded warm-up before timing anything."""
    from distill.cli import main as full_main

    set_member_bytes(tiny_bundle, 0, _loop_member())
    code = full_main(
        [
            "profile",
            str(tiny_bundle),
            "--min-queries",
            "4",
            "--min-seconds",
            "0",
            "--warmup",
            "1",
            "--no-memory-probe",
            "--load-timeout",
            "0.3",
        ]
    )
    assert "member 'member_1' did not finish" in _one_line_error(code, capsys.readouterr().err)


def test_a_re_export_keeps_the_directory_mode_and_removes_a_killed_exports_leftovers(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle", num_members=2)
    bundle.chmod(0o750)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a process id that no longer runs: the killed exporter
    leftovers = [tmp_path / f".bundle.staging.{dead.pid}.ab12", tmp_path / f".bundle.old.{dead.pid}.cd34"]
    for path in leftovers:
        (path / "old").mkdir(parents=True)
    live = tmp_path / f".bundle.staging.{os.getppid()}.ef56"  # a writer that is still running
    other = tmp_path / f".bundle2.staging.{dead.pid}.gh78"  # another bundle's
    live.mkdir()
    other.mkdir()
    make_bundle(tmp_path / "bundle", num_members=2)
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o750
    assert not any(p.exists() for p in leftovers)
    assert live.exists() and other.exists()
