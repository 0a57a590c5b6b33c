"""The rolling window behind both latency estimates (runtime budget policy and server shedding)."""

from __future__ import annotations

import numpy as np
import pytest

from edge_runtime._window import TimeWindow, linear_quantile


def test_values_are_those_at_or_after_since_oldest_first() -> None:
    window = TimeWindow(maxlen=8)
    window.extend([(0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 4.0)])
    assert window.values(since=1.0).tolist() == [2.0, 3.0, 4.0]
    assert window.values(since=3.5).tolist() == []
    assert window.quantile(0.5, since=3.5) is None


def test_maxlen_bounds_memory_and_drops_the_oldest() -> None:
    window = TimeWindow(maxlen=3)
    for t in range(5):
        window.append((float(t), float(t)))
    assert window.values(since=-1.0).tolist() == [2.0, 3.0, 4.0]


def test_a_first_sample_after_a_gap_is_left_out_only_when_asked() -> None:
    window = TimeWindow(maxlen=8)
    window.extend([(0.0, 50.0), (10.0, 90.0), (10.5, 5.0)])  # a cold re-try after 10 s, then a warm run
    assert window.values(since=9.0).tolist() == [90.0, 5.0]
    assert window.values(since=9.0, gap_s=1.0).tolist() == [5.0]
    assert window.values(since=10.2, gap_s=1.0).tolist() == [5.0]  # the gap rule drops only a sample after a gap


@pytest.mark.parametrize("q", [0.5, 0.9, 0.99, 1.0])
def test_quantile_is_numpys_linear_quantile(q: float) -> None:
    rng = np.random.default_rng(0)
    samples = rng.exponential(3.0, size=50)
    window = TimeWindow(maxlen=64)
    window.extend((float(i), float(v)) for i, v in enumerate(samples))
    assert window.quantile(q, since=10.0) == pytest.approx(float(np.percentile(samples[10:], 100 * q)))
    assert window.quantile(q, since=10.0, min_samples=41) is None  # 40 samples since t=10


def test_a_wrapped_ring_reads_oldest_first_and_indexes_from_the_newest() -> None:
    window = TimeWindow(maxlen=4)
    window.extend((float(t), 10.0 * t) for t in range(7))  # keeps t = 3..6
    assert len(window) == 4
    assert window.values(since=-1.0).tolist() == [30.0, 40.0, 50.0, 60.0]
    assert window.values(since=4.5).tolist() == [50.0, 60.0]
    assert (window[-1], window[-2], window[0]) == ((6.0, 60.0), (5.0, 50.0), (3.0, 30.0))
    with pytest.raises(IndexError):
        window[4]


def test_an_empty_window_has_no_values_and_no_quantile() -> None:
    window = TimeWindow(maxlen=4)
    assert len(window) == 0 and not window
    assert window.values(since=0.0).tolist() == []
    assert window.quantile(0.99, since=0.0) is None


@pytest.mark.parametrize("n", [1, 2, 7, 100])
@pytest.mark.parametrize("q", [0.0, 0.37, 0.99, 0.995, 1.0])
def test_linear_quantile_matches_numpy(n: int, q: float) -> None:
    values = np.random.default_rng(n).lognormal(size=n)
    assert linear_quantile(values.copy(), q) == pytest.approx(float(np.quantile(values, q)), rel=1e-12)
