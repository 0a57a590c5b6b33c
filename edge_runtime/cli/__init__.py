"""A thin command dispatcher shared by ``python -m edge_runtime`` and the full ``anytime-edge`` CLI.

A command is a module exposing ``HELP`` (one line), ``configure(parser)`` and ``run(args) -> int``. The
table maps a command name to its module path, and only the chosen command's module is imported, so
``anytime-edge run`` never imports torch even when the training package is installed. The runtime's own
table names runtime modules only; the training package passes a larger table (imports follow the data
flow: the runtime never imports the packages upstream of it).

Errors a command raises on purpose (any package's, all beneath :class:`~edge_runtime.errors.AnytimeEdgeError`)
print as one line and exit 1; usage errors exit 2 (argparse).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Mapping, Sequence

from edge_runtime.errors import AnytimeEdgeError
from edge_runtime.extras import missing_dependency_message

__all__ = ["RUNTIME_COMMANDS", "dispatch", "main"]

# name -> (module path, one-line help). Help lives here so `--help` imports nothing heavy.
RUNTIME_COMMANDS: Mapping[str, tuple[str, str]] = {
    "calibrate": ("edge_runtime.cli.calibrate", "choose the entropy exit threshold on held-out data"),
    "inspect": ("edge_runtime.cli.inspect", "show a bundle's task, members, threshold and profiles"),
    "run": ("edge_runtime.cli.run", "evaluate a bundle on inputs from a .npy file, with early exit"),
    "serve": ("edge_runtime.cli.serve", "serve a bundle over the Open Inference Protocol (KServe V2)"),
}


def dispatch(
    argv: Sequence[str] | None,
    commands: Mapping[str, tuple[str, str]],
    prog: str,
    description: str,
) -> int:
    """Parse ``argv``, import the chosen command's module, run it; return the process exit code."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_path, help_text) in sorted(commands.items()):
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            try:
                module = importlib.import_module(module_path)
            except ImportError as exc:
                line = _import_failure_line(exc)
                if line is None:
                    raise
                print(f"{prog} {name}: {line}", file=sys.stderr)
                return 1
            module.configure(command_parser)
            command_parser.set_defaults(_run=module.run)
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # only package errors are turned into one line
        line = str(exc) if isinstance(exc, AnytimeEdgeError) else None
        if line is None and isinstance(exc, ImportError):
            line = _import_failure_line(exc)
        if line is not None:
            print(f"{prog} {args.command}: {line}", file=sys.stderr)
            return 1
        raise


def _import_failure_line(exc: ImportError) -> str | None:
    """The one line for an import that failed (a missing extra, a broken onnxruntime), or None for a bug.

    The one place a missing optional dependency becomes the install command (edge_runtime.extras), whether
    the command's module or the command itself (a lazy import) hit it.
    """
    if isinstance(exc, AnytimeEdgeError):
        return str(exc)
    return missing_dependency_message(exc.name) if exc.name else None


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m edge_runtime``: the runtime-only commands (no torch needed)."""
    return dispatch(
        argv,
        RUNTIME_COMMANDS,
        prog="python -m edge_runtime",
        description="Anytime Edge on-device runtime: run, inspect, calibrate and serve bundles.",
    )
