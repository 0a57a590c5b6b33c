"""Choosing a distillation loss on the command line: ``--loss NAME --loss-param KEY=VALUE ...``.

Shared by every training command so they all spell loss selection the same way::

    def configure(parser):
        add_loss_arguments(parser, default="kd", default_params={"kd": {"alpha": 0.8, "temperature": 10.0}})

    def run(args):
        loss = loss_from_args(args)  # a distill.losses.DistillationLoss

Values are converted to the type of the loss's parameter (``alpha=1`` becomes 1.0; ``seed=none`` is
None). A malformed ``--loss-param`` is a usage error (exit 2); an unknown or out-of-range parameter raises
:class:`~distill.errors.TrainingError`, which the dispatcher prints as one line (exit 1).
"""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import MISSING, fields
from typing import Any, Mapping, Sequence

from distill.errors import TrainingError
from distill.losses import LOSSES, DistillationLoss, make_loss

__all__ = ["add_loss_arguments", "describe_losses", "loss_from_args", "parse_loss_params"]

_DEFAULTS_DEST = "loss_defaults"


def _key_value(text: str) -> tuple[str, str]:
    """argparse ``type`` of ``--loss-param``: ``"alpha=0.8"`` -> ``("alpha", "0.8")``."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. alpha=0.8), got {text!r}")
    return key.strip(), value.strip()


def _settable(name: str) -> dict[str, tuple[type, bool, object]]:
    """Parameters of loss ``name`` that a string can set: name -> (scalar type, accepts None, default)."""
    cls = LOSSES[name]
    hints = typing.get_type_hints(cls)
    out: dict[str, tuple[type, bool, object]] = {}
    for f in fields(cls):  # type: ignore[arg-type]  # every loss class is a dataclass
        hint = hints[f.name]
        members = (
            typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union else (hint,)
        )
        scalars = [m for m in members if m in (bool, int, float, str)]
        if len(scalars) == 1:  # objects such as a torch.Generator only come through the Python API
            out[f.name] = (scalars[0], type(None) in members, None if f.default is MISSING else f.default)
    return out


def _convert(loss: str, key: str, text: str, kind: type, nullable: bool) -> object:
    if nullable and text.lower() == "none":
        return None
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "1")
        return kind(text)
    except ValueError:
        raise TrainingError(
            f"loss '{loss}': {key}={text!r} is not a valid {kind.__name__}; pass e.g. --loss-param {key}=<{kind.__name__}>"
        ) from None


def parse_loss_params(name: str, pairs: Sequence[tuple[str, str]]) -> dict[str, object]:
    """Convert ``(key, string value)`` pairs to the typed parameters of loss ``name``.

    Args:
        name: a key of :data:`~distill.losses.LOSSES`.
        pairs: ``--loss-param`` values, already split at ``=``.

    Returns:
        Keyword arguments for :func:`~distill.losses.make_loss`.

    Raises:
        TrainingError: unknown loss or parameter, a key given twice, or a value of the wrong type.
    """
    if name not in LOSSES:
        raise TrainingError(f"loss '{name}' is unknown; choose one of {sorted(LOSSES)}")
    settable = _settable(name)
    params: dict[str, object] = {}
    for key, text in pairs:
        if key in params:
            raise TrainingError(f"loss '{name}': --loss-param {key}= is given twice; keep one")
        if key not in settable:
            takes = f"it takes {sorted(settable)}" if settable else "it takes no parameters"
            raise TrainingError(f"loss '{name}' has no command-line parameter '{key}'; {takes}")
        kind, nullable, _ = settable[key]
        params[key] = _convert(name, key, text, kind, nullable)
    return params


def describe_losses() -> str:
    """One line per registered loss with its command-line parameters and their defaults."""
    lines = []
    for name in sorted(LOSSES):
        settable = _settable(name)
        shown = ", ".join(f"{key}={default}" for key, (_, _, default) in settable.items())
        lines.append(f"{name}({shown})")
    return "; ".join(lines)


def add_loss_arguments(
    parser: argparse.ArgumentParser,
    default: str = "kd",
    default_params: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """Add ``--loss`` and ``--loss-param`` to a command's parser.

    Args:
        parser: the command's parser (or an argument group's parser).
        default: the loss used when ``--loss`` is not given.
        default_params: per-loss parameters this command prefers over the loss's own defaults (e.g.
            DSD²'s ``{"kd": {"alpha": 0.8, "temperature": 10.0}}``); ``--loss-param`` overrides them.

    Raises:
        TrainingError: ``default`` or a ``default_params`` entry names no registered loss or parameter.
    """
    if default not in LOSSES:
        raise TrainingError(f"default loss '{default}' is unknown; choose one of {sorted(LOSSES)}")
    preferred = {name: dict(values) for name, values in (default_params or {}).items()}
    for name, values in preferred.items():
        make_loss(name, **values)  # a command's own defaults must be valid before any user input
    parser.add_argument(
        "--loss",
        choices=sorted(LOSSES),
        default=default,
        help=f"distillation objective (default: {default})",
    )
    overrides = "; ".join(f"{n}: {', '.join(f'{k}={v}' for k, v in vals.items())}" for n, vals in sorted(preferred.items()))
    parser.add_argument(
        "--loss-param",
        dest="loss_params",
        metavar="KEY=VALUE",
        type=_key_value,
        action="append",
        default=[],
        # argparse %-formats help text: escape so no value can break --help.
        help=(
            f"set a parameter of the chosen loss; repeatable. Losses and defaults: {describe_losses()}"
            + (f". This command's defaults: {overrides}" if overrides else "")
        ).replace("%", "%%"),
    )
    parser.set_defaults(**{_DEFAULTS_DEST: preferred})


def loss_from_args(args: argparse.Namespace) -> DistillationLoss:
    """The loss chosen by :func:`add_loss_arguments`' options.

    Raises:
        TrainingError: an unknown parameter for the chosen loss, or a value of the wrong type or range.
    """
    params = dict(getattr(args, _DEFAULTS_DEST, {}).get(args.loss, {}))
    params.update(parse_loss_params(args.loss, args.loss_params))
    return make_loss(args.loss, **params)
