"""How the logits are found in what a classifier's forward returns: the one place that says so.

A teacher or student may be any ``nn.Module`` (or any callable on a batch) whose forward returns

* a tensor of logits, shape ``(N, classes)``;
* a tuple or list whose first item is that tensor (``(logits, features)`` — the toolkit's own models — or
  ``(logits, aux, ...)``);
* a mapping with a ``"logits"`` entry (Hugging Face style outputs, ``dict(logits=...)``).

Anything else is refused with one line saying what was returned and what is expected.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from distill.errors import TrainingError

__all__ = ["logits_of"]


def logits_of(output: Any, *, who: str = "the model") -> torch.Tensor:
    """The ``(N, classes)`` logits tensor in a forward's ``output``.

    Args:
        output: what the forward returned (a tensor, a ``(logits, ...)`` tuple/list, or a mapping with ``"logits"``).
        who: names the model in the error message (e.g. "the teacher").

    Returns:
        The logits tensor, shape ``(N, classes)``.

    Raises:
        TrainingError: the output holds no logits in one of the accepted forms, or they are not 2-D.
    """
    if isinstance(output, torch.Tensor):
        logits = output
    elif isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        logits = output[0]
    elif isinstance(output, Mapping) and isinstance(output.get("logits"), torch.Tensor):
        logits = output["logits"]
    else:
        kind = type(output).__name__
        raise TrainingError(
            f"{who} returned {kind}; its forward must return logits (N, classes), a (logits, ...) tuple, "
            "or a mapping with a 'logits' entry"
        )
    if logits.dim() != 2:
        raise TrainingError(f"{who} returned logits of shape {tuple(logits.shape)}; forward must return (N, classes)")
    return logits
