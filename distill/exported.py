"""Load a ``torch.export`` program (``.pt2``, written by ``torch.export.save``) as a trainable ``nn.Module``.

``ExportedProgram.module()`` gives a graph of aten calls: ``aten.linear`` / ``aten.conv1d`` / ``aten.conv2d``
with the weights as attributes, no ``nn.Linear`` or ``nn.Conv2d`` in sight, and a module that refuses
``train()``. The methods that rewrite layers (low-rank, FCPTS, DSD², channel pruning) look for real layers, so
:func:`load_exported_module` rewrites the graph (an FX pass): each such call whose weight (and bias) is a
parameter used by that call only becomes a ``call_module`` of a new ``nn.Linear`` / ``nn.Conv1d`` /
``nn.Conv2d`` holding the *same* parameters, placed at the parameter's original module path (``head``,
``blocks.0.conv1``); likewise each ``aten.batch_norm`` in eval form (how a model exported in eval mode
holds it) becomes an ``nn.BatchNorm1d/2d`` with the same weight, bias and running statistics. The result is
a plain :class:`torch.fx.GraphModule`: ``train()``/``eval()`` work and mean what they meant for the
original module (BatchNorm uses batch statistics and updates the running ones while training), gradients
reach every parameter, and in eval mode its logits equal the program's. A call whose tensors are shared
or not parameters stays functional and is listed in ``exported_functional``; every other op stays as the
program has it.

Safety: the program is loaded by :func:`exporters.pt2_safety.load_program_safely`, which refuses archives
whose loading could run code (pickles, foreign node targets, ``eval``-ed shape strings, binaries), forces
weights-only ``torch.load`` and drops the file's guard code; its refusals become :class:`CheckpointError`.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import fx, nn

from distill.errors import CheckpointError
from exporters.errors import ExportError
from exporters.pt2_safety import load_program_safely

__all__ = ["load_exported_module", "modularise"]

_ATEN = torch.ops.aten
_LAYER_OPS = {
    _ATEN.linear.default: nn.Linear,
    _ATEN.conv1d.default: nn.Conv1d,
    _ATEN.conv1d.padding: nn.Conv1d,
    _ATEN.conv2d.default: nn.Conv2d,
    _ATEN.conv2d.padding: nn.Conv2d,
}


def _arguments(node: fx.Node) -> dict[str, Any]:
    """The call's arguments by schema name, defaults filled in."""
    schema = node.target._schema  # type: ignore[union-attr]  # an op node's target is an OpOverload (fx types it as a union)
    bound: dict[str, Any] = {}
    for i, arg in enumerate(schema.arguments):
        if i < len(node.args):
            bound[arg.name] = node.args[i]
        elif arg.name in node.kwargs:
            bound[arg.name] = node.kwargs[arg.name]
        else:
            bound[arg.name] = arg.default_value
    return bound


def _is_parameter(gm: fx.GraphModule, target: str) -> bool:
    try:
        gm.get_parameter(target)
    except AttributeError:
        return False
    return True


def _layer_for(node: fx.Node, weight: nn.Parameter, bias: nn.Parameter | None) -> nn.Module | None:
    kind = _LAYER_OPS[node.target]  # type: ignore[index]  # callers pass only nodes whose target is a key
    args = _arguments(node)
    if kind is nn.Linear:
        if weight.dim() != 2:
            return None
        layer: nn.Module = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    else:
        if weight.dim() != (3 if kind is nn.Conv1d else 4):
            return None
        groups = int(args["groups"])
        padding = args["padding"] if isinstance(args["padding"], str) else tuple(int(p) for p in args["padding"])
        layer = kind(
            weight.shape[1] * groups,
            weight.shape[0],
            tuple(weight.shape[2:]),
            stride=tuple(int(s) for s in args["stride"]),
            padding=padding,
            dilation=tuple(int(d) for d in args["dilation"]),
            groups=groups,
            bias=bias is not None,
            device="meta",
        )
    layer.weight = weight
    layer.bias = bias  # type: ignore[assignment]  # None is how torch spells a layer without bias
    return layer


def _owner(gm: fx.GraphModule, nodes: dict[str, Any], params: set[str], buffers: set[str]) -> str | None:
    """The module path that holds exactly the tensors ``nodes`` read (``{attr: get_attr node}``), or None.

    The owner must hold the parameters ``params`` and no others, only buffers among ``buffers``, no
    submodules, and each tensor must be read by this one call.
    """
    targets = {attr: str(node.target) for attr, node in nodes.items()}
    paths = {t.rpartition(".")[0] for t in targets.values()}
    if len(paths) != 1 or any(t.rpartition(".")[2] != attr for attr, t in targets.items()):
        return None
    path = paths.pop()
    if not path:
        return None
    owner = gm.get_submodule(path)
    if (
        type(owner) is not nn.Module  # already rewritten, or a real module the graph only reads from
        or set(dict(owner.named_parameters(recurse=False))) != params
        or not set(dict(owner.named_buffers(recurse=False))) <= buffers
        or list(owner.children())
        or any(len(node.users) != 1 for node in nodes.values())
    ):
        return None
    return path


def _get_attrs(args: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any] | None:
    """{name: get_attr node} for the tensor arguments given (None ones left out); None if one is not a get_attr."""
    found = {}
    for name in names:
        node = args[name]
        if node is None:
            continue
        if not isinstance(node, fx.Node) or node.op != "get_attr":
            return None
        found[name] = node
    return found


