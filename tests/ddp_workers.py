"""What each process of the 2-rank gloo tests runs (tests/test_distributed.py spawns it; spawn needs a module).

Each rank joins the group the way torchrun's workers do (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT in the
environment, then :func:`distill.distributed.session`), runs the scenarios, and puts its results on a queue
for the parent to compare. An audit hook records every write-mode open, mkdir, rename, replace and unlink
under the test's directory, so the parent can check that rank 0 alone wrote.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from distill import distributed
from distill.cluttered import ClutterConfig, cluttered_mnist
from distill.data import load_dataset
from distill.errors import TrainingError
from distill.losses import make_loss
from distill.lowrank.latency import LatencyConfig, measure_side_by_side
from distill.progressive import Candidate, ProgressiveConfig, progressive_ensemble
from distill.teacher import TeacherConfig, train_teacher
from distill.teachers import load_teacher
from distill.train import FitConfig, fit
from exporters import export_onnx

TEACHER = TeacherConfig(width=8, depth=1, hidden=32, epochs=3, lr=5e-3, batch_size=32)
LIMIT_TRAIN = 256
FIT = FitConfig(epochs=2, lr=1e-2, batch_size=16, seed=3, progress=False)
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


class Crash(RuntimeError):
    """Raised by the patched optimizer on every rank at the same step: an interrupted run."""


class TinyMLP(nn.Module):
    """A 2-layer MLP on 6 features with a Linear it never calls (a user's module may hold one; DDP must cope)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
        self.unused = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def tiny_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TinyMLP()


def write_tiny_mnist(folder: Path) -> None:
    """20 + 10 random 28x28 'digits' as MNIST IDX files (the cluttered set's source)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for name, array in (
        ("train-images-idx3-ubyte.gz", rng.integers(0, 256, (20, 28, 28))),
        ("train-labels-idx1-ubyte.gz", np.arange(20) % 10),
        ("t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (10, 28, 28))),
        ("t10k-labels-idx1-ubyte.gz", np.arange(10)),
    ):
        header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
        (folder / name).write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def _fail_on_rank_0() -> None:
    raise TrainingError(f"no candidate is fast enough (rank {distributed.rank()})")


def tiny_data(n: int = 100) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    return x, (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1).astype(np.int64)


def params_of(model: nn.Module) -> list[np.ndarray]:
    return [v.detach().numpy().copy() for v in model.state_dict().values()]


def _watch_writes(root: str, log: list[tuple[str, str]]) -> None:
    def hook(event: str, args: tuple[Any, ...]) -> None:
        path = None
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            mode, flags = args[1], args[2]
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & _WRITE_FLAGS)
            path = os.fsdecode(args[0]) if writing else None
        elif event in ("os.rename", "os.replace") and isinstance(args[1], (str, bytes, os.PathLike)):
            path = os.fsdecode(args[1])  # the target (the source is the temp file opened for writing)
        elif event in ("os.mkdir", "os.remove", "os.rmdir", "os.truncate"):
            path = os.fsdecode(args[0]) if isinstance(args[0], (str, bytes, os.PathLike)) else None
        if path is not None and os.path.abspath(path).startswith(root):
            log.append((event, path))

    sys.addaudithook(hook)


def _teacher_with_resume(dataset: Any, out: Path) -> dict[str, Any]:
    """Train 3 epochs, crash at the first step of epoch 2 (every rank), then run again: it resumes."""
    steps = math.ceil(
        math.ceil(len(dataset.x_train) / distributed.world_size()) / distributed.local_batch_size(TEACHER.batch_size)
    )
    original, calls = torch.optim.Adam.step, [0]

    def step(self: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] > steps:
            raise Crash("interrupted")
        return original(self, *args, **kwargs)

    torch.optim.Adam.step = step  # type: ignore[method-assign]
    try:
        train_teacher(dataset, TEACHER, out, progress=False)
    except Crash:
        pass
    finally:
        torch.optim.Adam.step = original  # type: ignore[method-assign]
    interrupted = {p.name for p in out.iterdir()} if out.is_dir() else set()
    distributed.barrier()  # rank 0 has listed the interrupted run before anyone resumes
    model, metrics = train_teacher(dataset, TEACHER, out, progress=False)
    return {"interrupted_files": sorted(interrupted), "steps_per_epoch": steps, "metrics": metrics, "params": params_of(model)}


def worker(rank: int, world: int, port: int, root: str, queue: Any) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    writes: list[tuple[str, str]] = []
    _watch_writes(os.path.abspath(root), writes)
    result: dict[str, Any] = {"rank": rank}
    with distributed.session() as started:
        result["started"] = started
        result["world_size"] = distributed.world_size()

        # 0. generated data (cluttered MNIST): rank 0 generates and caches it, the other rank reads that cache
        clutter = cluttered_mnist(Path(root) / "mnist", ClutterConfig(canvas=32), cache_dir=Path(root) / "data")
        digest = hashlib.sha256(clutter.x_train.tobytes() + clutter.x_test.tobytes()).hexdigest()
        result["cluttered"] = (clutter.from_cache, digest)

        # 1. fit, twice on one model (a new DDP wrapper each time, as DSD² rounds do): the shard each rank
        #    sees, and the trained parameters.
        model, batches = tiny_mlp(), []
        model.body[0].register_forward_pre_hook(lambda _m, inputs: batches.append(len(inputs[0])))
        x, y = tiny_data()
        result["fit_history"] = fit(model, x, y, make_loss("ce"), FIT) + fit(model, x, y, make_loss("ce"), FIT)
        result["fit_params"], result["fit_batches"] = params_of(model), batches

        # 2. the teacher: interrupted, resumed, written by rank 0 alone.
        dataset = load_dataset("digits", limit_train=LIMIT_TRAIN)
        result["teacher"] = _teacher_with_resume(dataset, Path(root) / "teacher")

        # 3. one B-DISTIL member distilled from that teacher through its on-disk logit cache.
        loaded = load_teacher(str(Path(root) / "teacher"), dataset, runs_dir=Path(root) / "runs", progress=False)
        cfg = ProgressiveConfig(
            members=1, candidates=(Candidate("cnn2d", 4, 1, 16),), gamma=0.0, epochs=1, batch_size=32, progress=False
        )
        ensemble = progressive_ensemble(loaded.module, dataset, cfg)
        result["member_params"] = params_of(ensemble.members[0])
        result["member_step"] = ensemble.report.members[0].step

        # 4. a choice made on rank 0 (a latency search) reaches every rank, and so does its error
        result["on_main"] = distributed.on_main(lambda: 10 + distributed.rank())
        try:
            distributed.on_main(lambda: _fail_on_rank_0())
        except TrainingError as exc:
            result["on_main_error"] = str(exc)

        # 5. latency measured on rank 0 and shared: a member ladder sized by it is the same on every rank
        blob = export_onnx(tiny_mlp(), torch.from_numpy(x[:2]))
        timing = LatencyConfig(rounds=2, calls_per_round=3, warmup=1)
        result["latency"] = measure_side_by_side({"a": blob, "b": blob}, x[:8], timing)

        # 6. the end of the collective part: rank 0 goes on alone, as one process
        result["continues"] = distributed.main_continues_alone()
        result["alone"] = (distributed.is_distributed(), distributed.world_size(), distributed.is_main_process())
    result["writes"] = writes
    queue.put(result)
