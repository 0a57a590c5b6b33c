"""torch -> ONNX export into bundles: parity with torch, dynamic batch, connections, the gates.

Exports cost ~1-3 s each, so every exported bundle is a module-scoped fixture shared by several tests.
The torch reference in these tests is computed straight from the members (sum or mean of their logits,
softmax, entropy), not through the exporter's own head, so a wrong head would show up here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edge_runtime.bundle import Manifest, TaskSpec, TensorSpec, load_bundle
from edge_runtime.session import create_session
from exporters import (
    ConversionError,
    ExportError,
    ExportResult,
    VerificationError,
    export_ensemble,
    export_model,
    export_onnx,
)

torch.set_num_threads(1)

NUM_CLASSES = 3


# --- tiny members obeying forward(x, *connections) -> (logits, features) -------------------------------


class MLPMember(nn.Module):
    """Flatten -> Linear(in, rank) -> Linear(rank, hidden) (a low-rank factor pair) -> ReLU = features."""

    def __init__(self, in_features: int, hidden: int = 8, rank: int = 3, connection_dims: Sequence[int] = ()) -> None:
        super().__init__()
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, hidden)
        self.mix = nn.Linear(hidden + sum(connection_dims), hidden) if connection_dims else None
        self.head = nn.Linear(hidden, NUM_CLASSES)

    def forward(self, x: torch.Tensor, *connections: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.up(self.down(x.flatten(1))))
        if self.mix is not None:
            h = torch.relu(self.mix(torch.cat([h, *connections], dim=1)))
        return self.head(h), h


class CNN1dMember(nn.Module):
    def __init__(self, channels: int = 2, width: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv1d(channels, width, 3, padding=1),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.Conv1d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool1d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(width, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        return self.head(features), features


class CNN2dMember(nn.Module):
    """Its middle is a low-rank Conv pair: a 3x3 conv into `rank` channels, then a 1x1 conv back out."""

    def __init__(self, width: int = 6, rank: int = 2) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1)
        self.reduce = nn.Conv2d(width, rank, 3, padding=1, bias=False)
        self.expand = nn.Conv2d(rank, width, 1)
        self.head = nn.Linear(width, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.stem(x))
        h = torch.relu(self.expand(self.reduce(h)))
        features = h.mean(dim=(2, 3))
        return self.head(features), features


class StochasticMember(nn.Module):
    """A real bug class: functional dropout with training=True stays random in eval mode."""

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.body = nn.Linear(in_features, 8)
        self.head = nn.Linear(8, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.dropout(torch.relu(self.body(x.flatten(1))), p=0.5, training=True)
        return self.head(h), h


# --- data and references -------------------------------------------------------------------------------


def make_data(shape: Sequence[int], n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and labels from a fixed linear rule, so a trained member scores well above chance."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    rule = torch.randn(int(np.prod(shape)), NUM_CLASSES, generator=torch.Generator().manual_seed(123))
    return x, (x.flatten(1) @ rule).argmax(dim=1)


def task_for(shape: Sequence[int]) -> TaskSpec:
    return TaskSpec(labels=tuple(f"c{k}" for k in range(NUM_CLASSES)), input=TensorSpec("x", (-1, *shape)))


def torch_prefixes(
    members: Sequence[nn.Module], connections: Sequence[Sequence[int]], x: torch.Tensor, combine: str
) -> list[dict[str, np.ndarray]]:
    """Combined logits, probs and entropy after each member, computed directly from the members."""
    with torch.no_grad():
        own, features, result = [], [], []
        for k, m in enumerate(members):
            logits, h = m(x, *[features[j] for j in connections[k]])
            own.append(logits)
            features.append(h)
            combined = torch.stack(own).sum(0) if combine == "sum" else torch.stack(own).mean(0)
            p = torch.softmax(combined, dim=1)
            entropy = torch.special.entr(p).sum(dim=1)  # -p ln p, with 0 ln 0 = 0 for saturated rows
            result.append({"logits": combined.numpy(), "probs": p.numpy(), "entropy": entropy.numpy()})
    return result


def ort_prefixes(bundle_dir: Path, x: np.ndarray) -> list[dict[str, np.ndarray]]:
    """Run a bundle's members in ONNX Runtime the way the runtime does: feeds wired from the manifest."""
    bundle = load_bundle(bundle_dir)
    manifest: Manifest = bundle.manifest
    outputs: list[dict[str, np.ndarray]] = []
    for k, (spec, blob) in enumerate(zip(manifest.members, bundle.member_bytes)):
        feed = {manifest.task.input.name: x.astype(np.float32)}
        if k:
            feed["prev_logits"] = outputs[k - 1]["logits"]
        for conn in spec.connections:
            feed[conn.input] = outputs[conn.member][conn.output]
        session = create_session(blob, name=spec.name)
        outputs.append(dict(zip(spec.outputs, session.run(list(spec.outputs), feed))))
    return outputs


