"""Data sets: the embedded defaults and what users bring, validated and split the same way.

``load_dataset(spec)`` accepts:

* ``digits`` — scikit-learn's bundled 8x8 digits (the embedded default, always available);
* ``mnist1d`` — MNIST-1D, generated locally by the ``mnist1d`` package (a 1-D, sensor-like signal);
* ``cluttered-mnist`` — each real MNIST digit at a random place on a 64x64 canvas with 8x8 clutter cut
  from other digits (:mod:`distill.cluttered`), built from the shared MNIST, or from the IDX files in DIR
  with ``cluttered-mnist:DIR``; generated once (seeded) and cached under ``runs/data``;
* a directory of MNIST-format IDX files (``train-images*``, ``train-labels*``, ``t10k-images*``,
  ``t10k-labels*``; gzip or not);
* an ``.npz`` (read without pickles) holding ``x_train, y_train, x_test, y_test`` of any rank: (N, F)
  tabular, (N, C, L) signals, (N, H, W) or (N, C, H, W) / (N, H, W, C) images. Optional keys: ``labels``
  (class names, index = class id) and ``layout``: "signal" or "image" for a rank-3 array, "nchw" or "nhwc"
  for a rank-4 one.

Shapes. A rank-3 array without ``layout`` is read as signals (N, C, L) when C <= 16 and L >= 4·C, else as
single-channel images (N, H, W) -> (N, 1, H, W). A rank-4 array without ``layout`` is read channels-last
(N, H, W, C) only in the unambiguous case: the last axis is 1, 3 or 4 and both other axes are larger;
anything else stays (N, C, H, W). Channels-last images are transposed to (N, C, H, W) for the models, and
the bundle's preprocess records ``layout="nhwc"``, so clients keep sending (N, H, W, C).

Labels. Integer (or whole float) class ids 0..C-1, or strings (unicode or bytes): string labels become
class ids in sorted order of the names found in train and test, and the names become the labels (with a
``labels`` key, the ids are the names' positions in it instead).

Standardisation. Per feature (tabular) or per channel (signals, images), with the training split's mean
and standard deviation (a constant feature/channel is only centred). That map, with the layout, is the
bundle's ``preprocess`` (:class:`edge_runtime.bundle.Preprocess`), so the runtime takes raw inputs as a
client has them; single-channel data keeps one scalar scale and offset.

Validation split. Carved from train, stratified by class with a seeded generator (every class keeps at
least one training sample). A split of fewer than ~100 samples, or fewer than 5 of some class, makes
thresholds and early stopping noisy: ``load_dataset`` then logs one warning line on the ``distill.data``
logger (Python prints it to stderr as one line when logging is not configured).
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distill.errors import DataError
from edge_runtime.bundle import Preprocess, TaskSpec, TensorSpec
from edge_runtime.extras import missing_dependency_message

__all__ = ["MIN_VAL_PER_CLASS", "MIN_VAL_SAMPLES", "Dataset", "is_channels_last", "load_dataset", "shared_mnist_dir"]

logger = logging.getLogger("distill.data")

MIN_VAL_SAMPLES = 100  # below this, a validation split gives noisy thresholds and early stopping: warn
MIN_VAL_PER_CLASS = 5  # likewise for the rarest class
_CHANNELS_LAST = (1, 3, 4)  # last-axis sizes that mark a rank-4 array as (N, H, W, C) when H, W are larger

_IDX_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


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
    preprocess: Preprocess  # raw client input -> model input: layout transpose, then x * scale + offset
    warnings: tuple[str, ...] = ()  # one-line findings about the data (also logged on "distill.data"), for reports

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one model input, without the batch dimension (channels first)."""
        return tuple(int(d) for d in self.x_train.shape[1:])

    @property
    def raw_input_shape(self) -> tuple[int, ...]:
        """Shape of one input as a client sends it (e.g. (H, W, C) for channels-last images)."""
        return self.preprocess.raw_shape(self.input_shape)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def raw(self, x: np.ndarray) -> np.ndarray:
        """Undo the preprocessing: what a client would send for model input ``x`` (N, *input_shape).

        Returns float32 of shape (N, *raw_input_shape); ``preprocess.apply`` of it gives ``x`` back.
        """
        return self.preprocess.invert(x)

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, input_shape={self.input_shape}, classes={self.num_classes}, "
            f"train={len(self.x_train)}, val={len(self.x_val)}, test={len(self.x_test)})"
        )

    def task_spec(self, input_name: str = "x") -> TaskSpec:
        """The bundle's task for models trained on this data: labels, the client's input shape, preprocessing."""
        return TaskSpec(
            labels=self.labels, input=TensorSpec(name=input_name, shape=(-1, *self.raw_input_shape)), preprocess=self.preprocess
        )

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


