"""The resnet family: the model contract, BatchNorm in eval, exports through the gates, size and cost."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from distill.data import load_dataset
from distill.errors import TrainingError
from distill.models import ModelConfig, build_model, count_params
from distill.progressive.members import count_macs
from distill.teacher import default_teacher_config, load_model, save_model, train_teacher
from edge_runtime.bundle import TaskSpec, TensorSpec, load_bundle
from edge_runtime.session import create_session
from exporters import export_ensemble, export_model

torch.set_num_threads(1)


def _resnet(shape: tuple[int, ...] = (1, 16, 16), width: int = 4, depth: int = 3, **extra: Any) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(shape, num_classes=5, family="resnet", width=width, depth=depth, **extra))


def _train_steps(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 5) -> None:
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x)[0], y).backward()
        optimizer.step()


def test_contract_logits_and_pooled_features() -> None:
    model = _resnet(depth=3).eval()
    logits, features = model(torch.randn(3, 1, 16, 16))
    assert logits.shape == (3, 5) and features.shape == (3, model.feature_dim) and model.feature_dim == 4 * 2**2
    assert torch.all(features >= 0)  # pooled ReLU outputs
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    # Global pooling: the same weights take another image size.
    assert model(torch.randn(2, 1, 24, 20))[0].shape == (2, 5)


def test_connections_are_mixed_in() -> None:
    model = _resnet(connection_dims=(6,)).eval()
    x = torch.randn(2, 1, 16, 16)
    assert not torch.allclose(model(x, torch.zeros(2, 6))[0], model(x, torch.ones(2, 6))[0])
    with pytest.raises(TrainingError, match="connection tensors"):
        model(x)


def test_config_checks() -> None:
    with pytest.raises(TrainingError, match="hidden"):
        ModelConfig((1, 16, 16), 5, family="resnet", hidden=32)
    with pytest.raises(TrainingError, match="rank"):
        ModelConfig((1, 40), 5, family="resnet")
    cfg = ModelConfig((3, 16, 16), 5, family="resnet", width=8, depth=2, connection_dims=(4,))
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert ModelConfig((1, 16, 16), 5).family == "cnn2d"  # auto never picks resnet


def test_batchnorm_uses_running_statistics_in_eval() -> None:
    model = _resnet()
    x, y = torch.randn(32, 1, 16, 16), torch.randint(0, 5, (32,))
    _train_steps(model, x, y)
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert int(bn.num_batches_tracked) == 5 and not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
    with torch.no_grad():
        train_mode = model(x)[0][:1]  # batch statistics: row 0 depends on the other rows
        model.eval()
        batch, single = model(x)[0][:1], model(x[:1])[0]
    torch.testing.assert_close(batch, single, rtol=1e-4, atol=1e-5)  # running statistics: rows independent
    assert not torch.allclose(train_mode, single, atol=1e-3)


def test_exports_through_the_gates_after_training(tmp_path: Path) -> None:
    model = _resnet(depth=3)
    x = torch.randn(64, 1, 16, 16)
    _train_steps(model, x, torch.randint(0, 5, (64,)))
    model.train()  # left in training mode: the export must evaluate with running statistics and restore the flag
    with torch.no_grad():
        model.eval()
        y = model(x)[0].argmax(1)  # labels the model gets right: the accuracy gate must see 1.0 on both sides
        want = model(x[:3])[0].numpy()
        model.train()
    task = TaskSpec(labels=tuple("abcde"), input=TensorSpec("x", (-1, 1, 16, 16)))
    result = export_model(model, task, tmp_path / "b", heldout=(x, y))
    gates = result.members[0].gates
    assert gates.torch_accuracy == gates.onnx_accuracy == 1.0
    assert model.training and all(m.training for m in model.modules())
    session = create_session(load_bundle(result.path).member_bytes[0])
    logits = session.run(None, {"x": x[:3].numpy()})[0]
    np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4)


def test_connected_resnet_members_export_as_an_anytime_bundle(tmp_path: Path) -> None:
    first = _resnet(width=2, depth=2).eval()
    second = _resnet(width=2, depth=2, connection_dims=(first.feature_dim,)).eval()
    x = torch.randn(32, 1, 16, 16)
    with torch.no_grad():
        y = first(x)[0].argmax(1)
    task = TaskSpec(labels=tuple("abcde"), input=TensorSpec("x", (-1, 1, 16, 16)))
    result = export_ensemble([first, second], task, tmp_path / "b", heldout=(x, y), connections=[(), (0,)], combine="mean")
    s1, s2 = (create_session(b) for b in load_bundle(result.path).member_bytes)
    logits1, _, _, features = s1.run(None, {"x": x[:3].numpy()})
    logits2 = s2.run(None, {"x": x[:3].numpy(), "prev_logits": logits1, "features_from_0": features})[0]
    with torch.no_grad():
        own1, h1 = first(x[:3])
        want = ((own1 + second(x[:3], h1)[0]) / 2).numpy()
    np.testing.assert_allclose(logits2, want, rtol=1e-4, atol=1e-4)


def test_checkpoint_round_trip_keeps_batchnorm_state(tmp_path: Path) -> None:
    model = _resnet()
    x = torch.randn(16, 1, 16, 16)
    _train_steps(model, x, torch.randint(0, 5, (16,)))
    model.eval()
    save_model(model, tmp_path / "m")
    again, _ = load_model(tmp_path / "m")
    with torch.no_grad():
        torch.testing.assert_close(again(x)[0], model(x)[0])


def _expected_params(c: int, width: int, depth: int, classes: int) -> int:
    """Convolutions without bias, BatchNorm scale and shift, projection shortcuts where channels change."""
    total = 9 * c * width + 2 * width
    c_in = width
    for i in range(depth):
        c_out = width * 2**i
        total += 9 * c_in * c_out + 9 * c_out * c_out + 4 * c_out
        if c_in != c_out:
            total += c_in * c_out + 2 * c_out
        c_in = c_out
    return total + c_in * classes + classes


@pytest.mark.parametrize("width, depth", [(4, 1), (8, 3), (32, 4)])
def test_parameter_count(width: int, depth: int) -> None:
    assert count_params(_resnet((1, 64, 64), width, depth)) == _expected_params(1, width, depth, 5)


def test_macs_of_the_64x64_configuration() -> None:
    # Stem 1->32 at 32x32 (stride 2), stage 0 at 32x32, stages 1-3 halve the map and double the channels:
    # each of those costs the same (conv1 strided, conv2, 1x1 shortcut), then the 256->5 head.
    stem = 32 * 32 * 32 * 9
    stage0 = 2 * 32 * 32 * 32 * 32 * 9
    later = sum((32 >> i) ** 2 * (32 << i) * ((32 << i) // 2) * 10 + (32 >> i) ** 2 * (32 << i) ** 2 * 9 for i in (1, 2, 3))
    assert count_macs(_resnet((1, 64, 64), 32, 4), (1, 64, 64)) == stem + stage0 + later + 256 * 5
    # Width is the cost knob: about 4x the MACs for 2x the width.
    ratio = count_macs(_resnet((1, 64, 64), 16, 4), (1, 64, 64)) / count_macs(_resnet((1, 64, 64), 8, 4), (1, 64, 64))
    assert 3.5 < ratio < 4.1


def test_default_teacher_for_large_images_is_a_resnet_that_trains(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = np.arange(60) % 3
    x = rng.integers(0, 40, size=(60, 64, 64)).astype(np.uint8)
    for i, label in enumerate(y):  # a bright square whose position gives the class
        x[i, 8 + 16 * label : 20 + 16 * label, 20:32] = 255
    np.savez(tmp_path / "big.npz", x_train=x[:48], y_train=y[:48], x_test=x[48:], y_test=y[48:])
    data = load_dataset(tmp_path / "big.npz")
    cfg = default_teacher_config(data)
    assert cfg.family == "resnet" and cfg.hidden == 0 and cfg.epochs == 30  # ~150k images, capped at 30 epochs
    small = replace(cfg, width=4, depth=2, epochs=2, batch_size=16)  # a smoke run: a few steps on a few images
    model, metrics = train_teacher(data, small, tmp_path / "t", progress=False)
    assert model.config.family == "resnet" and metrics["params"] == count_params(model)
    again, config = load_model(tmp_path / "t")
    assert config["teacher"]["family"] == "resnet"
