"""The toolkit's own model families (distill.models) export through the gates, connections included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from distill.models import ModelConfig, build_model
from edge_runtime.bundle import TaskSpec, TensorSpec, load_bundle
from edge_runtime.session import create_session
from exporters import export_ensemble

torch.set_num_threads(1)


def test_connected_cnn1d_members_from_distill_models(tmp_path: Path) -> None:
    torch.manual_seed(0)
    shape = (1, 12)
    first = build_model(ModelConfig(input_shape=shape, num_classes=4, width=2, depth=1, hidden=6))
    second = build_model(ModelConfig(input_shape=shape, num_classes=4, width=3, depth=1, hidden=5, connection_dims=(6,)))
    x = torch.randn(64, *shape)
    with torch.no_grad():
        y = first(x)[0].argmax(1)  # labels the first member gets right: its accuracy is 1 by construction
    task = TaskSpec(labels=("a", "b", "c", "d"), input=TensorSpec("signal", (-1, *shape)))
    result = export_ensemble([first, second], task, tmp_path / "b", heldout=(x, y), connections=[(), (0,)], combine="mean")
    assert result.members[0].gates.torch_accuracy == result.members[0].gates.onnx_accuracy == 1.0

    bundle = load_bundle(result.path)
    one, two = bundle.manifest.members
    assert one.outputs[-1] == "features" and [c.input for c in two.connections] == ["features_from_0"]
    fresh = torch.randn(3, *shape)
    s1, s2 = (create_session(b) for b in bundle.member_bytes)
    logits1, _, _, features = s1.run(None, {"signal": fresh.numpy()})
    logits2, probs2, entropy2 = s2.run(None, {"signal": fresh.numpy(), "prev_logits": logits1, "features_from_0": features})
    with torch.no_grad():
        own1, h1 = first(fresh)
        own2, _ = second(fresh, h1)
    want = ((own1 + own2) / 2).numpy()
    np.testing.assert_allclose(logits2, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(probs2, torch.softmax(torch.from_numpy(want), 1).numpy(), atol=1e-5)
    assert entropy2.shape == (3,) and np.all(entropy2 >= 0) and np.all(entropy2 <= np.log(4) + 1e-5)
    np.testing.assert_allclose(features, h1.numpy(), rtol=1e-4, atol=1e-6)