def load_dataset(
    spec: str | os.PathLike[str], *, seed: int = 0, val_fraction: float = 0.1, limit_train: int | None = None
) -> Dataset:
    """Load, validate, standardise and split a data set.

    Args:
        spec: "digits", "mnist1d", "mnist" (the shared real MNIST), "cluttered-mnist[:DIR]", an IDX
            directory, or an .npz file.
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
    layout: str | None = None  # the client layout of channels-last .npz images
    if text == "digits":
        name, (x_tr, y_tr, x_te, y_te) = "digits", _digits(seed)
    elif text == "mnist1d":
        name, (x_tr, y_tr, x_te, y_te) = "mnist1d", _mnist1d(seed)
    elif text == "mnist":
        found = shared_mnist_dir()
        if found is None:
            raise DataError("real MNIST not found beside the project; pass --data DIR with the IDX files")
        name, (x_tr, y_tr, x_te, y_te) = "mnist", _idx_dir(found)
    elif text == "cluttered-mnist" or text.startswith("cluttered-mnist:"):
        name, (x_tr, y_tr, x_te, y_te) = "cluttered-mnist", _cluttered(text.partition(":")[2])
    elif Path(text).is_dir():
        name, (x_tr, y_tr, x_te, y_te) = Path(text).name or "idx", _idx_dir(Path(text))
        name = "mnist" if Path(text).resolve() == (shared_mnist_dir() or Path("/nonexistent")).resolve() else name
    elif text.endswith(".npz") and Path(text).is_file():
        name = Path(text).stem
        x_tr, y_tr, x_te, y_te, labels, layout = _npz(Path(text))
    else:
        raise DataError(
            f"--data '{text}' is not digits, mnist1d, mnist, cluttered-mnist[:DIR], an IDX directory or an existing .npz file"
        )
    return _finish(name, x_tr, y_tr, x_te, y_te, labels, seed, val_fraction, limit_train, layout)


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


def _cluttered(source: str) -> tuple[np.ndarray, ...]:
    """Cluttered MNIST (see :mod:`distill.cluttered`) from ``source`` or the shared MNIST; uint8 (N, 1, 64, 64)."""
    from distill.cluttered import cluttered_mnist  # imports this module: loaded on first use

    found = Path(source) if source else shared_mnist_dir()
    if found is None:
        raise DataError(
            "cluttered-mnist is built from the real MNIST, not found beside the project; "
            "pass --data cluttered-mnist:DIR with the MNIST IDX files (or set ANYTIME_EDGE_MNIST)"
        )
    data = cluttered_mnist(found)
    return data.x_train[:, None], data.y_train, data.x_test[:, None], data.y_test


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
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


def _npz(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...] | None, str | None]:
    """The arrays of an .npz, inputs channels first; the last item is the client layout ("nhwc" or None)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in z.files]
            if missing:
                raise DataError(f"{path} lacks {missing}; an .npz needs x_train, y_train, x_test, y_test")
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path} as an .npz without pickles ({exc}); store numbers and strings, not objects") from exc
    labels = tuple(_strings(arrays["labels"]).tolist()) if "labels" in arrays else None
    layout = None
    if "layout" in arrays:
        found = _strings(arrays["layout"]).reshape(-1)
        if found.size != 1:
            raise DataError(f"{path}: layout must be one string ('signal', 'image', 'nchw' or 'nhwc')")
        layout = str(found[0]).lower()
    x_tr, x_te = arrays["x_train"], arrays["x_test"]
    for key in ("x_train", "x_test"):
        if arrays[key].dtype.kind not in "biuf":
            raise DataError(f"{path}: {key} has dtype {arrays[key].dtype}; use numbers")
    y_tr, y_te = arrays["y_train"], arrays["y_test"]
    for key, y in (("y_train", y_tr), ("y_test", y_te)):
        if y.dtype.kind not in "biufUS":
            raise DataError(f"{path}: {key} has dtype {y.dtype}; use class ids (integers) or class names (strings)")
    if y_tr.dtype.kind in "US" or y_te.dtype.kind in "US":
        y_tr, y_te, labels = _named_labels(path, y_tr, y_te, labels)
    x_tr, x_te, client_layout = _channels_first(path, x_tr, x_te, layout)
    return x_tr, y_tr, x_te, y_te, labels, client_layout


