"""Loading a torch.export program (.pt2) as a trainable module with real layers; refusing unsafe archives."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from byo_teachers import GroupedNet, SmallResNet, export_pt2, separable_images
from distill.errors import CheckpointError
from distill.exported import load_exported_module

X = np.random.default_rng(0).uniform(0, 16, size=(6, 1, 8, 8)).astype(np.float32)


@pytest.mark.parametrize("make", [SmallResNet, GroupedNet])
def test_loaded_program_has_real_layers_and_the_same_logits(make, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = make().eval()
    loaded = load_exported_module(export_pt2(model, tmp_path / "m.pt2", X))
    original = {n: type(m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    rebuilt = {n: type(m) for n, m in loaded.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    norms = {n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert norms == {n for n, m in loaded.named_modules() if isinstance(m, nn.BatchNorm2d)}
    called = {n: t for n, t in original.items() if n != "unused"}  # GroupedNet uses that weight functionally
    assert rebuilt == called
    if make is GroupedNet:
        assert loaded.dw.groups == 8 and loaded.grouped.groups == 2 and loaded.fc.bias is None
        assert list(loaded.exported_functional.values()) == ["its parameters do not sit alone in one module"]
    x = torch.from_numpy(X)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(loaded(x[:5]), model(x[:5]), atol=1e-5, rtol=1e-5)  # another batch size


def test_loaded_program_trains_exactly_like_the_original(tmp_path: Path) -> None:
    """Same steps on the module and on its loaded program, both in train mode: the same losses and statistics."""
    data = separable_images(64)
    x, y = torch.from_numpy(data.x_train[:32]), torch.from_numpy(data.y_train[:32])
    torch.manual_seed(0)
    model = SmallResNet().eval()
    loaded = load_exported_module(export_pt2(model, tmp_path / "m.pt2", X)).train()
    assert type(loaded.get_submodule("stem.1")) is nn.BatchNorm2d and loaded.exported_functional == {}
    model.train()
    curves = []
    for net in (model, loaded):
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
        losses = []
        for _ in range(20):
            loss = nn.functional.cross_entropy(net(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        curves.append(losses)
    assert loaded.get_submodule("stem.0").weight.grad.abs().sum() > 0  # the rebuilt layers get gradients
    np.testing.assert_allclose(curves[1], curves[0], rtol=1e-3)
    assert curves[1][-1] < 0.7 * curves[1][0]
    torch.testing.assert_close(loaded.get_submodule("blocks.1.bn2").running_var, model.blocks[1].bn2.running_var)
    loaded.eval(), model.eval()
    torch.testing.assert_close(loaded(x), model(x), atol=1e-4, rtol=1e-4)


def test_files_that_are_not_programs_are_one_line_errors(tmp_path: Path) -> None:
    text = tmp_path / "model.pt2"
    text.write_text("not a program")
    with pytest.raises(CheckpointError, match="not a torch.export program") as err:
        load_exported_module(text)
    assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_exported_module(tmp_path / "missing.pt2")
    archive = tmp_path / "other.pt2"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("model/data.pkl", b"\x80\x04N.")
    with pytest.raises(CheckpointError, match="not a torch.export program"):
        load_exported_module(archive)


def _rewrite(src: Path, dst: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    """Copy the archive, passing each member's (name, bytes) through ``edit`` (None drops it)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            changed = edit(name, zin.read(name))
            if changed is not None:
                zout.writestr(changed[0], changed[1])
    return dst


def test_archives_whose_loading_could_run_code_are_refused(tmp_path: Path) -> None:
    good = export_pt2(SmallResNet().eval(), tmp_path / "good.pt2", X)

    def pickled_weight(name: str, data: bytes):  # type: ignore[no-untyped-def]
        if name.endswith("weights/model_weights_config.json"):
            config = json.loads(data)
            next(iter(config["config"].values()))["use_pickle"] = True
            data = json.dumps(config).encode()
        return name, data

    def foreign_target(name: str, data: bytes):  # type: ignore[no-untyped-def]
        if name.endswith("models/model.json"):
            data = data.replace(b'"torch.ops.aten.relu.default"', b'"torch.os.system"')
        return name, data

    def evil_expression(name: str, data: bytes):  # type: ignore[no-untyped-def]
        if name.endswith("models/model.json"):
            data = data.replace(b"Symbol(", b"__import__('os').getcwd() or Symbol(", 1)
        return name, data

    def binary(name: str, data: bytes):  # type: ignore[no-untyped-def]
        return (name.replace("models/model.json", "data/aotinductor/model.so"), data) if name.endswith("model.json") else (name, data)

    for edit, message in ((pickled_weight, "pickled object"), (foreign_target, "calls 'torch.os.system'"),
                          (evil_expression, "symbolic shape expression"), (binary, "does not open")):
        bad = _rewrite(good, tmp_path / f"{edit.__name__}.pt2", edit)
        with pytest.raises(CheckpointError, match=message):
            load_exported_module(bad)


class _Signal(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 6, 5, stride=2, padding=2)
        self.same = nn.Conv1d(6, 6, 3, padding="same", bias=False)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.same(torch.relu(self.conv(x)))).mean(dim=2)
        return self.head(h), h


def test_conv1d_programs_with_tuple_outputs_load_too(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _Signal().eval()
    x = torch.randn(4, 2, 20)
    program = torch.export.export(model, (x,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    torch.export.save(program, tmp_path / "s.pt2")
    loaded = load_exported_module(tmp_path / "s.pt2")
    assert type(loaded.conv) is nn.Conv1d and loaded.conv.stride == (2,) and loaded.same.padding == "same"
    logits, features = loaded(x)
    torch.testing.assert_close(logits, model(x)[0])
    torch.testing.assert_close(features, model(x)[1])


def test_guard_code_in_the_file_is_never_run(tmp_path: Path) -> None:
    """``ExportedProgram.module()`` compiles the file's guard code; a crafted guard could run anything."""
    import builtins

    good = export_pt2(SmallResNet().eval(), tmp_path / "good.pt2", X)
    payload = "__import__('builtins').setattr(__import__('builtins'), 'ANYTIME_EDGE_GUARD_RAN', 1) is None"

    def guard(name: str, data: bytes):  # type: ignore[no-untyped-def]
        if name.endswith("models/model.json"):
            program = json.loads(data)
            program["guards_code"] = [payload]
            data = json.dumps(program).encode()
        return name, data

    loaded = load_exported_module(_rewrite(good, tmp_path / "guard.pt2", guard))
    loaded(torch.from_numpy(X))
    assert not hasattr(builtins, "ANYTIME_EDGE_GUARD_RAN")
