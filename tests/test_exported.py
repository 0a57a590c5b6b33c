"""Loading a torch.export program (.pt2) as a trainable module with real layers; refusing unsafe archives.

The refusals are checked on both entry points that load a .pt2 (they share exporters.pt2_safety):
``distill.exported.load_exported_module`` (raises CheckpointError) and ``exporters.pt2.load_program``
(raises ExportError), and once through ``anytime-edge export MODEL.pt2``.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator, Union

import numpy as np
import pytest
import torch
from torch import nn

from byo_teachers import GroupedNet, SmallResNet, export_pt2, separable_images
from distill.cli import main as anytime_edge
from distill.errors import CheckpointError
from distill.exported import load_exported_module
from exporters.errors import ExportError
from exporters.pt2 import load_program, program_logits

# What a rewrite's edit returns for one archive member: (name, bytes), several of them, or None (dropped).
Edited = Union[tuple[str, bytes], list[tuple[str, bytes]], None]
Loader = Callable[[Path], None]

X = np.random.default_rng(0).uniform(0, 16, size=(6, 1, 8, 8)).astype(np.float32)


def _run_distill(path: Path) -> None:
    load_exported_module(path)(torch.from_numpy(X))


def _run_exporters(path: Path) -> None:
    program_logits(load_program(path), X)  # what wrap_pt2 runs before the ONNX conversion


@pytest.fixture
def code_ran() -> Iterator[Callable[[str], bool]]:
    """``code_ran(name)``: whether a payload set ``builtins.ANYTIME_EDGE_<name>``; all removed afterwards."""
    import builtins

    yield lambda name: hasattr(builtins, f"ANYTIME_EDGE_{name}")
    for name in [n for n in vars(builtins) if n.startswith("ANYTIME_EDGE_")]:
        delattr(builtins, name)


# (load a file and run the result on X, the error that loader raises)
LOADERS = [pytest.param(_run_distill, CheckpointError, id="distill"), pytest.param(_run_exporters, ExportError, id="exporters")]


@pytest.mark.parametrize("make", [SmallResNet, GroupedNet])
def test_loaded_program_has_real_layers_and_the_same_logits(make: Callable[[], nn.Module], tmp_path: Path) -> None:
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


@pytest.mark.parametrize(("run", "error"), LOADERS)
def test_files_that_are_not_programs_are_one_line_errors(run: Loader, error: type[Exception], tmp_path: Path) -> None:
    text = tmp_path / "model.pt2"
    text.write_text("not a program")
    with pytest.raises(error, match="not a torch.export program") as err:
        run(text)
    assert "\n" not in str(err.value)
    with pytest.raises(error, match="does not exist"):
        run(tmp_path / "missing.pt2")
    archive = tmp_path / "other.pt2"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("model/data.pkl", b"\x80\x04N.")
    with pytest.raises(error, match="not a torch.export program"):
        run(archive)


def _rewrite(src: Path, dst: Path, edit: Callable[[str, bytes], Edited]) -> Path:
    """Copy the archive, passing each member's (name, bytes) through ``edit`` (a list: several, None: dropped)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            changed = edit(name, zin.read(name))
            for new_name, data in [changed] if isinstance(changed, tuple) else changed or []:
                zout.writestr(new_name, data)
    return dst


class _RunsCode:
    """Unpickling it sets a builtins attribute: proof that a pickle from the file ran."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return exec, ("import builtins; builtins.ANYTIME_EDGE_PICKLE_RAN = 1",)


def _pickled_weight(name: str, data: bytes) -> Edited:
    if name.endswith("weights/model_weights_config.json"):
        config = json.loads(data)
        next(iter(config["config"].values()))["use_pickle"] = True
        data = json.dumps(config).encode()
    return name, data


def _foreign_target(name: str, data: bytes) -> Edited:
    if name.endswith("models/model.json"):
        data = data.replace(b'"torch.ops.aten.relu.default"', b'"torch.os.system"')
    return name, data


def _evil_expression(name: str, data: bytes) -> Edited:
    if name.endswith("models/model.json"):
        data = data.replace(b"Symbol(", b"__import__('os').getcwd() or Symbol(", 1)
    return name, data


def _binary(name: str, data: bytes) -> Edited:
    return (name.replace("models/model.json", "data/aotinductor/model.so"), data) if name.endswith("model.json") else (name, data)


def _two_programs(name: str, data: bytes) -> Edited:
    return (
        [(name, data), (name.replace("models/model.json", "models/other.json"), data)]
        if name.endswith("model.json")
        else (name, data)
    )


def _pickled_sample_inputs(name: str, data: bytes) -> Edited:
    """Sample inputs torch.export.load unpickles with weights_only=False when the safe loader refuses them."""
    if name.endswith("data/sample_inputs/model.pt"):
        buffer = io.BytesIO()
        torch.save(((_RunsCode(),), {}), buffer)
        data = buffer.getvalue()
    return name, data


UNSAFE = [
    (_pickled_weight, "pickled object"),
    (_foreign_target, "calls 'torch.os.system'"),
    (_evil_expression, "symbolic shape expression"),
    (_binary, "does not open"),
    (_two_programs, "2 programs"),
    (_pickled_sample_inputs, "not a loadable torch.export program"),
]


@pytest.mark.parametrize(("run", "error"), LOADERS)
def test_archives_whose_loading_could_run_code_are_refused(
    run: Loader, error: type[Exception], code_ran: Callable[[str], bool], tmp_path: Path
) -> None:
    good = export_pt2(SmallResNet().eval(), tmp_path / "good.pt2", X)
    assert any(n.endswith("data/sample_inputs/model.pt") for n in zipfile.ZipFile(good).namelist())
    for edit, message in UNSAFE:
        bad = _rewrite(good, tmp_path / f"{edit.__name__}.pt2", edit)
        with pytest.raises(error, match=message) as err:
            run(bad)
        assert "\n" not in str(err.value) and "torch.export.save" in str(err.value), edit.__name__
    assert not code_ran("PICKLE_RAN")


def test_cli_export_refuses_an_unsafe_program(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = export_pt2(SmallResNet().eval(), tmp_path / "good.pt2", X)
    bad = _rewrite(good, tmp_path / "bad.pt2", _foreign_target)
    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    np.savez(
        data,
        x_train=rng.uniform(0, 16, (40, 1, 8, 8)).astype(np.float32),
        y_train=np.arange(40) % 4,
        x_test=X,
        y_test=np.arange(len(X)) % 4,
    )
    assert anytime_edge(["export", str(bad), "--data", str(data), "--out", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err.strip()
    assert "calls 'torch.os.system'" in err and "torch.export.save" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "b").exists()


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


@pytest.mark.parametrize(("run", "error"), LOADERS)
def test_guard_code_in_the_file_is_never_run(
    run: Loader, error: type[Exception], code_ran: Callable[[str], bool], tmp_path: Path
) -> None:
    """``ExportedProgram.module()`` compiles the file's guard code; a crafted guard could run anything."""
    good = export_pt2(SmallResNet().eval(), tmp_path / "good.pt2", X)
    payload = "__import__('builtins').setattr(__import__('builtins'), 'ANYTIME_EDGE_GUARD_RAN', 1) is None"

    def guard(name: str, data: bytes) -> Edited:
        if name.endswith("models/model.json"):
            program = json.loads(data)
            program["guards_code"] = [payload]
            data = json.dumps(program).encode()
        return name, data

    run(_rewrite(good, tmp_path / "guard.pt2", guard))  # loads and runs the forward on X
    assert not code_ran("GUARD_RAN")
