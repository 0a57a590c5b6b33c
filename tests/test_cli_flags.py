"""--threads, --entropy and --budget-ms are spelled, parsed and validated one way in every command."""

from __future__ import annotations

import argparse
import importlib

import pytest

# command module -> (positional arguments it requires, the shared flags it takes)
COMMANDS = {
    "edge_runtime.cli.run": (["b", "--input", "x.npy"], ("--threads", "--entropy", "--budget-ms")),
    "edge_runtime.cli.serve": (["b"], ("--threads", "--entropy", "--budget-ms")),
    "profiles.cli.select": (["b", "--data", "v.npz"], ("--threads", "--budget-ms")),
    "profiles.cli.profile": (["b"], ("--threads",)),
}
CASES = [(module, flag) for module, (_, flags) in COMMANDS.items() for flag in flags]


def _parse(module: str, extra: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=module, exit_on_error=True)
    importlib.import_module(module).configure(parser)
    return parser.parse_args([*COMMANDS[module][0], *extra])


GOOD = {
    "--threads": [("0", 0), ("4", 4)],
    "--entropy": [("0.25", 0.25), ("calibrated", "calibrated"), ("OFF", "off")],
    "--budget-ms": [("2.5", 2.5), ("off", None)],
}
BAD = {
    "--threads": ["-1", "two", "1.5"],
    "--entropy": ["-0.1", "nan", "inf", "sure"],
    "--budget-ms": ["0", "-3", "inf", "soon"],
}
DEFAULTS = {"--threads": 1, "--entropy": "calibrated", "--budget-ms": None}


@pytest.mark.parametrize(("module", "flag"), CASES)
def test_good_values_and_defaults_parse_the_same_everywhere(module: str, flag: str) -> None:
    dest = flag.lstrip("-").replace("-", "_")
    assert getattr(_parse(module, []), dest) == DEFAULTS[flag]
    for text, value in GOOD[flag]:
        assert getattr(_parse(module, [flag, text]), dest) == value


@pytest.mark.parametrize(("module", "flag"), CASES)
def test_bad_values_are_one_line_usage_errors_worded_the_same(module: str, flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    for text in BAD[flag]:
        with pytest.raises(SystemExit) as exit_info:
            _parse(module, [flag, text])
        assert exit_info.value.code == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        other = next(m for m, f in CASES if f == flag)  # the first command with this flag words it the same
        if other != module:
            with pytest.raises(SystemExit):
                _parse(other, [flag, text])
            assert capsys.readouterr().err.strip().splitlines()[-1].split(": ", 1)[1] == error.split(": ", 1)[1]
        assert f"argument {flag}" in error
