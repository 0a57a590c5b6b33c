"""One error root: every package's base derives from AnytimeEdgeError, and the CLI catches that one class."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_runtime.cli import dispatch
from edge_runtime.errors import AnytimeEdgeError, EdgeRuntimeError, SessionConfigError
from edge_runtime.session import SessionConfig
from exporters.bundle import archive_bundle
from exporters.errors import ExportError


def test_every_package_base_is_beneath_the_one_root() -> None:
    from distill.errors import DistillError
    from edge_runtime.server._errors import ServerError
    from profiles.errors import ProfileError

    for base in (EdgeRuntimeError, ExportError, ProfileError, DistillError, ServerError):
        assert issubclass(base, AnytimeEdgeError), base


@pytest.mark.parametrize("kwargs", [{"intra_op_threads": -1}, {"load_timeout_s": 0.0}, {"optimization": "fast"}])
def test_session_config_raises_the_runtimes_error_and_stays_a_value_error(kwargs: dict) -> None:
    with pytest.raises(SessionConfigError) as info:
        SessionConfig(**kwargs)
    assert isinstance(info.value, EdgeRuntimeError) and isinstance(info.value, ValueError)


def test_archiving_an_archive_is_an_export_error(tiny_bundle: Path, tmp_path: Path) -> None:
    archive = archive_bundle(tiny_bundle, tmp_path / "b.zip")
    with pytest.raises(ExportError, match="not a bundle directory"):
        archive_bundle(archive, tmp_path / "c.zip")  # raised NotADirectoryError before
    with pytest.raises(ExportError, match="does not exist"):
        archive_bundle(tiny_bundle, tmp_path / "missing" / "c.zip")


def test_the_dispatcher_prints_any_package_error_as_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An error class of a package the dispatcher has never heard of: caught through the root alone."""
    (tmp_path / "fake_command.py").write_text(
        "from edge_runtime.errors import AnytimeEdgeError\n"
        "class PluginError(AnytimeEdgeError):\n    pass\n"
        "HELP = 'fails'\n"
        "def configure(parser):\n    pass\n"
        "def run(args):\n    raise PluginError('the plugin failed; fix it')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    code = dispatch(["fail"], {"fail": ("fake_command", "fails")}, prog="prog", description="test")
    assert code == 1
    assert capsys.readouterr().err == "prog fail: the plugin failed; fix it\n"
