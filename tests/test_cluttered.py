"""Cluttered MNIST: the construction, its determinism, the cache, and the errors (synthetic IDX files only)."""

from __future__ import annotations

import gzip
import logging
import struct
from pathlib import Path

import numpy as np
import pytest

import distill.cluttered as cluttered
from distill.cluttered import CACHE_ENV, ClutterConfig, cluttered_mnist, render
from distill.data import load_dataset
from distill.errors import DataError


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def _strokes(n: int, seed: int) -> np.ndarray:
    """n synthetic 28x28 'digits': a random bright bar or two each, on black."""
    rng = np.random.default_rng(seed)
    digits = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
        for _ in range(2):
            y, x = rng.integers(2, 20, size=2)
            digits[i, y : y + rng.integers(3, 8), x : x + rng.integers(3, 8)] = rng.integers(100, 256)
    return digits


@pytest.fixture
def idx_dir(tmp_path: Path) -> Path:
    root = tmp_path / "mnist"
    root.mkdir()
    _write_idx(root / "train-images-idx3-ubyte.gz", _strokes(30, 0))
    _write_idx(root / "train-labels-idx1-ubyte.gz", np.arange(30) % 10)
    _write_idx(root / "t10k-images-idx3-ubyte.gz", _strokes(10, 1))
    _write_idx(root / "t10k-labels-idx1-ubyte.gz", np.arange(10))
    return root


def test_render_is_deterministic_uint8_on_the_canvas() -> None:
    digits = _strokes(12, 0)
    a = render(digits, ClutterConfig())
    assert a.shape == (12, 64, 64) and a.dtype == np.uint8
    assert np.array_equal(a, render(digits, ClutterConfig()))
    assert not np.array_equal(a, render(digits, ClutterConfig(seed=1)))
    assert not np.array_equal(a, render(digits, ClutterConfig(), split=1))
    small = render(digits, ClutterConfig(canvas=40, pieces=2, patch=6))
    assert small.shape == (12, 40, 40)


def test_without_clutter_each_image_is_its_digit_translated() -> None:
    digits = _strokes(8, 3)
    images = render(digits, ClutterConfig(pieces=0))
    for digit, image in zip(digits, images):
        # Exactly one placement holds the whole digit, and nothing lies outside it.
        windows = np.lib.stride_tricks.sliding_window_view(image, (28, 28))
        hits = np.argwhere((windows == digit).all(axis=(2, 3)))
        assert len(hits) >= 1
        y, x = hits[0]
        outside = image.copy()
        outside[y : y + 28, x : x + 28] = 0
        assert outside.sum() == 0


def test_clutter_comes_from_other_digits_and_saturates() -> None:
    blank, full = np.zeros((28, 28), np.uint8), np.full((28, 28), 255, np.uint8)
    images = render(np.stack([blank, full]), ClutterConfig(pieces=6, patch=8))
    # Image 0 (blank digit) shows only clutter cut from image 1: whole 8x8 patches of 255.
    lit = int((images[0] > 0).sum())
    assert 64 <= lit <= 6 * 64 and set(np.unique(images[0])) <= {0, 255}
    # Image 1's clutter is cut from the blank digit: just its 28x28 square, clipped at 255 (no wrap-around).
    assert int((images[1] == 255).sum()) == 28 * 28 and int((images[1] > 0).sum()) == 28 * 28


def test_generation_is_cached_and_keyed_by_config_and_generator(
    idx_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    first = cluttered_mnist(idx_dir, cache_dir=cache)
    assert not first.from_cache and first.path is not None and first.path.is_file()
    assert first.x_train.shape == (30, 64, 64) and first.x_test.shape == (10, 64, 64)
    assert first.y_train.dtype == np.int64 and list(first.y_test) == list(range(10))
    again = cluttered_mnist(idx_dir, cache_dir=cache)
    assert again.from_cache and again.path == first.path
    for key in ("x_train", "y_train", "x_test", "y_test"):
        assert np.array_equal(getattr(again, key), getattr(first, key))
    uncached = cluttered_mnist(idx_dir, cache=False)  # same bytes from scratch, nothing written
    assert uncached.path is None and np.array_equal(uncached.x_train, first.x_train)

    reseeded = cluttered_mnist(idx_dir, ClutterConfig(seed=1), cache_dir=cache)
    assert not reseeded.from_cache and reseeded.path != first.path
    assert not np.array_equal(reseeded.x_train, first.x_train)
    monkeypatch.setattr(cluttered, "GENERATOR_VERSION", cluttered.GENERATOR_VERSION + 1)
    assert not cluttered_mnist(idx_dir, cache_dir=cache).from_cache
    assert len(list(cache.glob("cluttered-mnist-*.npz"))) == 3
    assert not list(cache.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_changed_source_files_regenerate(idx_dir: Path, tmp_path: Path) -> None:
    first = cluttered_mnist(idx_dir, cache_dir=tmp_path)
    _write_idx(idx_dir / "t10k-images-idx3-ubyte.gz", _strokes(10, 2))
    second = cluttered_mnist(idx_dir, cache_dir=tmp_path)
    assert not second.from_cache and second.path != first.path


def test_damaged_cache_is_regenerated(idx_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = cluttered_mnist(idx_dir, cache_dir=tmp_path)
    assert first.path is not None
    first.path.write_bytes(first.path.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="distill.data"):
        second = cluttered_mnist(idx_dir, cache_dir=tmp_path)
    assert not second.from_cache and "unreadable" in caplog.text
    assert np.array_equal(second.x_train, first.x_train)
    assert cluttered_mnist(idx_dir, cache_dir=tmp_path).from_cache


def test_load_dataset_spec(idx_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    data = load_dataset(f"cluttered-mnist:{idx_dir}")
    assert data.name == "cluttered-mnist" and data.input_shape == (1, 64, 64) and data.num_classes == 10
    assert data.x_train.dtype == np.float32 and len(data.x_test) == 10
    assert len(list((tmp_path / "cache").glob("cluttered-mnist-*.npz"))) == 1
    raw = data.raw(data.x_test)  # clients send the uint8 pixel values
    assert raw.min() >= -1e-3 and raw.max() <= 255 + 1e-3
    monkeypatch.setattr("distill.data.shared_mnist_dir", lambda: idx_dir)
    assert np.array_equal(load_dataset("cluttered-mnist").x_test, data.x_test)


def test_missing_mnist_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("distill.data.shared_mnist_dir", lambda: None)
    with pytest.raises(DataError, match="cluttered-mnist:DIR") as info:
        load_dataset("cluttered-mnist")
    assert "\n" not in str(info.value)
    with pytest.raises(DataError, match="not a directory"):
        load_dataset(f"cluttered-mnist:{tmp_path / 'nowhere'}")
    with pytest.raises(DataError, match="train-images"):
        load_dataset(f"cluttered-mnist:{tmp_path}")


def test_unwritable_cache_names_the_fix(idx_dir: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(DataError, match=CACHE_ENV):
        cluttered_mnist(idx_dir, cache_dir=blocker / "cache")


def test_bad_configs_and_inputs_are_refused() -> None:
    with pytest.raises(DataError, match="patch"):
        ClutterConfig(patch=0)
    with pytest.raises(DataError, match="canvas"):
        ClutterConfig(canvas=6, patch=8)
    with pytest.raises(DataError, match="two digits"):
        render(_strokes(1, 0), ClutterConfig())
    with pytest.raises(DataError, match="do not fit"):
        render(_strokes(2, 0), ClutterConfig(canvas=20))
    with pytest.raises(DataError, match="uint8"):
        render(_strokes(2, 0).astype(np.float32), ClutterConfig())
