"""Factor the Linear and Conv layers of a trained model into low-rank pairs, initialised spectrally.

A layer with weight ``W`` (``out x in`` for Linear; ``out x (in*k...)`` for a Conv, its kernel flattened)
is replaced by a chain whose product is the best rank-``r`` approximation of ``W`` (Eckart-Young, from
the SVD ``W = U S V^T``):

* Linear ``in -> out`` becomes Linear ``in -> r`` (no bias) then Linear ``r -> out`` (the bias);
* Conv ``in -> out``, kernel ``k`` becomes Conv ``in -> r`` with the same kernel, stride, padding and
  dilation (no bias) then a pointwise (1x1) Conv ``r -> out`` (the bias).

With ``factors=2`` the singular values are split evenly, ``down = sqrt(S) V^T`` and ``up = U sqrt(S)``;
with ``factors=3`` the chain is the paper's ``width -> r -> r -> width`` shape, ``V^T``, ``diag(S)``, ``U``
(Kwon et al. spectral init; for a trained layer the SVD of its own weights is the natural surrogate).
Each factor is a separate module, so the ONNX export keeps separate MatMul/Gemm/Conv nodes and ONNX
Runtime runs ``r * (in + out)`` multiply-adds per output position instead of ``in * out``.

A layer is only factored when that count is at most ``max_macs_ratio`` (default 0.75) of the dense one:
a pair that saves little still pays a second node's fixed cost in ONNX Runtime, and factoring a small
classifier head below the class count only constrains the logits. Every ``nn.Linear`` / ``nn.Conv1d`` /
``nn.Conv2d`` of any module is a candidate (bias-free, before BatchNorm, inside residual blocks: only the
layer is swapped, the forward is the model's own); grouped and depthwise convs, layers the forward never
calls, and layers kept on purpose stay dense, and each plan says why (``LayerPlan.note``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Collection, Mapping

import numpy as np
import torch
from torch import nn

from distill.errors import TrainingError
from distill.layers import candidate_layers, trace_layers

__all__ = [
    "LayerPlan",
    "LowRankConv",
    "LowRankLinear",
    "describe_plans",
    "factorize",
    "factorable_layers",
    "plan_ranks",
    "rank_for_energy",
]

_CONVS = (nn.Conv1d, nn.Conv2d)


def _matrix(layer: nn.Module) -> torch.Tensor:
    """The layer's weight as an ``out x fan_in`` matrix (a Conv kernel flattened over in-channels x taps)."""
    weight = layer.weight.detach()
    return weight.reshape(weight.shape[0], -1).double()


