"""Data a user brings (cases in ../shared/cases/byo): per-feature scaling, channels-last images, string
labels, the stratified validation split and its small-split warning."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from distill.data import MIN_VAL_PER_CLASS, is_channels_last, load_dataset
from distill.errors import DataError

CASES = Path(__file__).resolve().parents[2] / "shared" / "cases" / "byo"
if not CASES.is_dir():  # the worktree layout (/work/wt/NAME) or the main checkout (/work/main)
    CASES = Path("/work/shared/cases/byo")
needs_cases = pytest.mark.skipif(not CASES.is_dir(), reason="the shared byo cases are not beside the project")


def _npz(
    path: Path, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, **extra: np.ndarray
) -> Path:
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, **extra)
    return path


def _fit_mlp(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, classes: int) -> float:
    """Test accuracy of a 13-32-C MLP trained full-batch with Adam for 200 steps (seeded)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(x_train.shape[1], 32), nn.ReLU(), nn.Linear(32, classes))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.from_numpy(np.ascontiguousarray(x_train, dtype=np.float32)), torch.from_numpy(y_train)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    with torch.no_grad():
        predicted = model(torch.from_numpy(np.ascontiguousarray(x_test, dtype=np.float32))).argmax(1).numpy()
    return float((predicted == y_test).mean())


@needs_cases
def test_wine_is_standardised_per_feature_and_an_mlp_learns_it() -> None:
    data = load_dataset(CASES / "wine.npz")
    assert data.input_shape == (13,) and data.num_classes == 3
    assert len(data.preprocess.scale) == 13 and len(data.preprocess.offset) == 13
    np.testing.assert_allclose(data.x_train.mean(axis=0), 0.0, atol=1e-4)  # every feature centred...
    np.testing.assert_allclose(data.x_train.std(axis=0), 1.0, atol=1e-3)  # ...and of unit spread
    per_feature = _fit_mlp(data.x_train, data.y_train, data.x_test, data.y_test, 3)
    # The old map: one global mean/std over all 13 features (proline ~1000, hue ~1) on the same raw data.
    raw_train, raw_test = data.raw(data.x_train), data.raw(data.x_test)
    mean, std = raw_train.mean(), raw_train.std()
    global_ = _fit_mlp((raw_train - mean) / std, data.y_train, (raw_test - mean) / std, data.y_test, 3)
    assert per_feature >= 0.90
    assert per_feature - global_ >= 0.10, (per_feature, global_)  # the difference is the scaling, not luck


