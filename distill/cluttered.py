"""Cluttered MNIST: each real MNIST digit at a random place on a larger canvas strewn with clutter.

The construction of DeepMind's ``mnist-cluttered`` generator (github.com/google-deepmind/mnist-cluttered,
``mnist_cluttered.lua``: 8x8 distractors by default, its README example 100x100 with 8 of them), behind the
cluttered MNIST of Mnih et al. 2014 ("Recurrent Models of Visual Attention") and Jaderberg et al. 2015
("Spatial Transformer Networks", Sec. 4.1), whose common 60x60 copy carries 6 distractors (the Lasagne
STN recipe's ``mnist_cluttered_60x60_6distortions.npz``). On a black ``canvas`` x ``canvas`` image,

1. ``pieces`` clutter patches, each a ``patch`` x ``patch`` crop at a uniform position of another random
   digit of the same split, are added at uniform positions; the sum is clipped to 255;
2. the digit (28x28) is added at a uniform position (anywhere it fits whole); the sum is clipped to 255.

The label is the digit's. Deviations from the original: the canvas is 64x64 (the issue's size, so four
stride-2 stages divide it evenly); every source image is used exactly once (60k train, 10k test) instead
of being drawn with replacement; clutter comes from a *different* image of the same split (train clutter
from train digits, test clutter from test digits, so no test digit leaks into training); pixels stay
uint8 (0..255) rather than floats in [0, 1].

Determinism: all random numbers of a split are drawn up front from ``numpy.random.default_rng([seed,
split])`` in a fixed order, and images are rendered in fixed chunks, so the same source files, config
and numpy give the same bytes on every run. Generation is vectorised (fancy indexing per clutter piece
over a chunk of images): all 70k images take 3.5-7 s on this project's 2 shared cores, gzip reading
included (``benchmarks/cluttered_teacher.py``).

Cache: ``<cache_dir>/cluttered-mnist-<fingerprint>.npz`` (uncompressed, read without pickles), the
fingerprint a hash of :data:`GENERATOR_VERSION`, the :class:`ClutterConfig` and the bytes of the four
source IDX files: a changed generator, seed, size or source writes a new file. Files are written to a
temporary name and renamed, so a crash never leaves a half-written cache; an unreadable cache file is
regenerated.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from distill.data import _read_idx
from distill.errors import DataError
from edge_runtime.errors import BundleError
from edge_runtime.files import atomic_write

__all__ = ["CACHE_ENV", "GENERATOR_VERSION", "ClutterConfig", "ClutteredMnist", "cluttered_mnist", "render"]

logger = logging.getLogger("distill.data")

GENERATOR_VERSION = 1  # bump whenever render() would produce other bytes: old cache files are then ignored
CACHE_ENV = "ANYTIME_EDGE_DATA_CACHE"  # overrides the default cache directory, runs/data
_CHUNK = 4096  # images rendered at once: bounds the uint16 work canvas to ~34 MB at 64x64
_SOURCES = ("train-images", "train-labels", "t10k-images", "t10k-labels")
_KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclass(frozen=True)
class ClutterConfig:
    """How each cluttered image is built (see the module docstring)."""

    canvas: int = 64  # side of the square output image, pixels
    pieces: int = 6  # clutter patches per image (6, as the common 60x60 set)
    patch: int = 8  # side of each clutter patch, pixels (8x8 as in the original generator)
    seed: int = 0  # seeds every random draw; the standard data set uses 0

    def __post_init__(self) -> None:
        if self.patch < 1 or self.pieces < 0 or self.canvas < self.patch:
            raise DataError(f"clutter needs patch >= 1, pieces >= 0 and canvas >= patch; got {self}")


@dataclass(frozen=True, eq=False)
class ClutteredMnist:
    """The generated splits: uint8 images (N, canvas, canvas) and int64 labels (N,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    path: Path | None  # the cache file read or written (None: not cached)
    from_cache: bool  # True when read from an existing cache file


def render(digits: np.ndarray, config: ClutterConfig, split: int = 0) -> np.ndarray:
    """Cluttered images of ``digits``, one per digit, in order.

    Args:
        digits: uint8 images (N, h, w), N >= 2 (clutter comes from the other digits), h, w <= canvas.
        config: canvas, clutter and seed.
        split: a second seed component, so train and test draw different streams from one seed.

    Returns:
        uint8 array (N, canvas, canvas).

    Raises:
        DataError: fewer than two digits, digits larger than the canvas, smaller than a patch, or not uint8.
    """
    if digits.ndim != 3 or digits.dtype != np.uint8:
        raise DataError(f"digits must be uint8 images (N, h, w), not {digits.dtype} {digits.shape}")
    n, h, w = digits.shape
    size, p, k = config.canvas, config.patch, config.pieces
    if n < 2:
        raise DataError("cluttered MNIST needs at least two digits per split (clutter is cut from other digits)")
    if h > size or w > size or h < p or w < p:
        raise DataError(f"digits of {h}x{w} do not fit a {size}x{size} canvas or are smaller than {p}x{p} patches")
    rng = np.random.default_rng([config.seed, split])
    source = rng.integers(0, n - 1, size=(n, k))
    source += source >= np.arange(n)[:, None]  # skip the image itself: clutter comes from another digit
    crop_y, crop_x = rng.integers(0, h - p + 1, size=(2, n, k))
    at_y, at_x = rng.integers(0, size - p + 1, size=(2, n, k))
    digit_y = rng.integers(0, size - h + 1, size=n)
    digit_x = rng.integers(0, size - w + 1, size=n)

    out = np.empty((n, size, size), dtype=np.uint8)
    span_p, span_h, span_w = np.arange(p), np.arange(h), np.arange(w)
    for start in range(0, n, _CHUNK):
        rows = slice(start, min(n, start + _CHUNK))
        m = rows.stop - rows.start
        image = np.arange(m)[:, None, None]
        canvas = np.zeros((m, size, size), dtype=np.uint16)  # sums of up to 1 + pieces uint8 values
        for j in range(k):  # within one piece, an image's target pixels are distinct: += is exact
            crop = digits[
                source[rows, j, None, None],
                (crop_y[rows, j, None] + span_p)[:, :, None],
                (crop_x[rows, j, None] + span_p)[:, None, :],
            ]
            canvas[image, (at_y[rows, j, None] + span_p)[:, :, None], (at_x[rows, j, None] + span_p)[:, None, :]] += crop
        np.minimum(canvas, 255, out=canvas)
        canvas[image, (digit_y[rows, None] + span_h)[:, :, None], (digit_x[rows, None] + span_w)[:, None, :]] += digits[rows]
        np.minimum(canvas, 255, out=canvas)
        out[rows] = canvas
    return out


def _source_files(root: Path) -> list[Path]:
    found = []
    for prefix in _SOURCES:
        matches = sorted(p for p in root.iterdir() if p.name.startswith(prefix))
        if not matches:
            raise DataError(f"{root} has no '{prefix}*' IDX file; cluttered MNIST needs the MNIST train/t10k images and labels")
        found.append(matches[0])
    return found


def _fingerprint(files: list[Path], config: ClutterConfig) -> str:
    h = hashlib.sha256(json.dumps({"generator": GENERATOR_VERSION, "config": asdict(config)}, sort_keys=True).encode())
    for path in files:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def _read_cache(path: Path, config: ClutterConfig) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when the file is absent or unreadable (then it is regenerated)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {key: z[key] for key in _KEYS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        logger.warning("%s is unreadable (%s); generating it again", path, exc)
        return None
    side = (config.canvas, config.canvas)
    if any(
        arrays[x].dtype != np.uint8 or arrays[x].shape[1:] != side or len(arrays[x]) != len(arrays[y])
        for x, y in (("x_train", "y_train"), ("x_test", "y_test"))
    ):
        logger.warning("%s does not hold %dx%d uint8 images with one label each; generating it again", path, *side)
        return None
    return arrays


def _write_cache(path: Path, arrays: dict[str, np.ndarray], meta: dict[str, object]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
            np.savez(f, **arrays, meta=np.array(json.dumps(meta, sort_keys=True)))

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, write)
    except (OSError, BundleError) as exc:
        raise DataError(
            f"cannot write the cluttered-mnist cache {path} ({exc}); set {CACHE_ENV} to a writable directory"
        ) from None


def cluttered_mnist(
    source: str | os.PathLike[str],
    config: ClutterConfig = ClutterConfig(),
    cache_dir: str | os.PathLike[str] | None = None,
    cache: bool = True,
) -> ClutteredMnist:
    """Cluttered MNIST built from the IDX files in ``source``, read from or written to the cache.

    Args:
        source: a directory of MNIST-format IDX files (``train-images*``, ``train-labels*``,
            ``t10k-images*``, ``t10k-labels*``; gzip or not).
        config: canvas, clutter and seed.
        cache_dir: where the generated set is kept; None: ``$ANYTIME_EDGE_DATA_CACHE`` or ``runs/data``
            (relative to the working directory).
        cache: False generates without reading or writing a cache file.

    Returns:
        The splits (uint8 images (N, canvas, canvas), int64 labels) and where they are cached.

    Raises:
        DataError: ``source`` is not a directory of readable MNIST IDX files (one line naming the fix).
    """
    root = Path(source)
    if not root.is_dir():
        raise DataError(f"cluttered-mnist: {root} is not a directory; pass cluttered-mnist:DIR with the MNIST IDX files")
    files = _source_files(root)
    path = None
    if cache:
        folder = Path(cache_dir if cache_dir is not None else os.environ.get(CACHE_ENV) or Path("runs") / "data")
        path = folder / f"cluttered-mnist-{_fingerprint(files, config)}.npz"
    if path is None or "WORLD_SIZE" not in os.environ:
        return _load_or_generate(root, files, config, path, write=path is not None)
    # Under torchrun rank 0 generates and writes the cache while the other ranks wait; they then read it.
    # distill.distributed imports torch: only under torchrun
    from distill.distributed import is_main_process, main_process_first

    with main_process_first():
        return _load_or_generate(root, files, config, path, write=is_main_process())


def _load_or_generate(root: Path, files: list[Path], config: ClutterConfig, path: Path | None, write: bool) -> ClutteredMnist:
    """Read ``path`` if it holds the set, else generate it (and, if ``write``, cache it there)."""
    cached = _read_cache(path, config) if path is not None else None
    if cached is not None:
        return ClutteredMnist(**cached, path=path, from_cache=True)

    images = {key: _read_idx(file) for key, file in zip(_KEYS, files)}
    for split in ("train", "test"):
        x, y = images[f"x_{split}"], images[f"y_{split}"]
        if x.ndim != 3 or x.dtype != np.uint8 or y.ndim != 1 or len(x) != len(y):
            raise DataError(
                f"{root}: the {split} IDX files must hold uint8 images (N, h, w) and N labels, "
                f"not {x.dtype} {x.shape} and {y.shape}"
            )
    arrays = {
        "x_train": render(images["x_train"], config, split=0),
        "y_train": images["y_train"].astype(np.int64),
        "x_test": render(images["x_test"], config, split=1),
        "y_test": images["y_test"].astype(np.int64),
    }
    if path is not None and write:
        meta = {"generator": GENERATOR_VERSION, "config": asdict(config), "sources": [f.name for f in files]}
        _write_cache(path, arrays, meta)
    return ClutteredMnist(**arrays, path=path, from_cache=False)
