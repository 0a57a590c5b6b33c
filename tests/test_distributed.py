"""Data-parallel training under torchrun's environment: 2 gloo processes on the CPU, tiny models and data.

The ranks are spawned here the way torchrun starts them (RANK, WORLD_SIZE, ... in the environment); one
more test runs the real ``torchrun -m distill train-teacher``. Checked: the ranks end with identical
parameters, each trains on its own half of every batch and together they match the one-process run, an
interrupted teacher run resumes, and only rank 0 writes files.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import ddp_workers
from distill import distributed
from distill.losses import make_loss
from distill.train import fit

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, dict]]:
    """Run tests/ddp_workers.worker on 2 spawned gloo ranks; (their directory, rank -> results)."""
    root = tmp_path_factory.mktemp("ddp")
    ddp_workers.write_tiny_mnist(root / "mnist")
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(ddp_workers.worker, args=(2, _free_port(), str(root), queue), nprocs=2, join=True, start_method="spawn")
    results = [queue.get() for _ in range(2)]
    return root, {r["rank"]: r for r in results}


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_ranks_join_the_group_from_torchruns_environment(two_ranks) -> None:
    _, ranks = two_ranks
    assert [ranks[r]["started"] for r in (0, 1)] == [True, True]
    assert [ranks[r]["world_size"] for r in (0, 1)] == [2, 2]


def test_each_rank_trains_on_half_of_every_batch_and_together_they_match_one_process(two_ranks) -> None:
    _, ranks = two_ranks
    x, y = ddp_workers.tiny_data()
    # 100 samples: 50 per rank, 8 of each global batch of 16 -> 7 steps of 8 (the last 2) per epoch
    assert ranks[0]["fit_batches"] == ranks[1]["fit_batches"] == ([8] * 6 + [2]) * 4  # 2 fits of 2 epochs
    assert _same(ranks[0]["fit_params"], ranks[1]["fit_params"])
    assert ranks[0]["fit_history"] == ranks[1]["fit_history"]
    alone = ddp_workers.tiny_mlp()
    history = fit(alone, x, y, make_loss("ce"), ddp_workers.FIT) + fit(alone, x, y, make_loss("ce"), ddp_workers.FIT)
    # The same global batches of 16 (2 x 8), gradients averaged: one process's run up to rounding (measured
    # 6e-8; training on a half batch of 8 alone ends 0.1 away).
    for got, want in zip(ranks[0]["fit_params"], ddp_workers.params_of(alone)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(ranks[0]["fit_history"], history, rtol=1e-5)


def test_an_interrupted_teacher_resumes_and_the_ranks_agree(two_ranks) -> None:
    root, ranks = two_ranks
    first, second = ranks[0]["teacher"], ranks[1]["teacher"]
    assert "progress.pt" in first["interrupted_files"] and "model.pt" not in first["interrupted_files"]
    assert json.loads((root / "teacher" / "metrics.json").read_text())["resumed_from_epoch"] == 1
    assert first["metrics"]["resumed_from_epoch"] == second["metrics"]["resumed_from_epoch"] == 1
    assert first["metrics"]["test_accuracy"] > 0.3  # chance is 0.1 (3 epochs of 256 digits)
    assert _same(first["params"], second["params"])
    on_disk = torch.load(root / "teacher" / "model.pt", weights_only=True)
    assert _same(first["params"], [v.numpy() for v in on_disk.values()])
    assert not (root / "teacher" / "progress.pt").exists()


def test_a_bdistil_member_is_identical_on_both_ranks(two_ranks) -> None:
    root, ranks = two_ranks
    assert _same(ranks[0]["member_params"], ranks[1]["member_params"])
    assert ranks[0]["member_step"] == ranks[1]["member_step"] > 0
    assert list((root / "runs" / "teacher_logits").rglob("*.npy"))  # the teacher's logits went through the cache


def test_only_rank_0_writes(two_ranks) -> None:
    ranks = two_ranks[1]
    written = {Path(path).name for _, path in ranks[0]["writes"]}
    assert {"progress.pt", "progress.json", "model.pt", "config.json", "metrics.json"} <= written  # the hook sees writes
    assert any(name.endswith(".npy") for name in written)  # the logit cache, filled by rank 0
    assert ranks[1]["writes"] == []


def test_a_choice_made_on_rank_0_reaches_every_rank_with_its_error(two_ranks) -> None:
    _, ranks = two_ranks
    assert ranks[0]["on_main"] == ranks[1]["on_main"] == 10
    assert ranks[0]["on_main_error"] == ranks[1]["on_main_error"] == "no candidate is fast enough (rank 0)"


def test_latency_is_measured_on_rank_0_and_shared(two_ranks) -> None:
    ranks = two_ranks[1]
    assert ranks[0]["latency"] == ranks[1]["latency"]  # timings of two processes never agree to the ns by chance
    assert ranks[0]["latency"]["a"][1]["p50"] > 0


def test_rank_0_alone_continues_after_training_as_one_process(two_ranks) -> None:
    _, ranks = two_ranks
    assert (ranks[0]["continues"], ranks[1]["continues"]) == (True, False)
    assert ranks[0]["alone"] == (False, 1, True)  # no collective can wait on the ranks that left
    assert ranks[1]["alone"] == (True, 2, False)


def test_generated_data_is_written_by_rank_0_and_read_by_the_others(two_ranks) -> None:
    root, ranks = two_ranks
    assert ranks[0]["cluttered"][0] is False and ranks[1]["cluttered"][0] is True  # generated, then read back
    assert ranks[0]["cluttered"][1] == ranks[1]["cluttered"][1]
    assert len(list((root / "data").glob("cluttered-mnist-*.npz"))) == 1


def test_without_torchruns_environment_nothing_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with distributed.session() as started:
        assert not started
        assert (distributed.world_size(), distributed.rank(), distributed.is_main_process()) == (1, 0, True)
        model = ddp_workers.tiny_mlp()
        assert distributed.wrap(model) is model
        assert distributed.on_main(lambda: 7) == 7


def test_torchrun_runs_train_teacher_unchanged_and_rank_0_alone_reports(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "teacher"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "distill",
        "train-teacher",
        "--data",
        "digits",
        "--epochs",
        "1",
        "--width",
        "8",
        "--hidden",
        "32",
        "--out",
        str(out),
        "--no-progress",
    ]
    done = subprocess.run(cmd, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("checkpoint: ") == 1  # printed by rank 0 only
    assert json.loads((out / "metrics.json").read_text())["resumed_from_epoch"] == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "metrics.json", "model.pt"]
