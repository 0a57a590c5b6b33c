"""Spectral factorisation of real layers: exactness, Eckart-Young truncation, rank plans, the ONNX graph."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from distill.errors import TrainingError
from distill.lowrank.factorize import LowRankConv, LowRankLinear, factorize, plan_ranks, rank_for_energy
from distill.models import ModelConfig, build_model, count_params


def _full_rank_plans(model: nn.Module) -> list:
    # Force every layer to be factored at full rank: the chain must then reproduce the layer exactly.
    return [p.__class__(**{**p.__dict__, "factor": True}) for p in plan_ranks(model, rank=10_000)]


def test_rank_for_energy_counts_squared_singular_values() -> None:
    s = torch.tensor([3.0, 2.0, 1.0])  # energies 9/14, 13/14, 14/14
    assert rank_for_energy(s, 0.5) == 1
    assert rank_for_energy(s, 9 / 14) == 1
    assert rank_for_energy(s, 0.9) == 2
    assert rank_for_energy(s, 0.95) == 3
    assert rank_for_energy(s, 1.0) == 3
    with pytest.raises(TrainingError, match="energy"):
        rank_for_energy(s, 0.0)


@pytest.mark.parametrize("factors", [2, 3])
@pytest.mark.parametrize(
    "layer, shape",
    [
        (nn.Linear(20, 12), (3, 20)),
        (nn.Conv2d(4, 8, 3, padding=1), (2, 4, 9, 9)),
        (nn.Conv2d(3, 6, 3, stride=2, padding=2, dilation=2), (2, 3, 11, 11)),
        (nn.Conv1d(4, 8, 5, stride=2, padding=2), (2, 4, 17)),
    ],
)
def test_full_rank_chain_reproduces_the_layer(layer: nn.Module, shape: tuple[int, ...], factors: int) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(layer)
    factored = factorize(model, _full_rank_plans(model), factors=factors)
    assert isinstance(factored[0], (LowRankLinear, LowRankConv))
    assert (factored[0].middle is not None) == (factors == 3)
    x = torch.randn(shape)
    torch.testing.assert_close(factored(x), model(x), atol=1e-5, rtol=1e-5)


def test_truncated_chain_is_the_best_rank_r_approximation() -> None:
    torch.manual_seed(1)
    layer = nn.Linear(30, 16)
    low = LowRankLinear.from_linear(layer, rank=5)
    product = (low.up.weight @ low.down.weight).detach().double()
    s = torch.linalg.svdvals(layer.weight.detach().double())
    error = torch.linalg.matrix_norm(product - layer.weight.detach().double())
    assert float(error) == pytest.approx(float(s[5:].square().sum().sqrt()), rel=1e-4)
    torch.testing.assert_close(low.up.bias, layer.bias)
    # The even split gives both factors the same singular values.
    torch.testing.assert_close(torch.linalg.svdvals(low.up.weight), torch.linalg.svdvals(low.down.weight))


def test_conv_truncation_uses_the_flattened_kernel() -> None:
    torch.manual_seed(2)
    conv = nn.Conv2d(6, 10, 3, padding=1)
    low = LowRankConv.from_conv(conv, rank=4)
    assert tuple(low.down.weight.shape) == (4, 6, 3, 3)
    assert tuple(low.up.weight.shape) == (10, 4, 1, 1)
    product = (low.up.weight.reshape(10, 4) @ low.down.weight.reshape(4, -1)).detach()
    s = torch.linalg.svdvals(conv.weight.detach().reshape(10, -1).double())
    error = torch.linalg.matrix_norm(product.double() - conv.weight.detach().reshape(10, -1).double())
    assert float(error) == pytest.approx(float(s[4:].square().sum().sqrt()), rel=1e-4)


def test_plans_skip_layers_that_would_not_get_cheaper() -> None:
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 4))
    plans = {p.name: p for p in plan_ranks(model, rank=8)}
    assert plans["0"].factor and plans["0"].factored_macs < plans["0"].dense_macs
    assert not plans["2"].factor  # 8 * (48 + 4) > 48 * 4
    factored = factorize(model, list(plans.values()))
    assert isinstance(factored[0], LowRankLinear) and isinstance(factored[2], nn.Linear)
    assert isinstance(model[0], nn.Linear)  # the original is untouched


def test_plan_choices_are_validated() -> None:
    model = nn.Sequential(nn.Linear(8, 8))
    with pytest.raises(TrainingError, match="exactly one"):
        plan_ranks(model, energy=0.9, rank=2)
    with pytest.raises(TrainingError, match="not Linear/Conv"):
        plan_ranks(model, ranks={"nope": 2})
    with pytest.raises(TrainingError, match=">= 1"):
        plan_ranks(model, rank=0)
    named = plan_ranks(model, ranks={"0": 2})
    assert named[0].rank == 2 and named[0].factor
    assert not plan_ranks(model, rank=2, keep=("0",))[0].factor
    with pytest.raises(TrainingError, match="keep"):
        plan_ranks(model, rank=2, keep=("head",))


def test_energy_plans_give_more_rank_for_more_energy() -> None:
    model = build_model(ModelConfig(input_shape=(1, 12, 12), num_classes=5, width=8, depth=2, hidden=32))
    low = {p.name: p.rank for p in plan_ranks(model, energy=0.5)}
    high = {p.name: p.rank for p in plan_ranks(model, energy=0.95)}
    assert all(low[name] <= high[name] for name in low)
    assert sum(high.values()) > sum(low.values())


@pytest.mark.parametrize("input_shape", [(40,), (2, 24), (1, 12, 12)])
def test_factored_classifiers_keep_the_member_contract(input_shape: tuple[int, ...]) -> None:
    torch.manual_seed(3)
    model = build_model(ModelConfig(input_shape=input_shape, num_classes=5, width=16, depth=2, hidden=48)).eval()
    student = factorize(model, plan_ranks(model, rank=4)).eval()
    logits, features = student(torch.randn(3, *input_shape))
    assert logits.shape == (3, 5) and features.shape == (3, model.feature_dim)
    assert count_params(student) < count_params(model)


def test_export_keeps_each_factor_as_its_own_node() -> None:
    from exporters import export_onnx

    torch.manual_seed(4)
    model = build_model(ModelConfig(input_shape=(1, 12, 12), num_classes=5, width=8, depth=2, hidden=32)).eval()
    plans = plan_ranks(model, rank=3)
    factored_convs = sum(p.factor and p.kind == "conv2d" for p in plans)
    factored_linears = sum(p.factor and p.kind == "linear" for p in plans)
    assert factored_convs >= 1 and factored_linears >= 1
    student = factorize(model, plans).eval()
    x = torch.randn(4, 1, 12, 12)

    def ops(blob: bytes) -> list[str]:
        return [node.op_type for node in onnx.load_from_string(blob).graph.node]

    blob = export_onnx(student, x)
    dense_ops, student_ops = ops(export_onnx(model, x)), ops(blob)
    assert student_ops.count("Conv") == dense_ops.count("Conv") + factored_convs
    linear_ops = ("MatMul", "Gemm")
    dense_linear = sum(dense_ops.count(o) for o in linear_ops)
    assert sum(student_ops.count(o) for o in linear_ops) == dense_linear + factored_linears
    rank_shaped = [tuple(init.dims) for init in onnx.load_from_string(blob).graph.initializer if 3 in tuple(init.dims)[:2]]
    assert (3, 8, 3, 3) in rank_shaped  # the first conv factor: rank 3 outputs, 8 inputs, 3x3 kernel
    session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(logits, student(x)[0].detach().numpy(), atol=1e-4, rtol=1e-4)
