"""Where a teacher comes from: the toolkit's own checkpoints, or a model the user already has.

A teacher is anything that maps a batch to logits. :func:`load_teacher` accepts

* ``"auto"`` — the toolkit's default teacher for the data, trained once and cached under ``runs/teachers``;
* a checkpoint directory written by ``anytime-edge train-teacher`` (``config.json`` + ``model.pt``);
* an ONNX classifier (``.onnx``): logits computed with ONNX Runtime. It serves every method that only
  needs the teacher's logits (B-DISTIL rounds, knowledge distillation of any student the toolkit builds,
  the RESCHED/NO-RESCHED baselines), not the methods that rewrite the teacher's layers;
* a ``torch.export`` program (``.pt2``, as written by ``torch.export.save``): a real torch module, so it
  also serves the methods that rewrite layers (low-rank, FCPTS, DSD², channel pruning);
* in Python, any ``nn.Module`` whose forward returns logits (see :mod:`distill.logits`).

**Inputs.** The toolkit trains on model-ready inputs (raw values mapped by the data's ``preprocess``);
a user's own model takes what its clients send, the raw values. :class:`RawInputTeacher` puts the inverse
map in front of such a model (``raw = (x - offset) / scale``, then back to channels-last when the data
came that way), so to every method it looks like a toolkit model and the students it yields take
model-ready inputs too. ``inputs="model"`` skips this for a model trained on standardised inputs.

**Logits cache.** Every loaded teacher gets a :class:`~distill.logit_cache.LogitCache` keyed by a hash of
its file(s) and of the preprocessing, so the logits of each split are computed once across commands.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from distill.data import Dataset
from distill.errors import CheckpointError, TrainingError
from distill.logit_cache import LogitCache, attach
from distill.logits import logits_of
from edge_runtime.errors import error_line

__all__ = [
    "INPUT_MODES",
    "LoadedTeacher",
    "LogProbabilities",
    "OnnxTeacher",
    "RawInputTeacher",
    "dense_proxy",
    "load_teacher",
    "rewritable_layers",
]

INPUT_MODES = ("raw", "model")  # what a user's teacher takes: raw client values, or model-ready inputs


def _inverse_preprocess(dataset: Dataset) -> tuple[np.ndarray, np.ndarray, bool]:
    """(scale, offset, channels_last) of the data's preprocess, broadcastable to one model-ready sample."""
    pre = dataset.preprocess
    scale = np.asarray(pre.scale, dtype=np.float32)
    offset = np.asarray(pre.offset, dtype=np.float32)
    shape = dataset.input_shape
    if scale.ndim == 1 and scale.size > 1:  # one value per feature/channel: channel axis is the sample's first
        scale = scale.reshape((-1,) + (1,) * (len(shape) - 1))
        offset = offset.reshape((-1,) + (1,) * (len(shape) - 1))
    channels_last = str(getattr(pre, "layout", "") or "").lower() == "nhwc"
    return scale, offset, channels_last


class RawInputTeacher(nn.Module):
    """A user's model that takes raw client values, made to take model-ready inputs.

    ``forward(x)`` with ``x`` model-ready ``(N, *input_shape)`` returns ``module(raw(x))``, where
    ``raw(x) = (x - offset) / scale`` and, for channels-last data, ``(N, C, H, W) -> (N, H, W, C)``.
    The output is returned as the module gives it (any form :func:`distill.logits.logits_of` accepts).
    """

    def __init__(self, module: nn.Module, dataset: Dataset) -> None:
        super().__init__()
        self.module = module
        scale, offset, channels_last = _inverse_preprocess(dataset)
        self.register_buffer("scale", torch.from_numpy(np.ascontiguousarray(scale)), persistent=False)
        self.register_buffer("offset", torch.from_numpy(np.ascontiguousarray(offset)), persistent=False)
        self.channels_last = channels_last
        self.train(module.training)  # a new Module starts in training mode; mirror the user's (a teacher: eval)

    def forward(self, x: torch.Tensor) -> Any:
        raw = (x - self.offset) / self.scale
        if self.channels_last:
            raw = raw.movedim(1, -1)
        return self.module(raw)


