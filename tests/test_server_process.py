"""The server as a real process on a loopback port: CLI start-up, graceful SIGTERM, and the optional extra.

Only 127.0.0.1 is ever used; every server is started on port 0 (a free port it reports) and stopped here.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
START_TIMEOUT_S = 60.0

# A server over the slow fake runtime of test_server.py; it prints its URL, then "predict" when a request
# reaches the runtime, then "stopped" after serve() returns.
SLOW_SERVER = r"""
import sys
sys.path.insert(0, sys.argv[1])
from test_server import FakeRuntime
from edge_runtime.server import ServerConfig, serve

class Announcing(FakeRuntime):
    def predict(self, x, budget_ms=None, entropy_threshold=None):
        print("predict", flush=True)
        return super().predict(x, budget_ms, entropy_threshold)

serve(Announcing(delay_s=float(sys.argv[2])), ServerConfig(port=0, workers=1), announce=lambda url: print(url, flush=True))
print("stopped", flush=True)
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # the checkout first, so the package under test is the one imported
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _start(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, *args], cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _read_line(proc: subprocess.Popen[str]) -> str:
    """The next stdout line, or fail with the server's stderr if it died first."""
    line = proc.stdout.readline() if proc.stdout else ""
    if not line:
        proc.wait(timeout=START_TIMEOUT_S)
        pytest.fail(f"server exited {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
    return line.strip()


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


def _infer_body() -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": [1, 2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


def test_sigterm_finishes_the_request_in_flight_and_exits_0() -> None:
    proc = _start(["-c", SLOW_SERVER, str(TESTS), "1.5"])
    try:
        url = _read_line(proc)
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
        with httpx.Client(base_url=url, timeout=30) as client:
            assert client.get("/v2/health/ready").json() == {"ready": True}
            result: dict[str, Any] = {}

            def slow_request() -> None:
                try:
                    result["response"] = client.post("/v2/models/fake/infer", json=_infer_body())
                except httpx.HTTPError as exc:  # recorded, so the assertion below names it
                    result["error"] = exc

            sender = threading.Thread(target=slow_request)
            sender.start()
            assert _read_line(proc) == "predict"  # the request is inside the runtime now
            proc.send_signal(signal.SIGTERM)
            sender.join(timeout=30)
        assert "error" not in result, result.get("error")
        response = result["response"]
        assert response.status_code == 200
        assert next(o for o in response.json()["outputs"] if o["name"] == "label")["data"] == [1]
        assert proc.wait(timeout=30) == 0
        assert _read_line(proc) == "stopped"
    finally:
        _stop(proc)


def test_cli_serves_a_real_bundle_and_stops_on_sigterm(tiny_bundle: Path) -> None:
    proc = _start(["-m", "edge_runtime", "serve", str(tiny_bundle), "--port", "0", "--workers", "1"])
    try:
        banner = _read_line(proc)
        match = re.fullmatch(r"serving 'tiny' \(3 members, 1 worker\(s\)\) on (http://127\.0\.0\.1:\d+)/v2", banner)
        assert match, banner
        with httpx.Client(base_url=match.group(1), timeout=30) as client:
            meta = client.get("/v2/models/tiny").json()
            assert meta["inputs"][0]["shape"] == [-1, 1, 4, 4]
            body = {"inputs": [{"name": "x", "shape": [1, 1, 4, 4], "datatype": "FP32", "data": [0.5] * 16}]}
            response = client.post("/v2/models/tiny/infer", json=body)
            assert response.status_code == 200
            assert response.json()["parameters"]["anytime_member_count"] == 3
            assert client.post("/v2/models/tiny/infer", content=b"{").status_code == 400
            # case untrusted/13 through uvicorn: a rebound Host and a text/plain web-page post
            assert client.get("/v2", headers={"Host": "attacker.example"}).status_code == 421
            assert client.post("/v2/models/tiny/infer", json=body, headers={"Content-Type": "text/plain"}).status_code == 415
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        _stop(proc)


def test_cli_reports_a_bad_bundle_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "edge_runtime", "serve", str(tmp_path / "missing"), "--port", "0"],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "does not exist" in proc.stderr


# A meta path hook that makes starlette look uninstalled, as on a runtime-only install.
_BLOCK_STARLETTE = r"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "starlette" or name.startswith("starlette."):
            raise ModuleNotFoundError(f"No module named '{name}'", name=name)
        return None
sys.meta_path.insert(0, Block())
"""


def test_runtime_import_does_not_load_the_server_extra(tiny_bundle: Path) -> None:
    code = _BLOCK_STARLETTE + (
        "import edge_runtime, numpy\n"
        f"rt = edge_runtime.load({str(tiny_bundle)!r}, warmup=1)\n"
        "rt.predict(numpy.zeros((1, 1, 4, 4), 'float32'))\n"
        "assert not any(m.split('.')[0] in ('starlette', 'uvicorn', 'torch') for m in sys.modules), sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(), check=True, timeout=60)


def test_missing_extra_names_the_pip_command() -> None:
    code = _BLOCK_STARLETTE + "import edge_runtime.server\n"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "pip install -c constraints.txt '.[serve]'" in proc.stderr.strip().splitlines()[-1]

    code = _BLOCK_STARLETTE + "from edge_runtime.cli import main\nsys.exit(main(['serve', 'bundle']))\n"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0
    assert "pip install -c constraints.txt '.[serve]'" in proc.stderr
