"""The teacher: trained once per data set and configuration, checkpointed safely, resumable.

A checkpoint directory holds ``config.json`` (the :class:`TeacherConfig` and the :class:`ModelConfig`),
``model.pt`` (a state dict only) and ``metrics.json``; while training, ``progress.pt`` holds the state of
the last finished epoch (model, optimizer, epoch) so an interrupted run resumes where it stopped. Tensors
are loaded with ``torch.load(weights_only=True)`` and every file is written to a temporary name and
renamed, so a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from distill import distributed
from distill.data import Dataset, load_dataset
from distill.errors import CheckpointError, TrainingError
from distill.losses import CrossEntropy
from distill.models import Classifier, ModelConfig, build_model, count_params
from distill.train import FitConfig, accuracy, fit, scaled_epochs
from edge_runtime.errors import BundleError, error_line
from edge_runtime.files import atomic_write

__all__ = [
    "TeacherConfig",
    "default_teacher_config",
    "default_teacher_dir",
    "ensure_teacher",
    "finished_run",
    "load_model",
    "save_model",
    "teacher_identity",
    "train_teacher",
]


@dataclass(frozen=True)
class TeacherConfig:
    """Architecture and schedule of a teacher."""

    family: str = "auto"  # model family (see distill.models); auto = from the input rank
    width: int = 32
    depth: int = 2
    hidden: int = 0  # CNN penultimate units; 0 = 4 * width
    epochs: int = 10
    lr: float = 2e-3
    batch_size: int = 128
    weight_decay: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise TrainingError("a teacher needs at least one epoch")

    def model_config(self, dataset: Dataset) -> ModelConfig:
        return ModelConfig.for_data(dataset, family=self.family, width=self.width, depth=self.depth, hidden=self.hidden)


def default_teacher_config(dataset: Dataset) -> TeacherConfig:
    """A teacher that is strong for its data and still quick on 2 CPU cores."""
    if dataset.name == "cluttered-mnist" or (len(dataset.input_shape) == 3 and min(dataset.input_shape[1:]) >= 48):
        # A ResNet (4 stages of 48, 96, 192, 384 channels, one basic block each, BatchNorm, global pooling):
        # 2.8 M parameters, 142 M MACs, ~1.3-1.6 ms per 64x64 image in ORT on one thread, the "teacher of
        # several ms" scale of a camera crop. About 150k training images (3 epochs of cluttered MNIST's 54k;
        # more epochs with a smaller limit_train): the whole split rather than a 20k subset for the same
        # steps, as more distinct digit positions and clutter layouts over-fit less at the same cost.
        return TeacherConfig(
            family="resnet",
            width=48,
            depth=4,
            hidden=0,
            lr=2e-3,
            batch_size=128,
            epochs=scaled_epochs(len(dataset.x_train), samples=150_000, low=2, high=30),
        )
    if dataset.name == "mnist" or (len(dataset.input_shape) == 3 and min(dataset.input_shape[1:]) >= 24):
        # Conv 32 -> 64 -> FC 128: >= 99% on MNIST in 4 epochs, ~0.3 ms per image in ORT.
        return TeacherConfig(width=32, depth=2, hidden=128, epochs=4, lr=2e-3, batch_size=128)
    if len(dataset.input_shape) == 2:  # signals (MNIST-1D)
        return TeacherConfig(width=32, depth=3, hidden=128, epochs=60, lr=2e-3, batch_size=128)
    if len(dataset.input_shape) == 3:  # small images (digits): 99.4%, ~0.04 ms, well above ORT's call floor
        return TeacherConfig(width=64, depth=2, hidden=256, epochs=40, lr=2e-3, batch_size=64)
    return TeacherConfig(width=256, depth=3, epochs=40, lr=1e-3)


def _atomic_save(obj: Any, path: Path) -> None:
    """Write ``obj`` as JSON (a ``.json`` path) or with ``torch.save``, atomically (:func:`edge_runtime.files.atomic_write`)."""

    def save(tmp: Path) -> None:
        torch.save(obj, tmp)

    data: bytes | Callable[[Path], None] = (json.dumps(obj, indent=2) + "\n").encode() if path.suffix == ".json" else save
    try:
        atomic_write(path, data)
    except BundleError as exc:
        raise CheckpointError(f"cannot write {path} ({error_line(exc)})") from None


def _load_tensors(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise CheckpointError(
            f"{path} is not a readable weights-only checkpoint ({type(exc).__name__}); retrain or restore it"
        ) from exc


def save_model(model: Classifier, out_dir: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as ``model.pt`` (state dict) + ``config.json`` (its ModelConfig and ``extra``).

    Raises:
        CheckpointError: ``model`` is not one of the toolkit's models (it has no ModelConfig to rebuild it from).
    """
    if not isinstance(getattr(model, "config", None), ModelConfig):
        raise CheckpointError(
            f"save_model writes the toolkit's own models; save a {type(model).__name__} with torch.export.save "
            "(a .pt2 file) and pass that as --teacher"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_save({k: v.detach().clone() for k, v in model.state_dict().items()}, out / "model.pt")
    _atomic_save({"model": model.config.to_dict(), **(extra or {})}, out / "config.json")
    return out


def load_model(checkpoint_dir: str | os.PathLike[str]) -> tuple[Classifier, dict[str, Any]]:
    """Rebuild a model from ``config.json`` + ``model.pt``; returns (model in eval mode, the config dict).

    Raises:
        CheckpointError: files missing, unreadable, or not matching the config.
    """
    root = Path(checkpoint_dir)
    config_path, weights_path = root / "config.json", root / "model.pt"
    if not config_path.is_file() or not weights_path.is_file():
        raise CheckpointError(f"{root} lacks config.json or model.pt; train it with `anytime-edge train-teacher`")
    try:
        config = json.loads(config_path.read_text())
        model = build_model(ModelConfig.from_dict(config["model"]))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{config_path} is malformed ({exc}); retrain the model") from exc
    try:
        model.load_state_dict(_load_tensors(weights_path))
    except RuntimeError as exc:
        raise CheckpointError(f"{weights_path} does not match its config.json; retrain the model") from exc
    model.eval()
    return model, config


def teacher_identity(dataset: Dataset, cfg: TeacherConfig) -> dict[str, Any]:
    """What makes two teacher runs the same (config, data name and fingerprint), as stored in config.json."""
    return json.loads(json.dumps({"teacher": asdict(cfg), "data": dataset.name, "data_fingerprint": dataset.fingerprint()}))


def finished_run(out_dir: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """``(identity, metrics)`` of the finished :func:`train_teacher` run in ``out_dir``, or None if none is."""
    out = Path(out_dir)
    try:
        config = json.loads((out / "config.json").read_text())
        metrics = json.loads((out / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not (out / "model.pt").is_file() or not isinstance(config, dict):
        return None
    return {key: config.get(key) for key in ("teacher", "data", "data_fingerprint")}, metrics


def train_teacher(
    dataset: Dataset, cfg: TeacherConfig, out_dir: str | os.PathLike[str], progress: bool = True
) -> tuple[Classifier, dict[str, Any]]:
    """Train a teacher on ``dataset`` into ``out_dir``, resuming from ``progress.pt`` if present.

    Under torchrun every rank trains (DDP) and reads the same ``progress.pt``; rank 0 alone writes.

    Returns:
        The trained model (eval mode) and its metrics (val/test accuracy, params, seconds).
    """
    out = Path(out_dir)
    if distributed.is_main_process():
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model_config(dataset))
    identity = teacher_identity(dataset, cfg)
    start_epoch, optimizer_state = 0, None
    progress_path = out / "progress.pt"
    progress_meta = out / "progress.json"
    if progress_path.is_file() and progress_meta.is_file():
        meta = json.loads(progress_meta.read_text())
        if meta.get("identity") == identity:
            state = _load_tensors(progress_path)
            model.load_state_dict(state["model"])
            optimizer_state = state["optimizer"]
            start_epoch = int(meta["epoch"]) + 1

    def checkpoint(epoch: int, m: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        _atomic_save({"model": m.state_dict(), "optimizer": optimizer.state_dict()}, progress_path)
        _atomic_save({"identity": identity, "epoch": epoch}, progress_meta)

    started = time.perf_counter()
    fit_cfg = FitConfig(
        epochs=cfg.epochs,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        weight_decay=cfg.weight_decay,
        seed=cfg.seed,
        progress=progress,
        desc=f"teacher ({dataset.name})",
    )
    fit(
        model,
        dataset.x_train,
        dataset.y_train,
        CrossEntropy(),
        fit_cfg,
        start_epoch=start_epoch,
        optimizer_state=optimizer_state,
        on_epoch_end=checkpoint,
    )
    metrics = {
        "val_accuracy": accuracy(model, dataset.x_val, dataset.y_val),
        "test_accuracy": accuracy(model, dataset.x_test, dataset.y_test),
        "params": count_params(model),
        "train_seconds": round(time.perf_counter() - started, 2),
        "resumed_from_epoch": start_epoch,
    }
    if distributed.is_main_process():
        save_model(model, out, extra=identity)
        _atomic_save(metrics, out / "metrics.json")
        for leftover in (progress_path, progress_meta):
            leftover.unlink(missing_ok=True)
    distributed.barrier()  # every rank may read the finished checkpoint from here on
    return model, metrics


def default_teacher_dir(dataset: Dataset, cfg: TeacherConfig | None = None, runs_dir: str | os.PathLike[str] = "runs") -> Path:
    """Where :func:`ensure_teacher` keeps the teacher of ``cfg`` (default: the data's) for ``dataset``."""
    cfg = cfg or default_teacher_config(dataset)
    key = hashlib.sha256(json.dumps([asdict(cfg), dataset.fingerprint()], sort_keys=True).encode()).hexdigest()[:10]
    return Path(runs_dir) / "teachers" / f"{dataset.name}-{key}"


def ensure_teacher(
    data: str | os.PathLike[str] | Dataset,
    cfg: TeacherConfig | None = None,
    runs_dir: str | os.PathLike[str] = "runs",
    progress: bool = True,
    seed: int = 0,
) -> tuple[Classifier, Dataset, dict[str, Any]]:
    """The teacher for ``data`` and ``cfg``: loaded from ``runs_dir/teachers/`` if trained before, else trained.

    Args:
        data: a data spec for :func:`distill.data.load_dataset`, or a loaded Dataset.
        cfg: the teacher configuration; None picks :func:`default_teacher_config`.
        runs_dir: where the cache of trained teachers lives.
        progress: show progress bars.
        seed: the data split seed when ``data`` is a spec.

    Returns:
        (teacher in eval mode, the dataset, metrics).
    """
    dataset = data if isinstance(data, Dataset) else load_dataset(data, seed=seed)
    cfg = cfg or default_teacher_config(dataset)
    out = default_teacher_dir(dataset, cfg, runs_dir)
    if (out / "model.pt").is_file() and (out / "metrics.json").is_file():
        model, _ = load_model(out)
        return model, dataset, json.loads((out / "metrics.json").read_text())
    model, metrics = train_teacher(dataset, cfg, out, progress=progress)
    return model, dataset, metrics
