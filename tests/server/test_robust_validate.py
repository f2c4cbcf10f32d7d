"""The server's checks on an update (server/validate.py) and its aggregators
(server/robust.py): known answers and properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlab.config import RobustnessConfig
from fedlab.errors import RoundAborted
from server import robust
from server.validate import check_vector


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 8), size=st.integers(1, 300), seed=st.integers(0, 2**32 - 1))
def test_mean_is_the_example_weighted_average(n: int, size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    updates = [rng.normal(size=size).astype(np.float32) for _ in range(n)]
    weights = [int(w) for w in rng.integers(1, 500, size=n)]
    got, used = robust.aggregate(updates, weights, RobustnessConfig())
    want = sum(w * u.astype(np.float64) for w, u in zip(weights, updates, strict=True))
    want = want / sum(weights)
    assert used == list(range(n))
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_robust_aggregators_resist_one_outlier() -> None:
    good = [np.full(5, v, dtype=np.float32) for v in (1.0, 1.1, 0.9, 1.05, 0.95)]
    bad = np.full(5, 1e3, dtype=np.float32)
    ups = [*good, bad]
    w = [10] * 6
    assert np.allclose(robust.aggregate(ups, w, RobustnessConfig(aggregator="median"))[0], 1.025)
    tm, _ = robust.aggregate(ups, w, RobustnessConfig(aggregator="trimmed_mean",
                                                      trim_fraction=0.2))
    assert np.all(tm < 1.2)
    kr, used = robust.aggregate(ups, w, RobustnessConfig(aggregator="krum", byzantine=1))
    assert 5 not in used and np.all(kr < 1.2)
    mean, _ = robust.aggregate(ups, w, RobustnessConfig())
    assert np.all(mean > 100)  # the plain mean is what the robust ones protect against


def test_no_update_aborts_the_round() -> None:
    with pytest.raises(RoundAborted):
        robust.aggregate([], [], RobustnessConfig())


def test_check_vector_accepts_a_good_update() -> None:
    assert check_vector(np.ones(10, np.float32), length=10, max_norm=10.0) is None


@pytest.mark.parametrize(("vec", "length", "bound", "words"), [
    (np.array([1.0, np.nan, 2.0], np.float32), 3, 1e4, "1 value(s) are NaN or infinite"),
    (np.array([np.inf, -np.inf, 0.0], np.float32), 3, 1e4, "2 value(s) are NaN or infinite"),
    (np.full(4, 3e38, np.float32), 4, 1e4, "overflows float32"),
    (np.full(4, 10.0, np.float32), 4, 19.9, "L2 norm 20 exceeds the bound 19.9"),
    (np.ones(4, np.float64), 4, 1e4, "dtype float64, expected float32"),
    (np.ones(5, np.float32), 4, 1e4, "shape (5,), expected (4,)"),
    (np.ones((2, 2), np.float32), 4, 1e4, "shape (2, 2), expected (4,)"),
])
def test_check_vector_names_what_is_wrong(vec: np.ndarray, length: int, bound: float,
                                          words: str) -> None:
    reason = check_vector(vec, length=length, max_norm=bound)
    assert reason is not None and words in reason


@settings(max_examples=60, deadline=None)
@given(size=st.integers(1, 2000), scale=st.floats(1e-3, 1e3), seed=st.integers(0, 2**32 - 1))
def test_check_vector_norm_agrees_with_float64(size: int, scale: float, seed: int) -> None:
    vec = (np.random.default_rng(seed).normal(size=size) * scale).astype(np.float32)
    norm = float(np.linalg.norm(vec.astype(np.float64)))
    assert check_vector(vec, length=size, max_norm=norm * 1.001) is None
    assert check_vector(vec, length=size, max_norm=norm * 0.999) is not None
