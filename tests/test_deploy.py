"""deploy/: the runtime image's Dockerfile, the KServe InferenceService and the factory PC's systemd unit.

Nothing is built or started here (no docker, no cluster); each file is parsed and its command line is
parsed by the very argument parser that will read it, so a renamed flag or entry point fails here.
"""

from __future__ import annotations

import configparser
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"


def _dockerfile_instruction(name: str) -> str:
    lines = (DEPLOY / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ").splitlines()
    found = [line[len(name) :].strip() for line in lines if line.startswith(name + " ")]
    assert len(found) == 1, f"deploy/Dockerfile should have one {name}"
    return found[0]


def _container() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml", reason="PyYAML (the dev extra) reads the manifest")
    docs = list(yaml.safe_load_all((DEPLOY / "kserve" / "inferenceservice.yaml").read_text(encoding="utf-8")))
    assert len(docs) == 1
    isvc = docs[0]
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["kind"] == "InferenceService"
    (container,) = isvc["spec"]["predictor"]["containers"]
    return dict(container)


def test_inferenceservice_runs_the_images_entry_point() -> None:
    container = _container()
    entrypoint = json.loads(_dockerfile_instruction("ENTRYPOINT"))
    assert entrypoint == ["python", "-m", "edge_runtime.kserve"]
    assert container["command"] == entrypoint
    # the image the manifest names is the one README's build command tags
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert f"-t {container['image']} ." in readme
    assert container["args"][0] == "/mnt/models"  # where KServe's storage initializer puts STORAGE_URI
    assert any(e["name"] == "STORAGE_URI" for e in container["env"])


def test_inferenceservice_args_parse_with_the_adapters_parser() -> None:
    pytest.importorskip("kserve", reason="the kserve extra is not installed (pip install -c constraints.txt '.[kserve]')")
    from edge_runtime.kserve.__main__ import build_parser

    container = _container()
    args = build_parser().parse_args([str(a) for a in container["args"]])
    assert args.bundle == "/mnt/models"
    assert [p["containerPort"] for p in container["ports"]] == [args.http_port]
    probe = container["readinessProbe"]["httpGet"]
    assert probe["port"] == args.http_port and probe["path"] == f"/v2/models/{args.model_name}/ready"
    assert args.budget_ms == 20.0 and args.enable_grpc is False


def test_dockerfile_installs_the_runtime_and_servers_without_torch() -> None:
    run = _dockerfile_instruction("RUN")
    install = re.search(r"pip install (.*?)(&&|$)", run)
    assert install is not None
    words = shlex.split(install.group(1))
    assert words[:2] == ["-c", "constraints.txt"]
    (target,) = [w for w in words if w.startswith(".[")]
    assert set(target[2:-1].split(",")) == {"serve", "kserve"}  # not train or all: those bring torch
    assert "torch" not in words
    assert json.loads(_dockerfile_instruction("CMD"))[:1] == ["/mnt/models"]


def test_systemd_unit_starts_anytime_edge_serve_with_valid_flags() -> None:
    pytest.importorskip("starlette", reason="the serve extra is not installed")
    import argparse

    from edge_runtime.cli import serve
    from edge_runtime.server import ServerConfig

    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.optionxform = str  # type: ignore[assignment]  # systemd keys are case-sensitive
    unit.read(DEPLOY / "systemd" / "anytime-edge.service", encoding="utf-8")
    service = unit["Service"]
    argv = shlex.split(service["ExecStart"])
    assert Path(argv[0]).name == "anytime-edge" and argv[1] == "serve"
    parser = argparse.ArgumentParser()
    serve.configure(parser)
    args = parser.parse_args(argv[2:])
    assert Path(args.bundle).is_absolute() and args.port == 8000
    # systemd must wait out the graceful stop (in-flight requests) before it kills the server
    assert service["KillSignal"] == "SIGTERM"
    assert float(service["TimeoutStopSec"]) > ServerConfig().shutdown_timeout_s
    assert unit["Install"]["WantedBy"] == "multi-user.target"