def train(
    members: Sequence[nn.Module],
    connections: Sequence[Sequence[int]],
    x: torch.Tensor,
    y: torch.Tensor,
    combine: str,
    steps: int = 80,
) -> None:
    """A few full-batch Adam steps on the combined logits: enough for accuracies well above chance."""
    params = [p for m in members for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=0.05)
    for m in members:
        m.train()
    for _ in range(steps):
        own, features = [], []
        for k, m in enumerate(members):
            logits, h = m(x, *[features[j] for j in connections[k]])
            own.append(logits)
            features.append(h)
        combined = torch.stack(own).sum(0) if combine == "sum" else torch.stack(own).mean(0)
        loss = F.cross_entropy(combined, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for m in members:
        m.eval()


def matmul_weight_shapes(model: onnx.ModelProto) -> list[tuple[int, ...]]:
    """Shapes of the weight initializers that Gemm/MatMul nodes multiply by."""
    inits = {i.name: tuple(i.dims) for i in model.graph.initializer}
    return [inits[n.input[1]] for n in model.graph.node if n.op_type in ("Gemm", "MatMul") and n.input[1] in inits]


# --- shared exports ------------------------------------------------------------------------------------

MLP_SHAPE = (1, 3, 4)
CONNECTIONS = ((), (0,), (0, 1))


@pytest.fixture(scope="module")
def connected(tmp_path_factory: pytest.TempPathFactory) -> tuple[ExportResult, list[nn.Module]]:
    """A trained 3-member MLP ensemble where member 2 takes member 1's features and member 3 both."""
    torch.manual_seed(0)
    x, y = make_data(MLP_SHAPE, 1200, seed=1)
    members = [MLPMember(12), MLPMember(12, connection_dims=(8,)), MLPMember(12, connection_dims=(8, 8))]
    train(members, CONNECTIONS, x[:800], y[:800], "sum")
    result = export_ensemble(
        members,
        task_for(MLP_SHAPE),
        tmp_path_factory.mktemp("connected") / "bundle",
        heldout=(x[800:], y[800:]),
        connections=CONNECTIONS,
        name="connected",
        metadata={"data": "synthetic"},
        member_info=[{"method": "test", "width": 8}] * 3,
    )
    return result, members


@pytest.fixture(scope="module")
def cnn1d_mean(tmp_path_factory: pytest.TempPathFactory) -> tuple[ExportResult, list[nn.Module]]:
    """Two 1-D CNN members combined by the running mean, labels given as numpy arrays."""
    torch.manual_seed(1)
    x, y = make_data((2, 10), 600, seed=2)
    members = [CNN1dMember(), CNN1dMember(width=5)]
    train(members, ((), ()), x[:400], y[:400], "mean", steps=40)
    result = export_ensemble(
        members,
        task_for((2, 10)),
        tmp_path_factory.mktemp("cnn1d") / "bundle",
        heldout=(x[400:].numpy(), y[400:].numpy()),
        combine="mean",
        member_names=["small", "large"],
    )
    return result, members


@pytest.fixture(scope="module")
def cnn2d_single(tmp_path_factory: pytest.TempPathFactory) -> tuple[ExportResult, nn.Module]:
    """A 2-D CNN student with a Conv factor pair, exported as a one-member bundle (left in train mode)."""
    torch.manual_seed(2)
    x, y = make_data((1, 6, 6), 300, seed=3)
    model = CNN2dMember()
    model.train()
    result = export_model(
        model,
        task_for((1, 6, 6)),
        tmp_path_factory.mktemp("cnn2d") / "bundle",
        heldout=(x, y),
        name="student",
        info={"method": "lowrank", "rank": 2},
    )
    return result, model


# --- tests ---------------------------------------------------------------------------------------------


def test_connected_ensemble_matches_torch_at_other_batch_sizes(connected) -> None:
    result, members = connected
    x, _ = make_data(MLP_SHAPE, 8, seed=99)  # fresh inputs, not the held-out data
    for batch in (x[:1], x[1:8]):  # exported at batch 2, run at 1 and 7
        want = torch_prefixes(members, CONNECTIONS, batch, "sum")
        got = ort_prefixes(result.path, batch.numpy())
        for k in range(3):
            assert got[k]["logits"].shape == (batch.shape[0], NUM_CLASSES)
            assert got[k]["entropy"].shape == (batch.shape[0],)
            for name in ("logits", "probs", "entropy"):
                np.testing.assert_allclose(got[k][name], want[k][name], rtol=1e-4, atol=1e-5)


def test_connected_manifest_wires_features(connected) -> None:
    result, members = connected
    manifest = load_bundle(result.path).manifest
    assert manifest.name == "connected" and manifest.combine == "sum"
    first, second, third = manifest.members
    assert first.outputs == ("logits", "probs", "entropy", "features")
    assert second.outputs == ("logits", "probs", "entropy", "features")
    assert third.outputs == ("logits", "probs", "entropy")  # nothing connects to the last member
    assert [(c.input, c.member, c.output) for c in second.connections] == [("features_from_0", 0, "features")]
    assert [c.input for c in third.connections] == ["features_from_0", "features_from_1"]
    graph = onnx.load_model_from_string(load_bundle(result.path).member_bytes[2])
    assert [i.name for i in graph.graph.input] == ["x", "prev_logits", "features_from_0", "features_from_1"]
    assert graph.opset_import[0].version == 18
    assert graph.ir_version <= 9  # readable by onnxruntime 1.17, the oldest the runtime install accepts
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    assert manifest.metadata["data"] == "synthetic" and manifest.metadata["exporter"]["opset"] == 18
    assert third.info["method"] == "test" and third.params == sum(p.numel() for p in members[2].parameters())


def test_gate_reports_measure_the_chained_prefixes(connected) -> None:
    result, members = connected
    assert [m.name for m in result.members] == ["member_1", "member_2", "member_3"]
    for m in result.members:
        assert m.gates.num_heldout == 400
        assert m.gates.onnx_accuracy == pytest.approx(m.gates.torch_accuracy, abs=0.001)
        assert m.gates.torch_accuracy > 0.6  # trained: well above the 1/3 of chance
        assert 0 <= max(m.gates.max_abs_diff.values()) < 1e-4
        assert 0 < m.bytes_zip < m.bytes and m.export_seconds > 0
        assert m.params == m.nonzero_params > 0
    info = load_bundle(result.path).manifest.members[0].info
    assert info["bytes"] == (result.path / "member_1.onnx").stat().st_size
    assert info["gates"]["onnx_accuracy"] == result.members[0].gates.onnx_accuracy
    x, y = make_data(MLP_SHAPE, 1200, seed=1)
    torch_acc = [
        float((torch.from_numpy(p["logits"]).argmax(1) == y[800:]).float().mean())
        for p in torch_prefixes(members, CONNECTIONS, x[800:], "sum")
    ]
    assert [m.gates.torch_accuracy for m in result.members] == pytest.approx(torch_acc)
    assert len(result.describe()) == 3 and "member_2" in result.describe()[1]


def test_low_rank_linear_pair_stays_two_matrix_products(connected) -> None:
    result, _ = connected
    graph = onnx.load_model_from_string(load_bundle(result.path).member_bytes[0])
    shapes = matmul_weight_shapes(graph)
    # down (3x12), up (8x3), head (3x8) as torch stores them; never a folded 8x12 product.
    assert sorted(shapes) == sorted([(3, 12), (8, 3), (3, 8)])


def test_mean_combine_of_1d_cnns(cnn1d_mean) -> None:
    result, members = cnn1d_mean
    x, _ = make_data((2, 10), 5, seed=7)
    want = torch_prefixes([lambda v, m=m: m(v) for m in members], ((), ()), x, "mean")  # type: ignore[misc]  # m=m: each member
    got = ort_prefixes(result.path, x.numpy())
    for k in range(2):
        for name in ("logits", "probs", "entropy"):
            np.testing.assert_allclose(got[k][name], want[k][name], rtol=1e-4, atol=1e-5)
    manifest = load_bundle(result.path).manifest
    assert manifest.combine == "mean" and [m.name for m in manifest.members] == ["small", "large"]
    assert all(m.outputs == ("logits", "probs", "entropy") for m in manifest.members)


def test_one_member_bundle_of_a_2d_cnn_with_a_conv_pair(cnn2d_single) -> None:
    result, model = cnn2d_single
    assert model.training and model.stem.training  # the caller's mode survives the export
    bundle = load_bundle(result.path)
    assert bundle.manifest.num_members == 1 and bundle.manifest.members[0].name == "student"
    assert bundle.manifest.members[0].info["rank"] == 2
    graph = onnx.load_model_from_string(bundle.member_bytes[0])
    assert [i.name for i in graph.graph.input] == ["x"]
    assert sum(n.op_type == "Conv" for n in graph.graph.node) == 3  # stem, reduce, expand: the pair stays two
    x, _ = make_data((1, 6, 6), 7, seed=8)
    model.eval()
    try:
        want = torch_prefixes([model], ((),), x, "sum")
    finally:
        model.train()
    got = ort_prefixes(result.path, x.numpy())
    np.testing.assert_allclose(got[0]["probs"], want[0]["probs"], atol=1e-5)
    np.testing.assert_allclose(got[0]["entropy"], want[0]["entropy"], rtol=1e-4, atol=1e-5)


def test_export_onnx_gives_a_runnable_first_member_graph() -> None:
    torch.manual_seed(3)
    model = MLPMember(12).eval()
    blob = export_onnx(model, torch.randn(2, *MLP_SHAPE))
    graph = onnx.load_model_from_string(blob)
    assert [o.name for o in graph.graph.output] == ["logits", "probs", "entropy"]
    assert sorted(matmul_weight_shapes(graph)) == sorted([(3, 12), (8, 3), (3, 8)])
    x, _ = make_data(MLP_SHAPE, 7, seed=9)
    logits, probs, entropy = create_session(blob).run(None, {"x": x.numpy()})
    want = torch_prefixes([model], ((),), x, "sum")[0]
    np.testing.assert_allclose(logits, want["logits"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(entropy, want["entropy"], rtol=1e-4, atol=1e-5)


class DictMember(nn.Module):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": x.flatten(1)[:, :NUM_CLASSES]}


def test_a_member_breaking_the_contract_is_named() -> None:
    with pytest.raises(ConversionError, match="member 1 returned dict; forward must return logits or"):
        export_onnx(DictMember(), torch.randn(2, 12))


def test_failed_gate_writes_nothing_and_keeps_the_old_bundle(cnn2d_single) -> None:
    old, _ = cnn2d_single
    parent = old.path.parent
    before = {p.relative_to(parent): p.read_bytes() for p in parent.rglob("*") if p.is_file()}
    x, y = make_data((1, 6, 6), 50, seed=5)
    with pytest.raises(VerificationError, match="differs from torch"):
        export_model(StochasticMember(36), task_for((1, 6, 6)), old.path, heldout=(x, y))
    # The old bundle is byte for byte what it was, and no staging directory or new file was left behind.
    after = {p.relative_to(parent): p.read_bytes() for p in parent.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in parent.iterdir()) == ["bundle"]


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"heldout_shape": (1, 3, 5)}, ExportError, "task expects"),
        ({"connections": [(), (1,)]}, ExportError, "only earlier members"),
        ({"connections": [()]}, ExportError, "one tuple per member"),
        ({"member_names": ["a", "a"]}, ExportError, "unique"),
        ({"combine": "max"}, ConversionError, "combine 'max'"),
        ({"classes": 4}, ConversionError, "4 classes"),
        ({"labels": 3.5}, ExportError, "integer class ids"),
        ({"member_info": [{}, {"width": np.int64(3)}]}, ExportError, r"member_info\[1\] is not JSON-serialisable"),
    ],
)
def test_bad_arguments_fail_before_export(kwargs: dict, error: type, message: str, tmp_path: Path) -> None:
    shape = kwargs.get("heldout_shape", MLP_SHAPE)
    x, y = make_data(shape, 20, seed=6)
    if "labels" in kwargs:
        y = y.float() + 0.5
    members: list[nn.Module] = [MLPMember(int(np.prod(shape))) for _ in range(2)]
    if "classes" in kwargs:
        members[1].head = nn.Linear(8, kwargs["classes"])
    with pytest.raises(error, match=message):
        export_ensemble(
            members,
            task_for(MLP_SHAPE),
            tmp_path / "b",
            heldout=(x, y),
            connections=kwargs.get("connections"),
            member_names=kwargs.get("member_names"),
            combine=kwargs.get("combine", "sum"),
            member_info=kwargs.get("member_info"),
        )
    assert not (tmp_path / "b").exists()


def test_exporters_bundle_does_not_import_torch() -> None:
    code = "import sys, exporters, exporters.bundle, exporters.errors; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