class OnnxTeacher(nn.Module):
    """An ONNX classifier as a source of logits (ONNX Runtime on the CPU); it has no trainable layers.

    ``forward(x)`` takes model-ready ``(N, *input_shape)`` and returns logits ``(N, classes)`` as a tensor.
    Which output: the one named ``logits`` if there is one, else the first floating-point output of rank 2
    (a converted scikit-learn classifier puts an integer ``label`` first). An output that holds
    probabilities (rows in [0, 1] summing to 1, as a model ending in softmax gives) is turned into
    log-probabilities, which are logits up to a per-row constant. Inputs go through the inverse preprocess
    first unless ``inputs="model"``, and are cast to the graph's input type (float32, float64, integers).

    Raises:
        CheckpointError: the file cannot be loaded by ONNX Runtime, has not exactly one input, or has no
            floating-point (N, classes) output.
    """

    def __init__(self, path: str | os.PathLike[str], dataset: Dataset, inputs: str = "raw", threads: int = 0) -> None:
        super().__init__()
        from edge_runtime.session import ort  # through session: the no-telemetry default is set before ORT loads

        self.path = Path(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types for a bad file
            raise CheckpointError(
                f"{self.path} is not a loadable ONNX model ({error_line(exc)}); pass an ONNX classifier"
            ) from exc
        feeds = self.session.get_inputs()
        if len(feeds) != 1:
            raise CheckpointError(f"{self.path} takes {len(feeds)} inputs; a teacher takes exactly one (the batch)")
        self.input_name = feeds[0].name
        batch_dim = feeds[0].shape[0] if feeds[0].shape else None
        self.fixed_batch = batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else 0
        self.input_dtype = np.dtype(_ONNX_TYPES.get(feeds[0].type, "float32"))
        outputs = self.session.get_outputs()
        names = [o.name for o in outputs]
        floats = [
            o.name
            for o in outputs
            if o.type in ("tensor(float)", "tensor(double)", "tensor(float16)") and len(o.shape or ()) == 2
        ]
        if "logits" in names:
            self.output_name = "logits"
        elif floats:
            self.output_name = floats[0]
        else:
            raise CheckpointError(
                f"{self.path} has no floating-point (N, classes) output (outputs: {names}); export the classifier's "
                "logits or probabilities as a float tensor"
            )
        self.raw_inputs = inputs == "raw"
        self.scale, self.offset, self.channels_last = _inverse_preprocess(dataset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feed = x.detach().cpu().numpy().astype(np.float32)
        if self.raw_inputs:
            feed = (feed - self.offset) / self.scale
            if self.channels_last:
                feed = np.moveaxis(feed, 1, -1)
        if self.input_dtype.kind in "iu":
            feed = np.rint(feed)  # integer inputs (uint8 pixels): undo float rounding of the inverse map
        feed = np.ascontiguousarray(feed, dtype=self.input_dtype)
        step = self.fixed_batch or len(feed)
        parts = [
            self.session.run([self.output_name], {self.input_name: feed[i : i + step]})[0] for i in range(0, len(feed), step)
        ]
        out = np.concatenate(parts).astype(np.float32)
        if out.ndim == 2 and _are_probabilities(out):
            out = np.log(np.maximum(out, 1e-12)).astype(np.float32)  # probabilities -> log-probabilities
        return torch.from_numpy(out)


_ONNX_TYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(uint8)": "uint8",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
}


def rewritable_layers(module: nn.Module) -> list[str]:
    """Names of the Linear/Conv layers a layer-rewriting method could act on (empty: logits only)."""
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d)
    return [name for name, m in module.named_modules() if isinstance(m, kinds)]


