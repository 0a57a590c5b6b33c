"""Data loading: every accepted source, the rank-to-family mapping, and the validation messages."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from distill.data import load_dataset
from distill.errors import DataError
from distill.models import family_for


def _write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def _npz(
    path: Path, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, **extra: np.ndarray
) -> Path:
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, **extra)
    return path


def test_digits_is_images_with_deterministic_split() -> None:
    a = load_dataset("digits", seed=3)
    b = load_dataset("digits", seed=3)
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10
    assert np.array_equal(a.y_val, b.y_val) and np.array_equal(a.x_train, b.x_train)
    assert len(a.x_val) == pytest.approx(0.1 * (len(a.x_train) + len(a.x_val)), abs=1)
    assert abs(float(a.x_train.mean())) < 1e-3  # standardised with the training split's statistics
    raw = a.raw(a.x_test)
    assert np.allclose(raw * a.preprocess.scale + a.preprocess.offset, a.x_test, atol=1e-5)
    assert raw.min() >= -1e-3 and raw.max() <= 16 + 1e-3  # digits' raw pixel range


def test_other_seed_gives_another_validation_split() -> None:
    assert not np.array_equal(load_dataset("digits", seed=0).y_val, load_dataset("digits", seed=1).y_val)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_directory(tmp_path: Path, compress: bool) -> None:
    rng = np.random.default_rng(0)
    _write_idx(tmp_path / "train-images-idx3-ubyte", rng.integers(0, 255, (50, 6, 6)), compress)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", rng.integers(0, 3, 50), compress)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", rng.integers(0, 255, (10, 6, 6)), compress)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(10) % 3, compress)
    data = load_dataset(tmp_path)
    assert data.input_shape == (1, 6, 6) and data.num_classes == 3 and len(data.x_test) == 10


def test_damaged_idx_file_is_named(tmp_path: Path) -> None:
    _write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((5, 4, 4)), False)
    (tmp_path / "train-images-idx3-ubyte").write_bytes((tmp_path / "train-images-idx3-ubyte").read_bytes()[:-3])
    with pytest.raises(DataError, match="damaged"):
        load_dataset(tmp_path)


@pytest.mark.parametrize(
    "train_shape, expected_shape",
    [((40, 12), (12,)), ((40, 2, 32), (2, 32)), ((40, 10, 10), (1, 10, 10)), ((40, 3, 8, 8), (3, 8, 8))],
)
def test_npz_of_any_rank(tmp_path: Path, train_shape: tuple[int, ...], expected_shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(1)
    y = np.arange(40) % 4
    path = _npz(tmp_path / "d.npz", rng.normal(size=train_shape), y, rng.normal(size=(8, *train_shape[1:])), y[:8])
    data = load_dataset(path)
    assert data.input_shape == expected_shape
    assert family_for(data.input_shape) == {1: "mlp", 2: "cnn1d", 3: "cnn2d"}[len(expected_shape)]


def test_npz_layout_key_overrides_the_guess(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    y = np.arange(20) % 2
    path = _npz(
        tmp_path / "d.npz", rng.normal(size=(20, 10, 10)), y, rng.normal(size=(4, 10, 10)), y[:4], layout=np.array("signal")
    )
    assert load_dataset(path).input_shape == (10, 10)


def test_npz_labels_name_the_classes(tmp_path: Path) -> None:
    y = np.arange(20) % 2
    path = _npz(tmp_path / "d.npz", np.ones((20, 3)), y, np.ones((4, 3)), y[:4], labels=np.array(["ok", "defect"]))
    assert load_dataset(path).labels == ("ok", "defect")


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(y_train=d["y_train"][:-1]), "must match one to one"),
        (lambda d: d.update(y_test=d["y_test"] + 5), "labels must lie in"),
        (lambda d: d["x_train"].__setitem__((0, 0), np.nan), "NaN or inf"),
        (lambda d: d.update(y_train=d["y_train"] + 0.5), "whole numbers"),
        (lambda d: d.update(x_test=np.ones((4, 5))), "differ in shape"),
        (lambda d: d.pop("y_test"), "lacks"),
    ],
)
def test_bad_npz_gets_a_clear_error(tmp_path: Path, mutate, message: str) -> None:
    y = np.arange(20) % 2
    arrays = {
        "x_train": np.ones((20, 3)),
        "y_train": y.astype(np.float64),
        "x_test": np.ones((4, 3)),
        "y_test": y[:4],
        "labels": np.array(["a", "b"]),
    }
    mutate(arrays)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message):
        load_dataset(tmp_path / "bad.npz")


def test_unknown_spec() -> None:
    with pytest.raises(DataError, match="is not digits"):
        load_dataset("no-such-thing")
