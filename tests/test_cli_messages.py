"""Messages and defaults that used to mislead (issue 17 item 8): each says what is true and how to fix it."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from distill.cli import demo as demo_cli
from distill.cli import ensemble as ensemble_cli
from distill.cli import lowrank as lowrank_cli
from distill.cli import main as cli_main
from distill.cli import sparsify as sparsify_cli
from distill.cli import train_teacher as train_teacher_cli
from distill.data import load_dataset
from distill.errors import TrainingError
from distill.lowrank.latency import LatencyConfig
from distill.lowrank.student import plan_for_latency
from distill.models import ModelConfig, build_model
from distill.teacher import save_model
from exporters import export_model
from exporters.errors import ExportError
from profiles.select import Candidate, Selection, pareto_front, plot_selection

REPO = Path(__file__).resolve().parents[1]


def _npz(path: Path, shape: tuple[int, ...], classes: int = 3) -> Path:
    rng = np.random.default_rng(0)
    y = np.arange(40) % classes
    np.savez(path, x_train=rng.normal(size=(40, *shape)), y_train=y, x_test=rng.normal(size=(12, *shape)), y_test=y[:12])
    return path


def _one_line(captured: str) -> str:
    line = captured.strip()
    assert line and "\n" not in line, captured
    return line


# --- export with data of another shape ---------------------------------------------------------------------


def test_export_refuses_data_of_another_shape_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = build_model(ModelConfig(input_shape=(1, 8, 8), num_classes=3, family="cnn2d", width=4, depth=1))
    save_model(model, tmp_path / "ck")
    data = _npz(tmp_path / "rgb.npz", (3, 8, 8))  # three channels where the conv takes one
    code = cli_main(["export", str(tmp_path / "ck"), "--data", str(data), "--out", str(tmp_path / "out")])
    assert code == 1
    line = _one_line(capsys.readouterr().err)
    assert line == (
        f"anytime-edge export: the model in {tmp_path / 'ck'} takes inputs (1, 8, 8), but --data {data} "
        "has (3, 8, 8); pass the data it was trained on"
    )
    assert not (tmp_path / "out").exists()


def test_export_model_names_the_shape_a_model_rejects(tmp_path: Path) -> None:
    # Through the Python API (any nn.Module, no config to compare) the exporter's own torch check says it.
    model = build_model(ModelConfig(input_shape=(1, 8, 8), num_classes=3, family="cnn2d", width=4, depth=1))
    dataset = load_dataset(_npz(tmp_path / "rgb.npz", (3, 8, 8)))
    with pytest.raises(ExportError, match=r"member 1 fails in torch on held-out inputs: .*; check its input shape"):
        export_model(model, dataset.task_spec(), tmp_path / "out", heldout=(dataset.x_test, dataset.y_test))
    assert not (tmp_path / "out").exists()


# --- sparsify: no label noise unless asked, defaults in --help, one progress spelling ---------------------


def _parser(module: ModuleType) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    module.configure(parser)
    return parser


def test_dsd2_keeps_the_users_labels_by_default() -> None:
    args = _parser(sparsify_cli).parse_args(["dsd2", "--out", "x"])
    assert args.noise == 0.0


@pytest.mark.parametrize(
    "method, expected",
    [
        (
            "fcpts",
            [
                "--target TARGET global sparsity of the Conv/Linear weights (0.8 = 80% zeros) (default: 0.8)",
                "x_train, y_train, x_test, y_test (default mnist)",
            ],
        ),
        ("dsd2", ["(default: 0.0)", "--rounds ROUNDS pruning rounds, 20% of the remaining weights each (default: 20)"]),
        ("channels", ["--keep KEEP share of channels/units kept in every hidden layer (default: 0.5)"]),
    ],
)
def test_sparsify_help_shows_the_defaults(method: str, expected: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["sparsify", method, "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for fragment in expected:
        assert fragment in text
    assert "(default: None)" not in text


@pytest.mark.parametrize(
    "module, argv",
    [
        (demo_cli, []),
        (train_teacher_cli, []),
        (ensemble_cli, ["--members", "2", "--out", "x"]),
        (lowrank_cli, ["--rank", "2", "--out", "x"]),
        (sparsify_cli, ["dsd2", "--out", "x"]),
    ],
)
def test_every_training_command_spells_progress_the_same(module: ModuleType, argv: list[str]) -> None:
    parser = _parser(module)
    assert parser.parse_args(argv).progress is True
    assert parser.parse_args([*argv, "--no-progress"]).progress is False
    assert parser.parse_args([*argv, "--progress"]).progress is True


# --- the demo's low-rank fallback names a flag the demo has -----------------------------------------------


def test_speed_up_search_failure_names_only_the_flag_asked_for() -> None:
    torch.manual_seed(0)
    dataset = load_dataset("digits", limit_train=200)
    teacher = build_model(ModelConfig(input_shape=dataset.input_shape, num_classes=10, family="mlp", width=16, depth=1))
    fast = LatencyConfig(rounds=1, calls_per_round=3, warmup=1)
    with pytest.raises(TrainingError) as speedup:
        plan_for_latency(teacher, dataset, speedup=1e6, config=fast, ladder=(2,))
    assert str(speedup.value).endswith("missing a 1000000.0x speed-up; lower --speedup")
    assert "--speedup" in _parser(demo_cli).format_help() and "--latency-ms" not in _parser(demo_cli).format_help()
    with pytest.raises(TrainingError) as latency:
        plan_for_latency(teacher, dataset, latency_ms=1e-9, config=fast, ladder=(2,))
    assert str(latency.value).endswith("missing 1e-09 ms; raise --latency-ms")


# --- select's plot: the budget on the axis's statistic, labels apart --------------------------------------


def _candidate(name: str, accuracy: float, p50: float, p90: float) -> Candidate:
    return Candidate(
        name=name,
        bundle="b",
        kind="prefix",
        members=1,
        mean_members=1.0,
        threshold=None,
        accuracy=accuracy,
        latency_ms={"p50": p50, "p90": p90, "p95": p90, "p99": p90},
        memory_mb=40.0,
        size_bytes=1000,
    )


@pytest.mark.parametrize("budget_ms, stat", [(0.1, "p90"), (None, "p50")])
def test_select_plot_draws_the_budget_on_the_axis_statistic_and_keeps_labels_apart(
    budget_ms: float | None, stat: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import matplotlib.pyplot as plt

    cands = tuple(
        pareto_front(
            [  # "teacher" and "sparse" sit almost on one point (they used to overprint)
                _candidate("teacher", 0.981, 0.120, 0.150),
                _candidate("sparse", 0.9805, 0.1195, 0.1495),
                _candidate("lowrank", 0.970, 0.060, 0.090),
                _candidate("bdistil[1..1]", 0.93, 0.030, 0.045),
                _candidate("bdistil[1..2]", 0.96, 0.055, 0.080),
                _candidate("bdistil[1..3]", 0.972, 0.080, 0.110),
            ]
        )
    )
    selection = Selection(
        candidates=cands, chosen=cands[2], budget_ms=budget_ms, budget_quantile="p90", memory_mb=None, fingerprint="abc"
    )
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to look at it
    assert plot_selection(selection, tmp_path / "plot.png") is None
    assert (tmp_path / "plot.png").stat().st_size > 0
    ax = figures[0].axes[0]
    assert ax.get_xlabel() == f"{stat} latency per query, batch 1 (ms, profiled on this device)"
    points = {tuple(p) for coll in ax.collections for p in coll.get_offsets()}
    assert all((c.latency_ms[stat], c.accuracy) in points for c in cands)
    budget_lines = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    if budget_ms is None:
        assert budget_lines == []
    else:
        assert [list(line.get_xdata()) for line in budget_lines] == [[budget_ms, budget_ms]]
        assert budget_lines[0].get_label() == f"budget {budget_ms:g} ms (p90)"
    renderer = figures[0].canvas.get_renderer()
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in ax.texts]
    assert {name for name, _ in boxes} == {c.name for c in cands}
    legend = ax.get_legend().get_window_extent(renderer)
    for i, (a, box_a) in enumerate(boxes):
        assert not box_a.overlaps(legend), f"label '{a}' lies on the legend"
        for b, box_b in boxes[i + 1 :]:
            assert not box_a.overlaps(box_b), f"labels '{a}' and '{b}' overprint"


# --- demo output folders ---------------------------------------------------------------------------------


def test_demo_on_other_data_writes_its_own_folder() -> None:
    assert demo_cli.default_out("digits") == Path("runs/demo")
    assert demo_cli.default_out("mnist1d") == Path("runs/mnist1d")
    assert demo_cli.default_out("/data/plant/line3.npz") == Path("runs/line3")
    assert demo_cli.default_out("/data/idx/") == Path("runs/idx")


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize(
    "data, out", [("digits", "runs/demo"), ("mnist1d", "runs/mnist1d"), ("/data/plant/line3.npz", "runs/line3")]
)
def test_make_demo_follows_the_same_rule(data: str, out: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        ["make", "-n", "--no-print-directory", "demo", f"DATA={data}", f"VENV={tmp_path / 'v'}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"anytime-edge demo --data {data} --out {out}" in proc.stdout


# --- train-teacher re-runs -------------------------------------------------------------------------------


def test_train_teacher_reuses_a_finished_run_and_retrains_only_when_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "teacher"
    base = [
        "train-teacher",
        "--data",
        "digits",
        "--out",
        str(out),
        "--width",
        "4",
        "--depth",
        "1",
        "--hidden",
        "8",
        "--epochs",
        "1",
        "--no-progress",
    ]
    assert cli_main(base) == 0
    first = (out / "model.pt").stat().st_mtime_ns
    capsys.readouterr()

    assert cli_main(base) == 0
    said = capsys.readouterr().out
    assert re.search(
        rf"{re.escape(str(out))} already holds this teacher, trained to the end \(test accuracy "
        r"\d+\.\d\d%\); reusing it \(--force retrains\)",
        said,
    ), said
    assert (out / "model.pt").stat().st_mtime_ns == first

    assert cli_main([*base[:-3], "--epochs", "2", "--no-progress"]) == 1  # other settings: refuse, name --force
    assert _one_line(capsys.readouterr().err) == (
        f"anytime-edge train-teacher: {out} holds a finished teacher of other data or settings; "
        "pass --force to replace it, or choose another --out"
    )
    assert (out / "model.pt").stat().st_mtime_ns == first

    assert cli_main([*base, "--force"]) == 0
    assert "reusing" not in capsys.readouterr().out
    assert (out / "model.pt").stat().st_mtime_ns != first
