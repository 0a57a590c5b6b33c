"""Load a ``torch.export`` program (``.pt2``, written by ``torch.export.save``) without running code from the file.

``torch.export.load`` alone is not safe for files from strangers (torch's documentation says so), even
when the file holds no pickle (torch 2.13): it unpickles weights marked ``use_pickle`` and opaque
constants with plain pickle, falls back to ``torch.load(weights_only=False)`` for sample inputs and legacy
payloads, passes symbolic-shape strings (``expr_str`` in ``models/*.json``) to ``sympy.sympify`` (an
``eval``), resolves node targets (``"torch.os.system"``) by walking attributes from ``torch``, and
``ExportedProgram.module()`` compiles the file's ``guards_code`` into the forward, run on every call.
:func:`load_program_safely` therefore, before and around ``torch.export.load``,

* refuses archives holding anything but one JSON program (``models/model.json``), raw weight/constant
  payloads, sample inputs and extra files (no AOTInductor/ExecuTorch binaries, no legacy ``.pt``
  payloads, no pickled weights, no custom or opaque objects, no older archive format);
* accepts node targets only from ``torch.ops.*``, a few ``operator`` / ``math`` functions and
  ``torch.sym_*``; symbolic expressions only made of ``Symbol``/``Integer`` calls, numbers, shape symbols
  and torch's sympy functions; tensor names only of dotted identifiers;
* forces every ``torch.load`` inside to ``weights_only=True`` (``TORCH_FORCE_WEIGHTS_ONLY_LOAD``, set for
  the call: a process-wide variable, so do not load programs from several threads at once), and drops the
  program's guard code (input-shape assertions: a wrong input shape then fails in a kernel instead)
  before anyone builds the module.

Both users of ``.pt2`` files load through here: :func:`exporters.pt2.load_program` (``anytime-edge export
MODEL.pt2``) and :func:`distill.exported.load_exported_module` (teachers and students given as programs).
These checks close every code path found in torch 2.13's loader; they are a review, not a proof, so load
programs from sources you trust.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import zipfile
from pathlib import Path
from typing import Any, Iterator

from edge_runtime.errors import error_line
from edge_runtime.extras import install_hint
from exporters.errors import ExportError

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised only on a runtime-only install
    raise ImportError(f"loading a .pt2 program needs torch; {install_hint('train')}", name=exc.name) from exc

__all__ = ["check_archive", "load_program_safely", "weights_only_loads"]

# Archive members a plain exported program has (paths below the archive's root folder).
_ALLOWED_MEMBERS = re.compile(
    r"^(archive_format|archive_version|byteorder|\.data/[A-Za-z0-9_.]+|models/[A-Za-z0-9_]+\.json|"
    r"data/weights/[A-Za-z0-9_.]+|data/constants/[A-Za-z0-9_.]+|data/sample_inputs/[A-Za-z0-9_]+\.pt|extra/.+)$"
)
_CONFIGS = (("data/weights/model_weights_config.json", "weights"), ("data/constants/model_constants_config.json", "constants"))
_TARGET = re.compile(
    r"^(torch\.ops\.[A-Za-z0-9_]+(\.[A-Za-z0-9_]+){0,2}|torch\.sym_[a-z_]+|torch\._sym_sqrt|"
    r"_operator\.(getitem|add|sub|mul|truediv|floordiv|mod|pow|neg|pos|abs|eq|ne|lt|le|gt|ge|and_|or_|not_)|"
    r"math\.[a-z0-9_]+)$"
)
_EXPR_TOKEN = re.compile(r"\s+|\d+(\.\d+)?(e-?\d+)?|[A-Za-z_][A-Za-z0-9_]*|'[a-z]+\d+'|\*\*|[-+*/%(),=<>!]")
_EXPR_NAMES = {
    "Symbol",
    "Integer",
    "Float",
    "Rational",
    "positive",
    "integer",
    "real",
    "nonnegative",
    "True",
    "False",
    "Max",
    "Min",
    "Abs",
    "Eq",
    "Ne",
    "Lt",
    "Le",
    "Gt",
    "Ge",
    "And",
    "Or",
    "Not",
    "oo",
    "FloorDiv",
    "ModularIndexing",
    "Where",
    "PythonMod",
    "Mod",
    "CleanDiv",
    "CeilToInt",
    "FloorToInt",
    "CeilDiv",
    "LShift",
    "RShift",
    "PowByNatural",
    "FloatPow",
    "FloatTrueDiv",
    "IntTrueDiv",
    "IsNonOverlappingAndDenseIndicator",
    "TruncToFloat",
    "TruncToInt",
    "RoundToInt",
    "RoundDecimal",
    "ToFloat",
    "Identity",
}
_SHAPE_SYMBOL = re.compile(r"^[a-z]+\d+$")
_FQN = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")
_FIX = "re-save it with torch.export.save from a trusted torch (a model of plain tensors and torch ops)"


def _refuse(path: Path, why: str) -> ExportError:
    return ExportError(f"{path}: {why}; {_FIX}")


def _walk(value: Any, key: str | None = None) -> Iterator[tuple[str | None, Any]]:
    """Every leaf of a JSON value with the key it sits under (list items inherit their list's key)."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v, key)
    else:
        yield key, value


def _safe_expression(expr: str) -> bool:
    position = 0
    while position < len(expr):
        match = _EXPR_TOKEN.match(expr, position)
        if match is None:
            return False
        token = match.group(0)
        if (token[0].isalpha() or token[0] == "_") and token not in _EXPR_NAMES and not _SHAPE_SYMBOL.match(token):
            return False
        position = match.end()
    return True


def _json(archive: zipfile.ZipFile, path: Path, member: str) -> Any:
    try:
        return json.loads(archive.read(member))
    except (KeyError, ValueError) as exc:
        raise _refuse(path, f"{member.split('/', 1)[1]} is damaged ({type(exc).__name__})") from None


def check_archive(path: str | os.PathLike[str]) -> None:
    """Refuse a ``.pt2`` archive whose loading could run code (module docstring), reading only its JSON.

    Args:
        path: the ``.pt2`` file.

    Raises:
        ExportError: not a zip of the current archive format, a member outside the plain-program layout,
            several programs, a pickled weight or constant, a node target outside torch ops, an unaccepted
            symbolic expression, a tensor name that is not a dotted identifier; one line naming the fix.
    """
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise _refuse(path, "not a torch.export program (.pt2 is a zip archive)")
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if not n.endswith("/")]
        roots = {n.split("/", 1)[0] for n in names}
        if len(roots) != 1 or any("/" not in n for n in names):
            raise _refuse(path, "not a torch.export program (one root folder expected)")
        root = roots.pop() + "/"
        members = [n[len(root) :] for n in names]
        if "archive_format" not in members or archive.read(root + "archive_format").strip() != b"pt2":
            raise _refuse(path, "not a torch.export program of the current archive format")
        for member in members:
            if not _ALLOWED_MEMBERS.match(member):
                raise _refuse(path, f"holds '{member}', which this loader does not open (binaries, pickles)")
            if member.startswith(("data/weights/", "data/constants/")) and member.endswith(".pt"):
                raise _refuse(path, f"holds a legacy pickled payload '{member}'")
        programs = [m for m in members if m.startswith("models/")]
        if programs != ["models/model.json"]:
            raise _refuse(path, f"holds {len(programs)} programs {programs}, one (models/model.json) expected")
        for member, what in _CONFIGS:
            if member not in members:
                raise _refuse(path, f"lacks {member} (an older archive format that stores {what} as pickles)")
            config = _json(archive, path, root + member).get("config", {})
            for fqn, meta in config.items():
                if (
                    not isinstance(meta, dict)
                    or meta.get("use_pickle")
                    or not str(meta.get("path_name", "")).startswith(("weight_", "tensor_"))
                ):
                    raise _refuse(path, f"stores {what} '{fqn}' as a pickled object, which this loader refuses to unpickle")
                if not _FQN.match(fqn):
                    raise _refuse(path, f"names a tensor {fqn!r}, not a dotted identifier")
        for key, value in _walk(_json(archive, path, root + "models/model.json")):
            if key == "target" and isinstance(value, str) and not _TARGET.match(value):
                raise _refuse(path, f"calls '{value[:60]}', outside torch.ops / operator / math")
            if key == "expr_str" and isinstance(value, str) and not _safe_expression(value):
                raise _refuse(path, f"holds a symbolic shape expression this loader does not accept: {value[:60]!r}")


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Every ``torch.load`` inside runs with ``weights_only=True``, whatever its caller asked for.

    Sets ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1`` for the block and restores the previous value after it
    (process-wide: other threads' loads are forced too while it is set).
    """
    saved = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = saved


def load_program_safely(path: str | os.PathLike[str]) -> "torch.export.ExportedProgram":
    """``torch.export.load`` of a ``.pt2`` after :func:`check_archive`, weights-only, its guard code dropped.

    Args:
        path: a ``.pt2`` file written by ``torch.export.save``.

    Returns:
        The program; ``program.module()`` runs no code from the file (its ``_guards_code`` is empty).

    Raises:
        ExportError: the file is missing, fails :func:`check_archive`, or torch cannot read it; one line.
    """
    source = Path(path)
    if not source.is_file():
        raise ExportError(f"{source} does not exist or is not a file; give a .pt2 file written by torch.export.save")
    check_archive(source)
    try:
        with weights_only_loads():
            program = torch.export.load(source)
    except Exception as exc:  # noqa: BLE001 - the deserialiser raises many types; the user needs one line
        first = error_line(exc)
        raise ExportError(
            f"{source} is not a loadable torch.export program ({first[:200]}); "
            "re-save it with torch.export.save from this torch version"
        ) from None
    signature = program.graph_signature
    for fqn in [*program.state_dict, *program.constants, *signature.parameters, *signature.buffers]:
        if not _FQN.match(fqn):
            raise _refuse(source, f"names a tensor {fqn!r}, not a dotted identifier")
    if getattr(program, "_guards_code", None):
        program._guards_code = []  # compiled to Python by .module(); only input-shape assertions
    return program