@dataclass
class LoadedTeacher:
    """A resolved teacher: the module every method calls, and where it came from."""

    module: nn.Module  # takes model-ready inputs; forward returns logits (any accepted form)
    kind: str  # "auto", "checkpoint", "onnx", "pt2" or "module"
    source: str  # the spec it was loaded from
    identity: str  # hash of the teacher file(s) and of how inputs reach it (keys the logits cache)
    metrics: dict[str, Any] = field(default_factory=dict)  # test_accuracy, and whatever training recorded
    onnx_path: Path | None = None  # the teacher's own ONNX file, when it came as one

    @property
    def has_layers(self) -> bool:
        """True when methods that rewrite Linear/Conv layers can act on this teacher."""
        return bool(rewritable_layers(self.module))

    def layered(
        self,
        method: str,
        dataset: Dataset,
        *,
        runs_dir: str | os.PathLike[str] = "runs",
        progress: bool = True,
        say: Any = None,
        proxy_config: Any = None,
    ) -> nn.Module:
        """A module with layers for ``method``: the teacher itself, or for an ONNX teacher its :func:`dense_proxy`.

        ``say`` (a print-like callable) is told when the proxy stands in for the teacher; ``proxy_config`` is
        the proxy's TeacherConfig (None: the data's default teacher architecture and schedule).
        """
        if self.kind != "onnx":
            return self.require_layers(method)
        proxy = dense_proxy(self, dataset, runs_dir=runs_dir, progress=progress, config=proxy_config)
        if say is not None:
            from distill.train import accuracy

            say(
                f"note: {method} acts on a dense proxy distilled from the ONNX teacher {self.source} (it has no layers to "
                f"rewrite); proxy test accuracy {100 * accuracy(proxy, dataset.x_test, dataset.y_test):.2f}%"
            )
        return proxy

    def require_layers(self, method: str) -> nn.Module:
        """The module, for a method that rewrites layers; one-line error for a logits-only teacher.

        Raises:
            TrainingError: the teacher is an ONNX file or has no Linear/Conv layers.
        """
        if self.kind == "onnx":
            raise TrainingError(
                f"{method} rewrites the teacher's layers, but {self.source} is ONNX (logits only); "
                "give the model as a torch.export program (.pt2) or a checkpoint"
            )
        if not self.has_layers:
            raise TrainingError(f"{method} found no Linear or Conv1d/Conv2d layer in the teacher {self.source}")
        return self.module


def dense_proxy(
    teacher: LoadedTeacher,
    dataset: Dataset,
    *,
    runs_dir: str | os.PathLike[str] = "runs",
    progress: bool = True,
    config: Any = None,
) -> nn.Module:
    """A toolkit model (the data's default teacher architecture) distilled from a logits-only teacher.

    Methods that rewrite layers (low-rank, FCPTS, DSD², channels) cannot act on an ONNX teacher; they act on
    this dense proxy instead, trained once by knowledge distillation (``kd``: alpha 0.9, T 4) from the
    teacher's (cached) logits and kept under ``runs_dir/proxies/<teacher id>``.

    Args:
        config: the proxy's :class:`~distill.teacher.TeacherConfig` (None: the data's default teacher's).

    Returns:
        The proxy in eval mode (``forward(x) -> (logits, features)``, model-ready inputs).
    """
    from distill.losses import make_loss
    from distill.models import build_model
    from distill.teacher import default_teacher_config, load_model, save_model
    from distill.train import FitConfig, fit, predict_logits

    cfg = config or default_teacher_config(dataset)
    key = hashlib.sha256(json.dumps([teacher.identity, asdict(cfg), dataset.fingerprint()], sort_keys=True).encode()).hexdigest()[
        :16
    ]
    out = Path(runs_dir) / "proxies" / key
    if teacher.identity and (out / "model.pt").is_file():
        try:
            model, _ = load_model(out)
            return model
        except CheckpointError:  # damaged: train it again
            pass
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model_config(dataset))
    logits = predict_logits(teacher.module, dataset.x_train)
    fit(
        model,
        dataset.x_train,
        dataset.y_train,
        make_loss("kd"),
        FitConfig(
            epochs=cfg.epochs,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            progress=progress,
            desc="dense proxy of the teacher",
        ),
        teacher_logits=logits,
    )
    model.eval()
    if teacher.identity:
        from distill import distributed

        if distributed.is_main_process():  # under torchrun every rank trained it; rank 0 writes it
            save_model(model, out, extra={"proxy_of": teacher.source, "teacher_identity": teacher.identity})
        distributed.barrier()
    return model


