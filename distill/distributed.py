"""Data-parallel training across processes started by ``torchrun`` (PyTorch DDP): the one place that knows.

Every training command runs unchanged under ``torchrun --standalone --nproc_per_node=N -m distill COMMAND ...``.
:func:`session` (entered by the ``anytime-edge``/``python -m distill`` entry point) initialises the process
group from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``);
without that environment it does nothing and every function here answers as for one process, so training
is exactly what it was. Under it:

* :func:`distill.train.fit` wraps the model it trains (the student; the teacher is frozen and enters only as
  precomputed logits, never wrapped) in :class:`~torch.nn.parallel.DistributedDataParallel` and shards each
  epoch with a :class:`~torch.utils.data.DistributedSampler` seeded like the single-process order;
* rank 0 alone writes checkpoints, bundles and reports and prints (the other ranks' stdout is discarded by
  :func:`quiet_unless_main`; their stderr stays, so their errors are seen); once the students are trained a
  command calls :func:`main_continues_alone`: the other ranks return, and rank 0 exports, profiles and
  reports as one process (no collective can wait there for ranks that have left);
* the teacher's on-disk logit cache is filled by rank 0 while the others wait (:func:`main_process_first`),
  then read by them, so two ranks never write one entry;
* a choice made by measuring (a latency search) is made on rank 0 and sent to the others
  (:func:`on_main`), so every rank builds the same student.

Backend: ``gloo`` on CPU; when CUDA is present, ``cpu:gloo,cuda:nccl`` (NCCL carries CUDA tensors). The
toolkit trains on the CPU, so its collectives run on gloo either way.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler

from distill.errors import TrainingError

__all__ = [
    "all_reduce_sum",
    "barrier",
    "init_from_env",
    "is_distributed",
    "is_main_process",
    "launched_by_torchrun",
    "local_batch_size",
    "main_continues_alone",
    "main_process_first",
    "on_main",
    "quiet_unless_main",
    "rank",
    "sampler",
    "session",
    "shutdown",
    "world_size",
    "wrap",
]

T = TypeVar("T")

# What torchrun (torch.distributed.run) exports to every worker; env:// initialisation reads them.
_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_alone = False  # set on rank 0 by main_continues_alone(): the other ranks have left, act as one process


def launched_by_torchrun(environ: Mapping[str, str] | None = None) -> bool:
    """True when the process has torchrun's environment (all of RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT)."""
    env = os.environ if environ is None else environ
    return all(key in env for key in _TORCHRUN_ENV)


def init_from_env() -> bool:
    """Initialise the default process group from torchrun's environment; False (nothing done) without it.

    Raises:
        TrainingError: the environment is torchrun's but the group cannot be formed (one line, with the fix).
    """
    if not launched_by_torchrun() or (dist.is_available() and dist.is_initialized()):
        return False
    if not dist.is_available():
        raise TrainingError("this torch build has no torch.distributed; install a torch with distributed support")
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
    try:
        dist.init_process_group(backend=backend, init_method="env://")
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrainingError(
            f"cannot join torchrun's process group ({first}); start every rank with the same torchrun command"
        ) from None
    return True


def shutdown() -> None:
    """Destroy the default process group if one is initialised (idempotent)."""
    global _alone
    _alone = False
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def session() -> Iterator[bool]:
    """Initialise from torchrun's environment (if present) for the block, tear down after; yields whether it did.

    A group someone else initialised (a user's script) is used as it is and left for them to destroy.
    """
    started = init_from_env()
    try:
        yield started
    finally:
        if started:
            shutdown()


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process (that rank 0 still works with)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 and not _alone


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """How many processes train together (1 without a process group, and on rank 0 once it works alone)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """True on rank 0, and always without a process group: the process that writes files and prints."""
    return rank() == 0


def barrier() -> None:
    """Wait until every rank reaches this point (no-op for one process)."""
    if is_distributed():
        dist.barrier()


def main_continues_alone() -> bool:
    """End of the collective part of a command: True on rank 0 (and for one process), False on the others.

    The others return; rank 0 goes on alone (export, profiling, reports) and from here on every function
    of this module answers as for one process, so nothing there waits on a rank that has left.
    """
    global _alone
    if not is_distributed():
        return True
    if is_main_process():
        _alone = True
        return True
    return False


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. fills a cache); the others wait, then run it (and find the cache filled)."""
    if not is_main_process():
        barrier()
    try:
        yield
    finally:
        if is_main_process():
            barrier()


def on_main(fn: Callable[[], T]) -> T:
    """``fn()`` computed on rank 0 only and its result (or the error it raised) given to every rank.

    For choices made by measuring (latency searches, member sizing): each rank timing on its own would pick
    a different student, and the ranks' collectives would then no longer match. Rank 0 runs ``fn`` as one
    process (the others wait in the broadcast), so ``on_main`` may nest. Without a process group: ``fn()``.
    """
    global _alone
    if not is_distributed():
        return fn()
    outcome: list[Any] = [None]
    if is_main_process():
        _alone = True
        try:
            outcome[0] = (True, fn())
        except Exception as exc:  # noqa: BLE001 - re-raised on every rank below
            outcome[0] = (False, exc)
        finally:
            _alone = False
    # Pickle travels only between the ranks of this job (one torchrun), never from a file or the network.
    dist.broadcast_object_list(outcome, src=0)
    ok, value = outcome[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """The sums of ``values`` over all ranks (float64), the same list on every rank; ``values`` for one process."""
    if not is_distributed():
        return [float(v) for v in values]
    tensor = torch.tensor(list(values), dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def local_batch_size(global_batch: int) -> int:
    """Each rank's share of a batch of ``global_batch`` samples: ``ceil(global_batch / world_size)``.

    The configured batch size stays the global one, so the number of optimizer steps, the learning-rate
    schedule and (when it divides evenly) the samples of every step are those of a one-process run.
    """
    return -(-global_batch // world_size())


def sampler(n: int, seed: int) -> DistributedSampler[int]:
    """This rank's shard of ``range(n)``; after ``set_epoch(e)`` it orders by ``randperm(n, seed + e)``.

    Every rank gets ``ceil(n / world_size)`` indices (the last few repeat the first to even them out), rank
    ``r`` the ``r``-th of every ``world_size`` positions of the shuffled order.
    """
    indices: Any = range(n)  # the sampler only takes len() of its "dataset"
    return DistributedSampler(indices, num_replicas=world_size(), rank=rank(), shuffle=True, seed=seed, drop_last=False)


def wrap(model: nn.Module) -> nn.Module:
    """``model`` in :class:`~torch.nn.parallel.DistributedDataParallel`; ``model`` itself for one process.

    The wrapper shares ``model``'s parameters (rank 0's values are broadcast to every rank here) and
    averages their gradients across ranks in ``backward``; buffers (BatchNorm statistics) follow rank 0's.
    Frozen parameters (``requires_grad=False``) are left alone; parameters the forward never uses get no
    gradient, as in one process.
    """
    if not is_distributed() or not any(p.requires_grad for p in model.parameters()):
        return model
    from torch.nn.parallel import DistributedDataParallel

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    # static_graph: the toolkit's training graphs do not change between steps, and it lets a model hold
    # parameters its forward never uses (a user's module may) without find_unused_parameters' cost per step.
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None, static_graph=True)


@contextlib.contextmanager
def quiet_unless_main() -> Iterator[None]:
    """Discard stdout on every rank but 0 for the block (one copy of each report line); stderr is kept."""
    if is_main_process():
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield
