"""torch member -> one self-contained ONNX graph that obeys the bundle's member contract.

A member is an ``nn.Module`` whose ``forward(x, *connections)`` returns ``(logits, features)`` (or just
``logits`` for a plain classifier that no later member connects to). :class:`MemberHead` wraps it so the
exported graph does, in one ONNX Runtime call, everything the runtime would otherwise do in Python:

* combine: member 1 emits its own logits; member k > 1 adds ``prev_logits`` (``combine="sum"``) or keeps
  the running mean ``(prev * (k - 1) + own) / k`` with ``k`` baked in (``combine="mean"``);
* ``probs = exp(log_softmax(logits))`` and ``entropy = -sum(probs * log_softmax(logits))``: computed from
  ``log_softmax`` so a confident member (a probability that underflows to 0) yields 0, not ``0 * -inf``;
* ``features`` is passed through when a later member takes it as a connection.

Export uses the dynamo exporter at opset 18 (on this stack asking for 17 fails to convert CNNs) with a
dynamic batch dimension and the weights inside the model (``external_data=False``), so one file is one
member. Module structure is kept: a Linear->Linear factor pair (low-rank students) stays two matrix
products and a Conv pair two Conv nodes, because nothing here folds weights together.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Iterator, Sequence

from edge_runtime.errors import error_line
from edge_runtime.extras import install_hint
from exporters.errors import ConversionError
from exporters.irversion import lower_ir_version

try:
    import torch
    from torch import nn
except ImportError as exc:  # pragma: no cover - exercised only on a runtime-only install
    raise ImportError(f"exporting needs torch, onnx and onnxscript; {install_hint('train')}", name=exc.name) from exc

__all__ = ["COMBINE_RULES", "OPSET", "MemberHead", "export_member", "export_onnx", "output_names", "split_member_output"]

OPSET = 18
COMBINE_RULES = ("sum", "mean")
# Loggers of the dynamo exporter that report optional registrations (torchvision ops) on every export.
_NOISY_LOGGERS = ("torch.onnx", "torch._dynamo", "torch.export", "torch._export", "onnxscript")


def split_member_output(output: object, *, need_features: bool, position: int) -> tuple["torch.Tensor", "torch.Tensor | None"]:
    """``(logits, features)`` from what a member's forward returned.

    Args:
        output: a logits tensor, or a tuple/list whose first two items are logits and features.
        need_features: a later member connects to this one, so features must be there.
        position: the member's 1-based position, for messages.

    Raises:
        ConversionError: the output does not follow the member contract.
    """
    if isinstance(output, torch.Tensor):
        logits, features = output, None
    elif isinstance(output, (tuple, list)) and len(output) >= 1 and isinstance(output[0], torch.Tensor):
        logits = output[0]
        features = output[1] if len(output) > 1 and isinstance(output[1], torch.Tensor) else None
    else:
        raise ConversionError(
            f"member {position} returned {type(output).__name__}; forward must return logits or (logits, features)"
        )
    if logits.dim() != 2:
        raise ConversionError(f"member {position} logits have shape {tuple(logits.shape)}; return (N, classes)")
    if need_features and features is None:
        raise ConversionError(
            f"member {position} returns no features but a later member connects to it; return (logits, features)"
        )
    return logits, features


class MemberHead(nn.Module):
    """A member plus the in-graph combine, softmax and entropy; what gets exported and gated.

    ``forward(x, [prev_logits,] *connections)`` returns ``(logits, probs, entropy[, features])``.
    """

    def __init__(
        self,
        member: nn.Module,
        *,
        position: int = 1,
        combine: str = "sum",
        num_connections: int = 0,
        emit_features: bool = False,
        num_classes: int | None = None,
    ) -> None:
        """Wrap ``member``.

        Args:
            member: the torch member (see the module docstring for its contract).
            position: 1-based place in the ensemble; 1 takes no ``prev_logits``.
            combine: "sum" or "mean" of member logits.
            num_connections: how many earlier members' features ``forward`` passes on to ``member``.
            emit_features: also return ``features`` (a later member connects to this one).
            num_classes: when given, the member's logits must have this many columns.

        Raises:
            ConversionError: a bad position or combine rule.
        """
        super().__init__()
        if position < 1:
            raise ConversionError(f"member position {position} must be >= 1 (1 = the first member)")
        if combine not in COMBINE_RULES:
            raise ConversionError(f"combine '{combine}' is unknown; use one of {list(COMBINE_RULES)}")
        if num_connections < 0:
            raise ConversionError("num_connections must be >= 0")
        self.member = member
        self.position = position
        self.combine = combine
        self.num_connections = num_connections
        self.emit_features = emit_features
        self.num_classes = num_classes

    @property
    def takes_prev_logits(self) -> bool:
        return self.position > 1

    def forward(self, x: "torch.Tensor", *inputs: "torch.Tensor") -> tuple["torch.Tensor", ...]:
        expected = int(self.takes_prev_logits) + self.num_connections
        if len(inputs) != expected:
            raise ConversionError(f"member {self.position} got {len(inputs)} extra inputs, expected {expected}")
        prev_logits = inputs[0] if self.takes_prev_logits else None
        connections = inputs[1:] if self.takes_prev_logits else inputs
        own, features = split_member_output(
            self.member(x, *connections), need_features=self.emit_features, position=self.position
        )
        if self.num_classes is not None and own.shape[1] != self.num_classes:
            raise ConversionError(
                f"member {self.position} outputs {own.shape[1]} classes; the task has {self.num_classes} labels"
            )
        if prev_logits is None:
            logits = own
        elif self.combine == "sum":
            logits = prev_logits + own
        else:
            k = float(self.position)
            logits = (prev_logits * (k - 1.0) + own) / k
        log_probs = torch.log_softmax(logits, dim=-1)
        probs = torch.exp(log_probs)
        entropy = -(probs * log_probs).sum(dim=-1)
        if self.emit_features:
            assert features is not None  # split_member_output enforced it
            return logits, probs, entropy, features
        return logits, probs, entropy


def output_names(head: MemberHead) -> list[str]:
    """Graph output names of ``head`` in the order its forward returns them."""
    return ["logits", "probs", "entropy"] + (["features"] if head.emit_features else [])


@contextlib.contextmanager
def _export_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode and no autograd for the export; the caller's train/eval flags are restored after."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, training in flags:
            m.training = training


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's per-call warnings (optional torchvision ops, deprecations): a CLI prints one line."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _innermost(exc: BaseException) -> BaseException:
    """The exception at the root of ``exc``'s cause chain: the exporter wraps the reason in pages of advice."""
    while exc.__cause__ is not None and not isinstance(exc, ConversionError):
        exc = exc.__cause__
    return exc