def _hash_files(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _identity(files_hash: str, dataset: Dataset, inputs: str) -> str:
    pre = dataset.preprocess
    how = {
        "scale": np.asarray(pre.scale).tolist(),
        "offset": np.asarray(pre.offset).tolist(),
        "layout": str(getattr(pre, "layout", "") or ""),
        "inputs": inputs,
    }
    return hashlib.sha256((files_hash + json.dumps(how, sort_keys=True)).encode()).hexdigest()[:20]


def _load_pt2(path: Path) -> nn.Module:
    try:
        from distill.exported import load_exported_module
    except ImportError:  # before the layer-preserving loader exists, the program's own module
        try:
            program = torch.export.load(str(path))
        except Exception as exc:  # torch raises many types for a bad file
            raise CheckpointError(
                f"{path} is not a torch.export program ({type(exc).__name__}); write it with torch.export.save"
            ) from exc
        return program.module()
    return load_exported_module(path)


def _test_accuracy(module: nn.Module, dataset: Dataset) -> float:
    from distill.train import accuracy

    return accuracy(module, dataset.x_test, dataset.y_test)


def _check_classes(module: nn.Module, dataset: Dataset, source: str) -> bool:
    """One forward on a few validation rows: right output form and class count, or a one-line error.

    Returns:
        True when the output looks like probabilities (rows in [0, 1] summing to 1: a forward ending in softmax).
    """
    with torch.no_grad():
        try:
            out = logits_of(module(torch.from_numpy(np.ascontiguousarray(dataset.x_val[:16]))), who=f"the teacher {source}")
        except TrainingError:
            raise
        except Exception as exc:  # a user's model (torch or ORT) may raise anything on wrong inputs
            raise CheckpointError(
                f"the teacher {source} fails on --data inputs of shape {dataset.input_shape} ({error_line(exc)}); "
                "pass the data it was trained on, or --teacher-inputs model if it takes standardised inputs"
            ) from exc
    if out.shape[1] != dataset.num_classes:
        raise CheckpointError(
            f"the teacher {source} returns {out.shape[1]} logits per sample but the data has {dataset.num_classes} classes; "
            "pass the data it was trained on"
        )
    return _are_probabilities(out.numpy())


def _are_probabilities(out: np.ndarray) -> bool:
    return bool(out.size and out.min() >= 0.0 and out.max() <= 1.0 and np.allclose(out.sum(axis=1), 1.0, atol=1e-3))


class LogProbabilities(nn.Module):
    """A teacher whose forward ends in softmax, made to return log-probabilities (logits up to a constant).

    Distillation at a temperature needs logits: softmax(p / T) of probabilities ``p`` is almost uniform.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.train(module.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(logits_of(self.module(x), who="the teacher").clamp_min(1e-12))


def load_teacher(
    spec: str | os.PathLike[str] | nn.Module,
    dataset: Dataset,
    *,
    runs_dir: str | os.PathLike[str] = "runs",
    inputs: str = "raw",
    cache: bool = True,
    progress: bool = True,
    config: Any = None,
) -> LoadedTeacher:
    """Resolve a teacher for ``dataset``: ``"auto"``, a checkpoint dir, a ``.onnx``/``.pt2`` file, or a module.

    Args:
        spec: what to load (see the module docstring).
        dataset: the data the students will be trained on (its preprocess maps raw values to model inputs).
        runs_dir: cache of trained default teachers (``teachers/``) and of teacher logits (``teacher_logits/``).
        inputs: ``"raw"`` (default) when a user's model (``.onnx``, ``.pt2``, module) takes raw client values,
            ``"model"`` when it takes model-ready (standardised) inputs. Toolkit checkpoints are always model-ready.
        cache: attach an on-disk logits cache (not for in-memory modules, which have no file to hash).
        progress: progress bars while training the default teacher.
        config: for ``"auto"``, the :class:`~distill.teacher.TeacherConfig` to train (None: the data's default).

    Returns:
        A :class:`LoadedTeacher` whose ``module`` takes model-ready inputs.

    Raises:
        CheckpointError: the file is missing or unreadable, or does not fit the data (input shape, classes).
        TrainingError: ``inputs`` is not one of :data:`INPUT_MODES`.
    """
    from distill.teacher import default_teacher_dir, ensure_teacher, load_model

    if inputs not in INPUT_MODES:
        raise TrainingError(f"teacher inputs '{inputs}' is unknown; use one of {list(INPUT_MODES)}")
    logits_root = Path(runs_dir) / "teacher_logits"
    if isinstance(spec, nn.Module):
        module = RawInputTeacher(spec, dataset) if inputs == "raw" else spec
        module.eval()
        if _check_classes(module, dataset, type(spec).__name__):
            module = LogProbabilities(module)
        return LoadedTeacher(module, "module", type(spec).__name__, "", {"test_accuracy": _test_accuracy(module, dataset)})

    text = str(spec)
    path = Path(text)
    onnx_path: Path | None = None
    if text == "auto":
        module, _, metrics = ensure_teacher(dataset, config, runs_dir=runs_dir, progress=progress)
        kind = "auto"
        checkpoint = default_teacher_dir(dataset, config, runs_dir)
        identity = _identity(_hash_files(checkpoint / "model.pt", checkpoint / "config.json"), dataset, "model")
    elif path.is_dir():
        module, config = load_model(path)
        if tuple(config["model"]["input_shape"]) != dataset.input_shape:
            raise CheckpointError(
                f"the teacher in {path} takes inputs {tuple(config['model']['input_shape'])}, "
                f"but the data has {dataset.input_shape}; pass the data it was trained on"
            )
        kind, metrics = "checkpoint", {}
        identity = _identity(_hash_files(path / "model.pt", path / "config.json"), dataset, "model")
    elif path.suffix == ".onnx" and path.is_file():
        module = OnnxTeacher(path, dataset, inputs=inputs)
        kind, metrics, onnx_path = "onnx", {}, path
        identity = _identity(_hash_files(path), dataset, inputs)
    elif path.suffix == ".pt2" and path.is_file():
        loaded = _load_pt2(path)
        module = RawInputTeacher(loaded, dataset) if inputs == "raw" else loaded
        kind, metrics = "pt2", {}
        identity = _identity(_hash_files(path), dataset, inputs)
    else:
        raise CheckpointError(
            f"--teacher '{text}' is not 'auto', a checkpoint directory, an existing .onnx file or an existing .pt2 "
            "(torch.export.save) file"
        )
    module.eval()  # parameters stay trainable: students that start as a copy of the teacher train them
    if kind not in ("auto", "onnx") and _check_classes(module, dataset, text):
        module = LogProbabilities(module)  # a .pt2 or checkpoint whose forward ends in softmax
    elif kind == "onnx":
        _check_classes(module, dataset, text)  # OnnxTeacher already turns probabilities into log-probabilities
    teacher = LoadedTeacher(module, kind, text, identity, dict(metrics), onnx_path)
    if cache:
        attach(module, LogitCache(logits_root, identity))
    if "test_accuracy" not in teacher.metrics:
        teacher.metrics["test_accuracy"] = _test_accuracy(module, dataset)
    return teacher
