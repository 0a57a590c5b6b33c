"""Data sets: the embedded defaults and what users bring, validated and split the same way.

``load_dataset(spec)`` accepts:

* ``digits`` — scikit-learn's bundled 8x8 digits (the embedded default, always available);
* ``mnist1d`` — MNIST-1D, generated locally by the ``mnist1d`` package (a 1-D, sensor-like signal);
* a directory of MNIST-format IDX files (``train-images*``, ``train-labels*``, ``t10k-images*``,
  ``t10k-labels*``; gzip or not);
* an ``.npz`` holding ``x_train, y_train, x_test, y_test`` (optional ``labels``: class names, and
  ``layout``: "signal" or "image" to settle a rank-3 array) of any rank: (N, F) tabular, (N, C, L)
  signals, (N, H, W) or (N, C, H, W) images.

A rank-3 array without ``layout`` is read as signals (N, C, L) when C <= 16 and L >= 4·C, else as
single-channel images (N, H, W). Inputs are standardised with the training split's global mean and
standard deviation; that affine map is the bundle's ``preprocess``, so the runtime takes raw inputs as a
client has them. The validation split is carved from train with a seeded permutation.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distill.errors import DataError
from edge_runtime.bundle import Preprocess, TaskSpec, TensorSpec
from edge_runtime.extras import missing_dependency_message

__all__ = ["Dataset", "load_dataset", "shared_mnist_dir"]

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


@dataclass(frozen=True, eq=False)
class Dataset:
    """Model-ready splits (float32 inputs, int64 labels) and how raw inputs map to them."""

    name: str  # e.g. "digits", "mnist", or the file name
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    labels: tuple[str, ...]  # class names, index = class id
    preprocess: Preprocess  # raw -> model input: x * scale + offset

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one model input, without the batch dimension."""
        return tuple(int(d) for d in self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def raw(self, x: np.ndarray) -> np.ndarray:
        """Undo the preprocessing: what a client would send for model input ``x``."""
        return ((x - self.preprocess.offset) / self.preprocess.scale).astype(np.float32)

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, input_shape={self.input_shape}, classes={self.num_classes}, "
            f"train={len(self.x_train)}, val={len(self.x_val)}, test={len(self.x_test)})"
        )

    def task_spec(self, input_name: str = "x") -> TaskSpec:
        """The bundle's task for models trained on this data: labels, input shape, preprocessing."""
        return TaskSpec(labels=self.labels, input=TensorSpec(name=input_name, shape=(-1, *self.input_shape)), preprocess=self.preprocess)

    def fingerprint(self) -> str:
        """A short id of the data, for caching trained teachers."""
        h = hashlib.sha256(self.name.encode())
        for arr in (self.x_train[:512], self.y_train, self.x_test[:512], self.y_test):
            h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()[:12]


def shared_mnist_dir() -> Path | None:
    """The real MNIST shipped beside the project (``../shared/data/mnist``), if present."""
    candidates = [os.environ.get("ANYTIME_EDGE_MNIST", "")]
    here = Path(__file__).resolve().parents[1]
    candidates += [str(here.parent / "shared" / "data" / "mnist"), str(here / "shared" / "data" / "mnist")]
    for c in candidates:
        if c and Path(c).is_dir() and any(Path(c).glob("train-images*")):
            return Path(c)
    return None


def load_dataset(spec: str | os.PathLike[str], *, seed: int = 0, val_fraction: float = 0.1, limit_train: int | None = None) -> Dataset:
    """Load, validate, standardise and split a data set.

    Args:
        spec: "digits", "mnist1d", "mnist" (the shared real MNIST), an IDX directory, or an .npz file.
        seed: seeds the validation split (and the digits train/test split).
        val_fraction: share of the training split held out for validation (thresholds, early stopping).
        limit_train: keep only the first N training samples (after shuffling) — for quick experiments.

    Returns:
        The validated :class:`Dataset`.

    Raises:
        DataError: the data cannot be read, or fails validation (lengths, labels, NaN/inf, shapes).
    """
    if not 0.0 < val_fraction < 0.5:
        raise DataError(f"val_fraction must be in (0, 0.5), not {val_fraction}")
    text = str(spec)
    labels: tuple[str, ...] | None = None
    if text == "digits":
        name, (x_tr, y_tr, x_te, y_te) = "digits", _digits(seed)
    elif text == "mnist1d":
        name, (x_tr, y_tr, x_te, y_te) = "mnist1d", _mnist1d(seed)
    elif text == "mnist":
        found = shared_mnist_dir()
        if found is None:
            raise DataError("real MNIST not found beside the project; pass --data DIR with the IDX files")
        name, (x_tr, y_tr, x_te, y_te) = "mnist", _idx_dir(found)
    elif Path(text).is_dir():
        name, (x_tr, y_tr, x_te, y_te) = Path(text).name or "idx", _idx_dir(Path(text))
        name = "mnist" if Path(text).resolve() == (shared_mnist_dir() or Path("/nonexistent")).resolve() else name
    elif text.endswith(".npz") and Path(text).is_file():
        name = Path(text).stem
        x_tr, y_tr, x_te, y_te, labels = _npz(Path(text))
    else:
        raise DataError(f"--data '{text}' is not digits, mnist1d, mnist, an IDX directory or an existing .npz file")
    return _finish(name, x_tr, y_tr, x_te, y_te, labels, seed, val_fraction, limit_train)