def _swap(gm: fx.GraphModule, node: fx.Node, path: str, layer: nn.Module, source: fx.Node, reads: dict[str, Any]) -> None:
    """Put ``layer`` at ``path`` and replace the call ``node`` by a call of it on ``source``."""
    parent_path, _, child = path.rpartition(".")
    setattr(gm.get_submodule(parent_path) if parent_path else gm, child, layer)
    graph = gm.graph
    with graph.inserting_before(node):
        call = graph.call_module(path, (source,))
    call.meta = dict(node.meta)
    node.replace_all_uses_with(call)
    graph.erase_node(node)
    for attr in reads.values():
        if not attr.users:
            graph.erase_node(attr)


def _batch_norm(gm: fx.GraphModule, node: fx.Node, args: dict[str, Any]) -> str | None:
    """Rewrite an eval-form ``aten.batch_norm`` into ``nn.BatchNorm1d/2d``; the reason when it cannot."""
    if args["training"] or args["running_mean"] is None or (args["weight"] is None) != (args["bias"] is None):
        return "not in eval form with running statistics"
    value = getattr(args["input"], "meta", {}).get("val")
    rank = value.dim() if isinstance(value, torch.Tensor) else None
    kind = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d}.get(rank) if rank else None
    reads = _get_attrs(args, ("weight", "bias", "running_mean", "running_var"))
    if kind is None or reads is None:
        return "input rank or statistics not understood"
    affine = args["weight"] is not None
    path = _owner(gm, reads, {"weight", "bias"} if affine else set(), {"running_mean", "running_var", "num_batches_tracked"})
    if path is None:
        return "its tensors do not sit alone in one module"
    owner = gm.get_submodule(path)
    mean = owner.get_buffer("running_mean")
    layer = kind(mean.numel(), eps=float(args["eps"]), momentum=float(args["momentum"]), affine=affine, device="meta")
    if affine:
        layer.weight, layer.bias = owner.get_parameter("weight"), owner.get_parameter("bias")
    layer.running_mean, layer.running_var = mean, owner.get_buffer("running_var")
    if "num_batches_tracked" in dict(owner.named_buffers(recurse=False)):
        layer.num_batches_tracked = owner.get_buffer("num_batches_tracked")
    else:
        layer.num_batches_tracked = torch.zeros((), dtype=torch.long)
    _swap(gm, node, path, layer, args["input"], reads)
    return None


def _linear_or_conv(gm: fx.GraphModule, node: fx.Node, args: dict[str, Any]) -> str | None:
    """Rewrite ``aten.linear`` / ``aten.conv1d`` / ``aten.conv2d`` into a layer; the reason when it cannot."""
    reads = _get_attrs(args, ("weight", "bias"))
    if reads is None or "weight" not in reads:
        return "weight or bias is not a parameter of the program"
    if not all(_is_parameter(gm, str(n.target)) for n in reads.values()):
        return "weight or bias is a constant, not a parameter"
    path = _owner(gm, reads, set(reads), set())
    if path is None:
        return "its parameters do not sit alone in one module"
    owner = gm.get_submodule(path)
    bias = owner.get_parameter("bias") if "bias" in reads else None
    layer = _layer_for(node, owner.get_parameter("weight"), bias)
    if layer is None:
        return "unexpected weight shape"
    _swap(gm, node, path, layer, args["input"], reads)
    return None


def modularise(gm: fx.GraphModule) -> tuple[fx.GraphModule, dict[str, str]]:
    """Rewrite layer calls of an aten graph into ``nn`` modules holding the same parameters and buffers.

    ``aten.linear`` / ``aten.conv1d`` / ``aten.conv2d`` become ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d``;
    ``aten.batch_norm`` in eval form (running statistics, ``training=False``: how a model exported in
    eval mode holds it) becomes ``nn.BatchNorm1d`` / ``nn.BatchNorm2d``. A call is rewritten when the
    tensors it reads are read by that call only and sit alone in one module (the original module's
    path); the new module takes those very tensors and that path. Other calls stay functional (their
    parameters still train; a functional BatchNorm keeps its eval form).

    Args:
        gm: an FX graph module of aten calls, e.g. ``ExportedProgram.module()`` (changed in place).

    Returns:
        (a new plain GraphModule sharing ``gm``'s parameters and buffers, {call name: why it stayed
        functional} for the layer calls not rewritten).
    """
    kept: dict[str, str] = {}
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        if node.target in _LAYER_OPS:
            why = _linear_or_conv(gm, node, _arguments(node))
        elif node.target is _ATEN.batch_norm.default:
            why = _batch_norm(gm, node, _arguments(node))
        else:
            continue
        if why is not None:
            kept[node.name] = why
    gm.graph.lint()
    out = fx.GraphModule(gm, gm.graph, class_name="ExportedClassifier")
    for name in ("_in_spec", "_out_spec"):  # the pytree calling convention of the exported forward
        if hasattr(gm, name):
            setattr(out, name, getattr(gm, name))
    return out, kept


def load_exported_module(path: str | os.PathLike[str]) -> nn.Module:
    """A trainable module from a ``torch.export`` program file, its Linear/Conv calls as real layers.

    Args:
        path: a ``.pt2`` file written by ``torch.export.save``.

    Returns:
        A :class:`torch.fx.GraphModule` in eval mode whose forward is the program's (same inputs, same
        outputs); ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` / ``nn.BatchNorm1d/2d`` modules where the
        program called the matching aten op on its own tensors. ``module.exported_functional`` lists
        the calls left functional and why.

    Raises:
        CheckpointError: the file is missing, not a torch.export program, or holds something whose loading
            could run code (see :mod:`exporters.pt2_safety`); one line.
    """
    try:
        program = load_program_safely(path)
    except ExportError as exc:  # the distill boundary: one error family for the training commands
        raise CheckpointError(str(exc)) from None
    module, functional = modularise(program.module())
    module.exported_functional = functional  # type: ignore[assignment]  # a plain attribute on the module, read by the CLI
    return module.eval()