def _svd(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.linalg.svd(_matrix(layer), full_matrices=False)


def rank_for_energy(singular_values: torch.Tensor, energy: float) -> int:
    """Smallest ``r`` whose top-``r`` singular values keep at least ``energy`` of ``sum(s^2)``.

    Args:
        singular_values: in decreasing order.
        energy: fraction in (0, 1].

    Returns:
        The rank, at least 1.
    """
    if not 0.0 < energy <= 1.0:
        raise TrainingError(f"energy {energy} must lie in (0, 1]; e.g. 0.9 keeps 90% of the spectral energy")
    power = singular_values.double() ** 2
    total = float(power.sum())
    if total == 0.0:
        return 1
    cumulative = torch.cumsum(power, 0) / total
    # The small tolerance keeps energy=1.0 from demanding one more rank than rounding allows.
    return int(torch.searchsorted(cumulative, torch.tensor(energy - 1e-12, dtype=cumulative.dtype)).item()) + 1


class LowRankLinear(nn.Module):
    """``in -> r [-> r] -> out`` Linear chain standing for one rank-``r`` Linear layer."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True, factors: int = 2) -> None:
        super().__init__()
        if factors not in (2, 3):
            raise TrainingError(f"factors must be 2 or 3, got {factors}")
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False)
        self.middle = nn.Linear(rank, rank, bias=False) if factors == 3 else None
        self.up = nn.Linear(rank, out_features, bias=bias)

    @classmethod
    def from_linear(cls, layer: nn.Linear, rank: int, factors: int = 2) -> "LowRankLinear":
        """Spectral init: the chain's product is the best rank-``rank`` approximation of ``layer.weight``."""
        new = cls(layer.in_features, layer.out_features, rank, bias=layer.bias is not None, factors=factors)
        _load_factors(new, layer, rank, lambda m: m)
        return new.to(layer.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)
        if self.middle is not None:
            x = self.middle(x)
        return self.up(x)


class LowRankConv(nn.Module):
    """A Conv ``in -> r`` with the original kernel, [a 1x1 ``r -> r``], then a 1x1 Conv ``r -> out``."""

    def __init__(self, layer: nn.Conv1d | nn.Conv2d, rank: int, factors: int = 2) -> None:
        super().__init__()
        if factors not in (2, 3):
            raise TrainingError(f"factors must be 2 or 3, got {factors}")
        conv = type(layer)
        self.rank = rank
        self.down = conv(
            layer.in_channels,
            rank,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            bias=False,
            padding_mode=layer.padding_mode,
        )
        self.middle = conv(rank, rank, 1, bias=False) if factors == 3 else None
        self.up = conv(rank, layer.out_channels, 1, bias=layer.bias is not None)

    @classmethod
    def from_conv(cls, layer: nn.Conv1d | nn.Conv2d, rank: int, factors: int = 2) -> "LowRankConv":
        """Spectral init from the SVD of the kernel flattened to ``out x (in * taps)``."""
        new = cls(layer, rank, factors=factors)
        _load_factors(new, layer, rank, lambda m: m.reshape(*m.shape, *([1] * (layer.weight.dim() - 2))))
        new.down.weight.data = new.down.weight.data.reshape(rank, *layer.weight.shape[1:])
        return new.to(layer.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)
        if self.middle is not None:
            x = self.middle(x)
        return self.up(x)


def _load_factors(
    new: LowRankLinear | LowRankConv,
    layer: nn.Module,
    rank: int,
    to_kernel: Callable[[torch.Tensor], torch.Tensor],
) -> None:
    """Write the truncated SVD of ``layer.weight`` into ``new``'s factors (``to_kernel`` adds 1x1 taps)."""
    u, s, vt = _svd(layer)
    u, s, vt = u[:, :rank], s[:rank], vt[:rank]
    if new.middle is None:
        root = s.sqrt()
        down, up = root[:, None] * vt, u * root[None, :]
    else:
        down, up = vt, u
        new.middle.weight.data = to_kernel(torch.diag(s)).to(new.middle.weight.dtype)
    new.down.weight.data = down.reshape(rank, -1).to(new.down.weight.dtype)
    new.up.weight.data = to_kernel(up).to(new.up.weight.dtype)
    if layer.bias is not None and new.up.bias is not None:
        new.up.bias.data = layer.bias.detach().clone()


@dataclass(frozen=True)
class LayerPlan:
    """What happens to one Linear/Conv layer of the model."""

    name: str  # dotted module name
    kind: str  # "linear", "conv1d" or "conv2d"
    shape: tuple[int, int]  # (out, fan_in) of the weight matrix
    full_rank: int  # min(out, fan_in)
    rank: int  # chosen rank
    energy: float  # fraction of spectral energy the chosen rank keeps
    factor: bool  # True when the pair saves enough multiply-adds (else the layer stays dense)
    note: str = ""  # why the layer stays dense ("" when factored)

    @property
    def dense_macs(self) -> int:
        """Multiply-adds per output position of the dense layer."""
        return self.shape[0] * self.shape[1]

    @property
    def factored_macs(self) -> int:
        """Multiply-adds per output position of the rank-``rank`` pair (2 factors)."""
        return self.rank * (self.shape[0] + self.shape[1])


def factorable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Linear and ungrouped Conv1d/Conv2d layers by dotted name, in module order (what can be factored)."""
    return {name: m for name, m in candidate_layers(model).items() if _unsupported(m) is None}


def _unsupported(layer: nn.Module) -> str | None:
    """Why this layer cannot be factored, or None."""
    if isinstance(layer, _CONVS) and layer.groups != 1:
        if layer.groups == layer.in_channels:
            return f"depthwise conv (groups={layer.groups}): each filter sees one channel, nothing to factor"
        return f"grouped conv (groups={layer.groups}): not supported by the factorisation"
    return None


def plan_ranks(
    model: nn.Module,
    *,
    energy: float | None = None,
    rank: int | None = None,
    ranks: Mapping[str, int] | None = None,
    max_macs_ratio: float = 0.75,
    keep: Collection[str] | Mapping[str, str] = (),
    example: np.ndarray | torch.Tensor | None = None,
) -> list[LayerPlan]:
    """Choose a rank for every Linear/Conv layer; exactly one of ``energy``, ``rank``, ``ranks`` is given.

    Every ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` gets a plan; the ones that stay dense say why in
    ``note``: grouped or depthwise convs (not supported), layers the forward never calls (only known with
    ``example``), layers in ``keep``, and layers the chosen rank would not make cheap enough.

    Args:
        model: the trained model (any module; see :mod:`distill.layers`).
        energy: keep this fraction of each layer's spectral energy (per-layer ranks differ).
        rank: the same rank for every layer (capped at the layer's full rank).
        ranks: an explicit rank per layer name; layers not named stay dense.
        max_macs_ratio: factor a layer only if the pair costs at most this fraction of its multiply-adds.
        keep: names of layers that stay dense whatever the rank (e.g. the classifier head); a mapping
            gives the reason reported for each.
        example: a few model-ready inputs; when given, layers the forward does not call stay dense.

    Returns:
        One plan per Linear/Conv layer, in module order.

    Raises:
        TrainingError: not exactly one choice, a rank below 1, or a name that is not a factorable layer.
    """
    if sum(x is not None for x in (energy, rank, ranks)) != 1:
        raise TrainingError("give exactly one of energy, rank or ranks")
    if rank is not None and rank < 1:
        raise TrainingError(f"rank must be >= 1, got {rank}")
    if not 0.0 < max_macs_ratio <= 1.0:
        raise TrainingError(f"max_macs_ratio {max_macs_ratio} must lie in (0, 1]")
    layers = candidate_layers(model)
    reasons = dict(keep) if isinstance(keep, Mapping) else {name: "kept dense (keep)" for name in keep}
    unknown_keep = sorted(set(reasons) - set(layers))
    if unknown_keep:
        raise TrainingError(f"keep names {unknown_keep} that are not Linear/Conv layers; choose from {list(layers)}")
    if ranks is not None:
        unknown = sorted(set(ranks) - set(layers))
        if unknown:
            raise TrainingError(f"{unknown} are not Linear/Conv layers of the model; choose from {list(layers)}")
        refused = {n: _unsupported(layers[n]) for n in ranks if _unsupported(layers[n])}
        if refused:
            name, why = next(iter(refused.items()))
            raise TrainingError(f"'{name}' cannot be factored: {why}; leave it out of ranks")
    unused = set(trace_layers(model, example).unused) if example is not None else set()
    plans = []
    for name, layer in layers.items():
        matrix = _matrix(layer)
        out, fan_in = matrix.shape
        full = min(out, fan_in)
        kind = "linear" if isinstance(layer, nn.Linear) else type(layer).__name__.lower()
        skip = _unsupported(layer) or ("not called by the model's forward" if name in unused else None) or reasons.get(name)
        if skip is not None:
            plans.append(LayerPlan(name, kind, (out, fan_in), full, full, 1.0, False, skip))
            continue
        s = torch.linalg.svdvals(matrix)
        if energy is not None:
            chosen = rank_for_energy(s, energy)
        elif rank is not None:
            chosen = min(rank, full)
        else:
            assert ranks is not None
            chosen = min(int(ranks.get(name, full)), full)
            if chosen < 1:
                raise TrainingError(f"rank for '{name}' must be >= 1")
        power = s.double() ** 2
        kept = float(power[:chosen].sum() / power.sum()) if float(power.sum()) > 0 else 1.0
        ratio = chosen * (out + fan_in) / (out * fan_in)
        saves = ratio <= max_macs_ratio
        note = "" if saves else f"rank {chosen} would cost {ratio:.2f}x the dense multiply-adds (limit {max_macs_ratio})"
        plans.append(LayerPlan(name, kind, (out, fan_in), full, chosen, kept, saves, note))
    return plans


def factorize(model: nn.Module, plans: list[LayerPlan], factors: int = 2) -> nn.Module:
    """A copy of ``model`` with every planned layer (``factor=True``) replaced by its low-rank chain.

    The copy keeps the model's own ``forward`` (whatever it returns: plain logits, ``(logits, features)``,
    a mapping) because only submodules are swapped. ``model`` itself is not changed.
    """
    new = copy.deepcopy(model)
    for plan in plans:
        if not plan.factor:
            continue
        parent_name, _, child = plan.name.rpartition(".")
        parent = new.get_submodule(parent_name) if parent_name else new
        layer = getattr(parent, child)
        if isinstance(layer, nn.Linear):
            replacement: nn.Module = LowRankLinear.from_linear(layer, plan.rank, factors=factors)
        elif isinstance(layer, _CONVS) and _unsupported(layer) is None:
            replacement = LowRankConv.from_conv(layer, plan.rank, factors=factors)
        else:
            raise TrainingError(f"layer '{plan.name}' is a {type(layer).__name__} that cannot be factored; re-plan the model")
        setattr(parent, child, replacement)
    return new


def describe_plans(plans: list[LayerPlan]) -> list[dict[str, object]]:
    """JSON-ready rows for reports."""
    return [
        {
            "layer": p.name,
            "kind": p.kind,
            "shape": list(p.shape),
            "rank": p.rank if p.factor else p.full_rank,
            "full_rank": p.full_rank,
            "energy_kept": round(p.energy, 6) if p.factor else 1.0,
            "factored": p.factor,
            "macs_ratio": round(p.factored_macs / p.dense_macs, 4) if p.factor else 1.0,
            "note": p.note,
        }
        for p in plans
    ]