def _digits(seed: int) -> tuple[np.ndarray, ...]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DataError(f"the digits data {missing_dependency_message('sklearn')}") from exc
    bunch = load_digits()
    x = bunch.images.astype(np.float32)[:, None]  # (N, 1, 8, 8), values 0..16
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng(seed + 7).permutation(len(y))
    n_test = len(y) // 5
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def _mnist1d(seed: int) -> tuple[np.ndarray, ...]:
    os.environ.setdefault("MPLBACKEND", "Agg")
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as exc:
        raise DataError(f"the mnist1d data {missing_dependency_message('mnist1d')}") from exc
    args = get_dataset_args()
    args.seed = seed
    data = make_dataset(args)  # generated locally; get_dataset would try the network first
    x_tr = np.asarray(data["x"], dtype=np.float32)[:, None, :]
    x_te = np.asarray(data["x_test"], dtype=np.float32)[:, None, :]
    return x_tr, np.asarray(data["y"], dtype=np.int64), x_te, np.asarray(data["y_test"], dtype=np.int64)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:  # type: ignore[operator]
            data = f.read()
    except OSError as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number)")
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    body = data[4 + 4 * ndim :]
    if len(body) != expected:
        raise DataError(f"{path} holds {len(body)} bytes of data, its header promises {expected}; the file is damaged")
    return np.frombuffer(body, dtype=dtype).reshape(dims)


def _idx_dir(root: Path) -> tuple[np.ndarray, ...]:
    def one(prefix: str) -> np.ndarray:
        matches = sorted(p for p in root.iterdir() if p.name.startswith(prefix))
        if not matches:
            raise DataError(f"{root} has no '{prefix}*' IDX file; an MNIST-format directory needs train/t10k images and labels")
        return _read_idx(matches[0])

    x_tr, x_te = one("train-images").astype(np.float32), one("t10k-images").astype(np.float32)
    if x_tr.ndim == 3:  # (N, H, W) images -> (N, 1, H, W)
        x_tr, x_te = x_tr[:, None], x_te[:, None]
    return x_tr, one("train-labels").astype(np.int64), x_te, one("t10k-labels").astype(np.int64)


def _npz(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...] | None]:
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in z.files]
            if missing:
                raise DataError(f"{path} lacks {missing}; an .npz needs x_train, y_train, x_test, y_test")
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path} as an .npz without pickles ({exc})") from exc
    labels = tuple(str(s) for s in arrays["labels"].tolist()) if "labels" in arrays else None
    layout = str(arrays["layout"]) if "layout" in arrays else None
    x_tr, x_te = arrays["x_train"], arrays["x_test"]
    for key in ("x_train", "x_test", "y_train", "y_test"):
        if arrays[key].dtype.kind not in "biuf":
            raise DataError(f"{path}: {key} has dtype {arrays[key].dtype}; use numbers")
    if x_tr.ndim == 3:
        signal = layout == "signal" or (layout is None and x_tr.shape[1] <= 16 and x_tr.shape[2] >= 4 * x_tr.shape[1])
        if layout not in (None, "signal", "image"):
            raise DataError(f"{path}: layout must be 'signal' or 'image', not '{layout}'")
        if not signal:
            x_tr, x_te = x_tr[:, None], x_te[:, None]
    return x_tr, arrays["y_train"], x_te, arrays["y_test"], labels


def _finish(
    name: str,
    x_tr: np.ndarray,
    y_tr: np.ndarray,
    x_te: np.ndarray,
    y_te: np.ndarray,
    labels: tuple[str, ...] | None,
    seed: int,
    val_fraction: float,
    limit_train: int | None,
) -> Dataset:
    if x_tr.ndim not in (2, 3, 4):
        raise DataError(f"inputs of rank {x_tr.ndim} are not supported; use (N, F), (N, C, L), (N, H, W) or (N, C, H, W)")
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise DataError(f"train inputs {x_tr.shape[1:]} and test inputs {x_te.shape[1:]} differ in shape")
    for split, x, y in (("train", x_tr, y_tr), ("test", x_te, y_te)):
        if len(x) == 0:
            raise DataError(f"the {split} split is empty")
        if y.ndim != 1 or len(x) != len(y):
            raise DataError(f"the {split} split has {len(x)} inputs but {y.shape} labels; they must match one to one")
        if not np.all(np.isfinite(x)):
            raise DataError(f"the {split} inputs hold NaN or inf; clean the data first")
        if y.dtype.kind == "f" and not np.all(np.equal(np.mod(y, 1), 0)):
            raise DataError(f"the {split} labels are not whole numbers; labels must be class ids 0..C-1")
    y_tr, y_te = y_tr.astype(np.int64), y_te.astype(np.int64)
    num_classes = len(labels) if labels else int(max(y_tr.max(), y_te.max())) + 1
    for split, y in (("train", y_tr), ("test", y_te)):
        if y.min() < 0 or y.max() >= num_classes:
            raise DataError(f"the {split} labels must lie in 0..{num_classes - 1}; found {y.min()}..{y.max()}")
    if num_classes < 2:
        raise DataError("the data has a single class; a classifier needs at least two")
    labels = labels or tuple(str(c) for c in range(num_classes))

    x_tr, x_te = x_tr.astype(np.float32), x_te.astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(y_tr))
    n_val = max(1, int(round(len(order) * val_fraction)))
    val, train = order[:n_val], order[n_val:]
    if limit_train is not None:
        train = train[:limit_train]
    mean = float(x_tr[train].mean())
    std = float(x_tr[train].std()) or 1.0
    pre = Preprocess(scale=1.0 / std, offset=-mean / std)

    def model_ready(x: np.ndarray) -> np.ndarray:
        return (x * np.float32(pre.scale) + np.float32(pre.offset)).astype(np.float32)

    return Dataset(
        name=name,
        x_train=model_ready(x_tr[train]),
        y_train=y_tr[train],
        x_val=model_ready(x_tr[val]),
        y_val=y_tr[val],
        x_test=model_ready(x_te),
        y_test=y_te,
        labels=labels,
        preprocess=pre,
    )