@needs_cases
def test_raw_gives_back_the_clients_values() -> None:
    data = load_dataset(CASES / "wine.npz")
    with np.load(CASES / "wine.npz") as z:
        raw = z["x_test"]
    np.testing.assert_allclose(data.raw(data.x_test), raw, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(data.preprocess.apply(raw), data.x_test, atol=1e-5)


@needs_cases
def test_nhwc_images_load_channels_first_and_keep_the_client_layout() -> None:
    data = load_dataset(CASES / "nhwc_images.npz")
    assert data.input_shape == (3, 24, 24) and data.raw_input_shape == (24, 24, 3)
    assert data.preprocess.layout == "nhwc" and len(data.preprocess.scale) == 3
    assert data.task_spec().input.shape == (-1, 24, 24, 3) and data.task_spec().model_input_shape == (-1, 3, 24, 24)
    with np.load(CASES / "nhwc_images.npz") as z:
        raw = z["x_test"]
    np.testing.assert_allclose(data.raw(data.x_test), raw, atol=1e-3)  # uint8 values back, in HWC
    # The class is the colour channel holding the bright square: per channel, the class's channel is brightest.
    brightest = data.raw(data.x_test).reshape(len(raw), -1, 3).max(axis=1).argmax(axis=1)
    assert (brightest == data.y_test).mean() > 0.9


@pytest.mark.parametrize(
    "shape, channels_last",
    [
        ((5, 32, 32, 3), True),
        ((5, 24, 20, 1), True),
        ((5, 16, 16, 4), True),
        ((5, 3, 32, 32), False),  # NCHW
        ((5, 3, 4, 3), False),  # ambiguous: H is not larger than the last axis
        ((5, 4, 4, 4), False),  # ambiguous: all equal
        ((5, 32, 32, 5), False),  # 5 is not a channel count we guess
        ((5, 32, 3), False),  # rank 3 is settled elsewhere
    ],
)
def test_channels_last_detection(shape: tuple[int, ...], channels_last: bool) -> None:
    assert is_channels_last(shape) is channels_last


def test_ambiguous_rank4_stays_nchw_and_layout_key_decides(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = np.arange(24) % 2
    x = rng.normal(size=(24, 4, 5, 4)).astype(np.float32)
    plain = load_dataset(_npz(tmp_path / "plain.npz", x, y, x[:6], y[:6]))
    assert plain.input_shape == (4, 5, 4) and plain.preprocess.layout is None
    told = load_dataset(_npz(tmp_path / "told.npz", x, y, x[:6], y[:6], layout=np.array("nhwc")))
    assert told.input_shape == (4, 4, 5) and told.preprocess.layout == "nhwc"
    np.testing.assert_allclose(told.raw(told.x_test), x[:6], atol=1e-5)
    x_last = rng.normal(size=(24, 8, 8, 3)).astype(np.float32)
    kept = load_dataset(_npz(tmp_path / "kept.npz", x_last, y, x_last[:6], y[:6], layout=np.array(b"nchw")))
    assert kept.input_shape == (8, 8, 3) and kept.preprocess.layout is None


@pytest.mark.parametrize("rank_shape, layout", [((24, 6), "nhwc"), ((24, 3, 16), "nhwc"), ((24, 8, 8, 3), "signal")])
def test_a_layout_that_does_not_fit_the_rank_is_refused(tmp_path: Path, rank_shape: tuple[int, ...], layout: str) -> None:
    y = np.arange(24) % 2
    x = np.ones(rank_shape, np.float32)
    with pytest.raises(DataError, match="layout"):
        load_dataset(_npz(tmp_path / "d.npz", x, y, x[:4], y[:4], layout=np.array(layout)))


@needs_cases
def test_string_labels_become_sorted_ids_and_the_names_are_kept(caplog: pytest.LogCaptureFixture) -> None:
    with np.load(CASES / "string_labels.npz") as z:
        names_test = z["y_test"]
    with caplog.at_level(logging.WARNING, logger="distill.data"):
        data = load_dataset(CASES / "string_labels.npz")
    assert data.labels == ("class_0", "class_1", "class_2")
    assert [data.labels[i] for i in data.y_test] == names_test.tolist()  # ids mean the same names in both splits
    assert data.task_spec().labels == data.labels
    # This case's test split holds a class training never shows: said, not silently accepted.
    assert any("class_2" in r.getMessage() and "not in training" in r.getMessage() for r in caplog.records)


def test_bytes_labels_and_an_explicit_label_order(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
    y = np.array([b"ok", b"scratch", b"dent"] * 10)
    data = load_dataset(_npz(tmp_path / "b.npz", x, y, x[:6], y[:6]))
    assert data.labels == ("dent", "ok", "scratch") and data.y_test.tolist() == [1, 2, 0, 1, 2, 0]
    ordered = load_dataset(_npz(tmp_path / "o.npz", x, y, x[:6], y[:6], labels=np.array(["ok", "dent", "scratch"])))
    assert ordered.labels == ("ok", "dent", "scratch") and ordered.y_test.tolist() == [0, 2, 1, 0, 2, 1]
    with pytest.raises(DataError, match="not in the 'labels'"):
        load_dataset(_npz(tmp_path / "u.npz", x, y, x[:6], y[:6], labels=np.array(["ok", "dent"])))
    with pytest.raises(DataError, match="both as class names"):
        load_dataset(_npz(tmp_path / "m.npz", x, y, x[:6], np.arange(6) % 3))


def test_object_labels_are_refused_without_unpickling(tmp_path: Path) -> None:
    x = np.zeros((10, 3), np.float32)
    path = tmp_path / "obj.npz"
    np.savez(path, x_train=x, y_train=np.array(["a", 1] * 5, dtype=object), x_test=x, y_test=np.zeros(10))
    with pytest.raises(DataError, match="without pickles"):
        load_dataset(path)


def test_validation_split_is_stratified_and_seeded(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1, 2, 3], [600, 300, 90, 10])  # imbalanced: 60/30/9/1 %
    x = rng.normal(size=(len(y), 5)).astype(np.float32)
    path = _npz(tmp_path / "s.npz", x, y, x[:50], y[:50])
    data = load_dataset(path, seed=4, val_fraction=0.2)
    assert np.bincount(data.y_val, minlength=4).tolist() == [120, 60, 18, 2]  # each class's share exactly
    again, other = load_dataset(path, seed=4, val_fraction=0.2), load_dataset(path, seed=5, val_fraction=0.2)
    assert np.array_equal(again.x_val, data.x_val) and not np.array_equal(other.x_val, data.x_val)
    assert len(data.y_train) + len(data.y_val) == len(y)


def test_a_class_with_one_sample_stays_in_training(tmp_path: Path) -> None:
    y = np.array([0] * 40 + [1] * 40 + [2])
    x = np.random.default_rng(0).normal(size=(len(y), 3)).astype(np.float32)
    data = load_dataset(_npz(tmp_path / "one.npz", x, y, x[:5], y[:5]), val_fraction=0.25)
    assert 2 in data.y_train and 2 not in data.y_val and len(data.y_val) == 20


@pytest.mark.parametrize("n, warned", [(60, True), (2000, False)])
def test_a_small_validation_split_warns_once(tmp_path: Path, n: int, warned: bool, caplog: pytest.LogCaptureFixture) -> None:
    y = np.arange(n) % 3
    x = np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="distill.data"):
        data = load_dataset(_npz(tmp_path / "w.npz", x, y, x[:9], y[:9]))
    records = [r for r in caplog.records if r.name == "distill.data"]
    assert len(records) == int(warned)
    assert data.warnings == tuple(r.getMessage() for r in records)  # kept for reports, too
    if warned:
        text = records[0].getMessage()
        assert "\n" not in text and "validation split holds 6 samples" in text and "val_fraction" in text


def test_few_samples_of_one_class_warn_even_in_a_large_split(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    y = np.repeat([0, 1], [3000, 20])  # 302 validation samples, 2 of class 1
    x = np.random.default_rng(0).normal(size=(len(y), 2)).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="distill.data"):
        load_dataset(_npz(tmp_path / "r.npz", x, y, x[:9], y[:9]))
    (record,) = [r for r in caplog.records if r.name == "distill.data"]
    assert "class '1': 2" in record.getMessage() and f"{MIN_VAL_PER_CLASS} per class" in record.getMessage()


def test_constant_feature_is_only_centred(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = np.stack([rng.normal(5, 2, 200), np.full(200, 7.0), rng.normal(0, 1e3, 200)], axis=1).astype(np.float32)
    y = np.arange(200) % 2
    data = load_dataset(_npz(tmp_path / "c.npz", x, y, x[:10], y[:10]))
    assert data.preprocess.scale[1] == 1.0 and np.all(data.x_train[:, 1] == 0.0)
    assert np.all(np.isfinite(data.x_train)) and abs(data.x_train[:, 2].std() - 1.0) < 1e-3
    np.testing.assert_allclose(data.raw(data.x_test), x[:10], rtol=1e-5, atol=1e-3)


def test_per_channel_scaling_of_signals(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(80, 3, 32)) * np.array([1.0, 100.0, 0.01])[None, :, None]).astype(np.float32)
    y = np.arange(80) % 2
    data = load_dataset(_npz(tmp_path / "sig.npz", x, y, x[:8], y[:8]))
    assert data.input_shape == (3, 32) and len(data.preprocess.scale) == 3
    np.testing.assert_allclose(data.x_train.std(axis=(0, 2)), 1.0, atol=1e-3)


def test_single_channel_data_keeps_a_scalar_preprocess() -> None:
    data = load_dataset("digits")
    assert isinstance(data.preprocess.scale, float) and data.preprocess.is_scalar


@needs_cases
def test_wine_bundle_takes_the_clients_raw_features(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import edge_runtime
    from edge_runtime.cli import main
    from exporters import export_model

    data = load_dataset(CASES / "wine.npz")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(13, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        torch_labels = model(torch.from_numpy(data.x_test)).argmax(1).numpy()
    result = export_model(model, data.task_spec(), tmp_path / "wine", heldout=(data.x_test, data.y_test), name="wine")
    assert result.manifest.task.preprocess == data.preprocess and result.manifest.version == 2
    with np.load(CASES / "wine.npz") as z:
        raw_x, names = z["x_test"], z["labels"]
    runtime = edge_runtime.load(result.path, warmup=1)
    assert [p.label for p in runtime.predict(raw_x)] == torch_labels.tolist()  # raw features in, same answers
    # The CLI on the case file itself (x_test, y_test ids): the accuracy torch measured.
    assert main(["run", str(result.path), "--input", str(CASES / "wine.npz")]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    correct = int((torch_labels == data.y_test).sum())
    assert last == f"accuracy {correct / len(raw_x):.4f} ({correct}/{len(raw_x)} correct)" and correct / len(raw_x) >= 0.9
    assert runtime.manifest.task.labels == tuple(names.tolist())
    assert main(["inspect", str(result.path)]) == 0
    assert "x*[13 values" in capsys.readouterr().out


@needs_cases
def test_nhwc_case_raw_client_arrays_answer_as_the_nchw_model_input(tmp_path: Path) -> None:
    import edge_runtime
    from edge_runtime.bundle import load_bundle
    from edge_runtime.session import create_session
    from onnx_members import make_bundle

    data = load_dataset(CASES / "nhwc_images.npz")
    bundle = make_bundle(tmp_path / "nhwc", num_members=1, input_shape=data.input_shape, preprocess=data.preprocess)
    task = load_bundle(bundle).manifest.task
    assert task.input == data.task_spec().input and task.preprocess == data.preprocess  # clients: (-1, 24, 24, 3)
    with np.load(CASES / "nhwc_images.npz") as z:
        raw = z["x_test"][:32]  # uint8 (32, 24, 24, 3), straight from the file
    expected = create_session(load_bundle(bundle).member_bytes[0]).run(["probs"], {"x": data.x_test[:32]})[0]
    answers = edge_runtime.load(bundle, warmup=1).predict(raw)
    np.testing.assert_allclose(np.stack([p.probabilities for p in answers]), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("values", [(1, 2, 3), (-1, 1), (0, 2, 7)])
def test_integer_labels_that_are_not_0_to_c_minus_1_are_mapped_with_names_kept(values, tmp_path) -> None:
    """UCI's wine labels its cultivars 1..3; a class id 0 with no sample would be an empty class."""
    rng = np.random.default_rng(0)
    y = np.array(values)[rng.integers(0, len(values), 120)]
    y[: len(values)] = values  # every class present
    x = rng.normal(size=(120, 4)).astype(np.float32) + y[:, None]
    path = tmp_path / "ints.npz"
    np.savez(path, x_train=x[:90], y_train=y[:90], x_test=x[90:], y_test=y[90:])
    data = load_dataset(path)
    assert data.labels == tuple(str(v) for v in sorted(values))
    assert data.num_classes == len(values)
    assert set(np.unique(np.concatenate([data.y_train, data.y_val, data.y_test]))) <= set(range(len(values)))
    expected = np.searchsorted(np.array(sorted(values)), y[90:])
    np.testing.assert_array_equal(data.y_test, expected)