def export_member(
    head: MemberHead,
    example_x: "torch.Tensor",
    example_inputs: Sequence["torch.Tensor"] = (),
    *,
    input_name: str = "x",
    connection_names: Sequence[str] = (),
) -> bytes:
    """Export a wrapped member to ONNX bytes (opset 18, dynamic batch, weights inside).

    Args:
        head: the member with its head.
        example_x: a real input batch of at least 2 rows (batch 1 would be specialised into the graph).
        example_inputs: ``prev_logits`` (positions > 1) then the connection tensors, batch-aligned with x.
        input_name: the graph name of ``x`` (the task's input name).
        connection_names: graph input names of the connections, in forward order.

    Returns:
        The serialised ``onnx.ModelProto``.

    Raises:
        ConversionError: bad example shapes or names, or the exporter failed.
    """
    if len(connection_names) != head.num_connections:
        raise ConversionError(f"{len(connection_names)} connection names for {head.num_connections} connections")
    names = [input_name] + (["prev_logits"] if head.takes_prev_logits else []) + list(connection_names)
    args = (example_x, *example_inputs)
    if len(args) != len(names):
        raise ConversionError(f"member {head.position} needs inputs {names}, got {len(args)} example tensors")
    if len(set(names)) != len(names):
        raise ConversionError(f"graph input names repeat: {names}; give each connection its own name")
    if example_x.shape[0] < 2 or any(a.shape[0] != example_x.shape[0] for a in args):
        raise ConversionError("export examples need the same batch of >= 2 rows in every input")
    batch = torch.export.Dim("batch")
    # torch.export matches dynamic_shapes to forward's signature: x, then the *inputs tuple if non-empty.
    dynamic_shapes: tuple[object, ...] = ({0: batch},)
    if example_inputs:
        dynamic_shapes += (tuple({0: batch} for _ in example_inputs),)
    with _export_mode(head), _quiet_exporter():
        try:
            program = torch.onnx.export(
                head,
                tuple(a.detach().float() for a in args),
                dynamo=True,
                opset_version=OPSET,
                input_names=names,
                output_names=output_names(head),
                dynamic_shapes=dynamic_shapes,
                external_data=False,
                optimize=True,
                verbose=False,
            )
        except Exception as exc:  # torch.export/onnxscript raise many unrelated types
            cause = _innermost(exc)
            if isinstance(cause, ConversionError):  # our own contract check, raised while tracing
                raise cause from None
            raise ConversionError(
                f"torch.onnx.export failed for member {head.position}: {error_line(cause)}; "
                "make forward traceable (no data-dependent Python control flow)"
            ) from exc
    if program is None:  # pragma: no cover - dynamo=True always returns a program
        raise ConversionError("torch.onnx.export returned nothing; upgrade torch to >= 2.5")
    proto = program.model_proto
    lower_ir_version(proto)
    data: bytes = proto.SerializeToString()
    return data


def export_onnx(model: nn.Module, example_x: "torch.Tensor", *, input_name: str = "x", emit_features: bool = False) -> bytes:
    """Export one plain model as a first-member graph: ``x -> logits, probs, entropy[, features]``.

    This is exactly what a one-member bundle holds, so a benchmark that times this file times what the
    device would run. It is *not* gated; :func:`exporters.export_model` is the gated path.

    Args:
        model: a classifier returning logits or ``(logits, features)``.
        example_x: a real input batch of >= 2 rows.
        input_name: graph name of the input.
        emit_features: also output ``features``.

    Returns:
        ONNX bytes.

    Raises:
        ConversionError: the exporter failed or the model breaks the member contract.
    """
    head = MemberHead(model, position=1, emit_features=emit_features)
    return export_member(head, example_x, input_name=input_name)