def _strings(arr: np.ndarray) -> np.ndarray:
    """A unicode or bytes array (or scalar) as a numpy array of str."""
    arr = np.asarray(arr)
    return np.char.decode(arr, "utf-8") if arr.dtype.kind == "S" else arr.astype(str)


def _named_labels(
    path: Path, y_tr: np.ndarray, y_te: np.ndarray, labels: tuple[str, ...] | None
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """String labels -> class ids: sorted unique names (or their positions in ``labels``), and the names."""
    if y_tr.dtype.kind not in "US" or y_te.dtype.kind not in "US":
        raise DataError(f"{path}: y_train is {y_tr.dtype}, y_test {y_te.dtype}; give both as class names or both as ids")
    names_tr, names_te = _strings(y_tr), _strings(y_te)
    found = np.unique(np.concatenate([names_tr.reshape(-1), names_te.reshape(-1)]))
    if labels is None:
        labels = tuple(str(n) for n in found)
    unknown = sorted(set(found.tolist()) - set(labels))
    if unknown:
        raise DataError(f"{path}: labels {unknown[:5]} appear in y but not in the 'labels' array; add them or drop 'labels'")
    if len(set(labels)) != len(labels):
        raise DataError(f"{path}: the 'labels' array repeats names; give each class once")
    index = {name: i for i, name in enumerate(labels)}
    lookup = np.vectorize(index.__getitem__, otypes=[np.int64])
    return (
        lookup(names_tr) if names_tr.size else names_tr.astype(np.int64),
        lookup(names_te) if names_te.size else names_te.astype(np.int64),
        labels,
    )


def is_channels_last(shape: tuple[int, ...]) -> bool:
    """True for the unambiguous channels-last batch: (N, H, W, C) with C in {1, 3, 4} and H, W > C."""
    return len(shape) == 4 and shape[3] in _CHANNELS_LAST and shape[1] > shape[3] and shape[2] > shape[3]


def _channels_first(
    path: Path, x_tr: np.ndarray, x_te: np.ndarray, layout: str | None
) -> tuple[np.ndarray, np.ndarray, str | None]:
    """Inputs in the models' layout, and the client layout the bundle must transpose from."""
    rank = x_tr.ndim
    allowed = {3: ("signal", "image"), 4: ("nchw", "nhwc")}.get(rank, ())
    if layout is not None and layout not in allowed:
        hint = f"use one of {list(allowed)}" if allowed else "drop 'layout' (it settles rank-3 and rank-4 inputs only)"
        raise DataError(f"{path}: layout '{layout}' does not fit inputs of rank {rank}; {hint}")
    if rank == 3:
        signal = layout == "signal" or (layout is None and x_tr.shape[1] <= 16 and x_tr.shape[2] >= 4 * x_tr.shape[1])
        return (x_tr, x_te, None) if signal else (x_tr[:, None], x_te[:, None], None)
    if rank == 4 and (layout == "nhwc" or (layout is None and is_channels_last(x_tr.shape))):
        return x_tr.transpose(0, 3, 1, 2), x_te.transpose(0, 3, 1, 2), "nhwc"
    return x_tr, x_te, None


def _standardiser(x: np.ndarray, layout: str | None) -> Preprocess:
    """Per-feature/per-channel (axis 1) standardisation of ``x`` (N, C, ...), as a bundle preprocess.

    Statistics in float64; a constant (or numerically constant) feature/channel gets scale 1, so it is
    only centred. Data with one feature/channel keeps one scalar scale and offset (a version-1 map).
    """
    channels = x.shape[1] if x.ndim > 1 else 1
    flat = x.reshape(len(x), channels, -1)
    means, stds = np.empty(channels), np.empty(channels)
    for c in range(channels):  # one channel at a time bounds the float64 temporaries
        values = flat[:, c]
        means[c] = values.mean(dtype=np.float64)
        stds[c] = values.std(dtype=np.float64)
    constant = ~(stds > 1e-6 * np.maximum(1.0, np.abs(means)))
    stds[constant] = 1.0
    scale, offset = 1.0 / stds, -means / stds
    if channels == 1 and layout is None:
        return Preprocess(scale=float(scale[0]), offset=float(offset[0]))
    return Preprocess(scale=tuple(scale.tolist()), offset=tuple(offset.tolist()), layout=layout)


def _stratified_split(y: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, validation) indices with each class's share of validation as in the whole split.

    The validation size is round(N * val_fraction) (at least 1), shared among classes by largest
    remainder; every class keeps at least one training sample. Own code rather than scikit-learn's
    StratifiedShuffleSplit, which refuses classes with one sample and splits smaller than the class count.
    """
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    n_val = max(1, int(round(len(y) * val_fraction)))
    quota = counts * n_val / len(y)
    take = np.floor(quota).astype(np.int64)
    for i in np.argsort(-(quota - take), kind="stable")[: n_val - int(take.sum())]:
        take[i] += 1
    take = np.minimum(take, counts - 1)  # keep one of each class for training
    val_parts, train_parts = [], []
    for cls, k in zip(classes, take):
        members = rng.permutation(np.flatnonzero(y == cls))
        val_parts.append(members[:k])
        train_parts.append(members[k:])
    val = rng.permutation(np.concatenate(val_parts))
    train = rng.permutation(np.concatenate(train_parts))
    return train, val


def _data_warnings(
    name: str, y_val: np.ndarray, y_fit: np.ndarray, y_test: np.ndarray, labels: tuple[str, ...]
) -> tuple[str, ...]:
    """One-line findings, each logged as a warning on ``distill.data``: a validation split too small to
    choose thresholds or stop training on, and test classes that training never shows."""
    found = []
    present = np.unique(y_fit)
    counts = np.bincount(y_val, minlength=len(labels))[present]
    rarest = int(present[np.argmin(counts)]) if len(present) else 0
    fewest = int(counts.min()) if len(counts) else 0
    if len(y_val) < MIN_VAL_SAMPLES or fewest < MIN_VAL_PER_CLASS:
        found.append(
            f"{name}: the validation split holds {len(y_val)} samples (class '{labels[rarest]}': {fewest}); below "
            f"{MIN_VAL_SAMPLES} samples or {MIN_VAL_PER_CLASS} per class, thresholds and early stopping are noisy: "
            "bring more training data or raise val_fraction"
        )
    unseen = sorted(set(np.unique(y_test).tolist()) - set(present.tolist()))
    if unseen:
        found.append(
            f"{name}: classes {[labels[c] for c in unseen][:10]} appear in the test split but not in training; "
            "no model can learn them: add training samples"
        )
    for line in found:
        logger.warning("%s", line)
    return tuple(found)


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
    layout: str | None = None,
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
            raise DataError(f"the {split} labels are not whole numbers; labels must be class ids 0..C-1 or class names")
    y_tr, y_te = y_tr.astype(np.int64), y_te.astype(np.int64)
    if not labels:
        found = np.unique(np.concatenate([y_tr, y_te]))
        if found[0] < 0 or len(found) != found[-1] + 1:  # e.g. classes 1..3 or {-1, 1}: ids are their sorted order
            y_tr, y_te = np.searchsorted(found, y_tr), np.searchsorted(found, y_te)
            labels = tuple(str(int(v)) for v in found)
            logger.info(
                "class labels %s are not 0..C-1; mapped to ids 0..%d in sorted order (names kept)",
                [int(v) for v in found],
                len(found) - 1,
            )
    num_classes = len(labels) if labels else int(max(y_tr.max(), y_te.max())) + 1
    for split, y in (("train", y_tr), ("test", y_te)):
        if y.min() < 0 or y.max() >= num_classes:
            raise DataError(f"the {split} labels must lie in 0..{num_classes - 1}; found {y.min()}..{y.max()}")
    if num_classes < 2:
        raise DataError("the data has a single class; a classifier needs at least two")
    labels = labels or tuple(str(c) for c in range(num_classes))

    train, val = _stratified_split(y_tr, val_fraction, seed)
    if limit_train is not None:
        train = train[:limit_train]
    x_fit = np.ascontiguousarray(x_tr[train], dtype=np.float32)
    pre = _standardiser(x_fit, layout)
    scale, offset = pre.arrays(x_fit.shape[1:])

    def model_ready(x: np.ndarray) -> np.ndarray:  # x is already channels first; the layout is for clients
        return np.ascontiguousarray(x.astype(np.float32, copy=False) * scale + offset, dtype=np.float32)

    findings = _data_warnings(name, y_tr[val], y_tr[train], y_te, labels)
    return Dataset(
        name=name,
        x_train=model_ready(x_fit),
        y_train=y_tr[train],
        x_val=model_ready(x_tr[val]),
        y_val=y_tr[val],
        x_test=model_ready(x_te),
        y_test=y_te,
        labels=labels,
        preprocess=pre,
        warnings=findings,
    )
