"""Partitioners for simulation: disjoint cover, sizes, seeds, label skew."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlab.data.partition import dirichlet, iid, natural
from fedlab.errors import ConfigError


def assert_disjoint_cover(parts: list[np.ndarray], n_rows: int) -> None:
    assert all(p.dtype == np.int64 for p in parts)
    everything = np.concatenate(parts)
    assert len(everything) == n_rows
    assert sorted(everything.tolist()) == list(range(n_rows))


def test_natural_one_lab_per_value_in_sorted_order():
    values = np.array(["va", "cleveland", "va", "hungary", "cleveland", "va"])
    parts = natural(values)
    assert [p.tolist() for p in parts] == [[1, 4], [3], [0, 2, 5]]
    assert_disjoint_cover(parts, 6)
    assert [p.tolist() for p in natural(np.array([3, 1, 3, 2]))] == [[1], [3], [0, 2]]


def test_natural_bad_input():
    with pytest.raises(ConfigError, match="no rows"):
        natural(np.array([]))
    with pytest.raises(ConfigError, match="1-D"):
        natural(np.zeros((2, 2)))
    with pytest.raises(ConfigError, match="NaN at row 1"):
        natural(np.array([1.0, np.nan]))


@pytest.mark.parametrize(("n_rows", "n_labs"), [(10, 3), (7, 7), (1000, 9), (5, 1)])
def test_iid_sizes_and_cover(n_rows, n_labs):
    parts = iid(n_rows, n_labs, seed=0)
    assert len(parts) == n_labs
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert_disjoint_cover(parts, n_rows)


def test_iid_reproducible():
    a, b, c = iid(100, 4, seed=1), iid(100, 4, seed=1), iid(100, 4, seed=2)
    assert [p.tolist() for p in a] == [p.tolist() for p in b]
    assert [p.tolist() for p in a] != [p.tolist() for p in c]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((10, 0, 0), "n_labs"),
        ((3, 4, 0), "only 3 rows"),
        ((0, 1, 0), "n_rows"),
        ((10, 2.0, 0), "n_labs"),
        ((10, True, 0), "n_labs"),
        ((10, 2, -1), "seed"),
    ],
)
def test_iid_bad_arguments(args, match):
    with pytest.raises(ConfigError, match=match):
        iid(*args)


LABELS = np.repeat(np.arange(4), [300, 200, 100, 50])


def mean_tv_distance(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    classes = np.unique(labels)
    overall = np.array([(labels == c).mean() for c in classes])
    distances = []
    for part in parts:
        lab = np.array([(labels[part] == c).mean() for c in classes])
        distances.append(0.5 * np.abs(lab - overall).sum())
    return float(np.mean(distances))


def test_dirichlet_cover_and_min_size():
    for seed in range(5):
        parts = dirichlet(LABELS, 6, alpha=0.3, seed=seed, min_size=10)
        assert len(parts) == 6
        assert min(len(p) for p in parts) >= 10
        assert_disjoint_cover(parts, len(LABELS))


def test_dirichlet_reproducible():
    a = dirichlet(LABELS, 5, 0.5, seed=11)
    b = dirichlet(LABELS, 5, 0.5, seed=11)
    c = dirichlet(LABELS, 5, 0.5, seed=12)
    assert [p.tolist() for p in a] == [p.tolist() for p in b]
    assert [p.tolist() for p in a] != [p.tolist() for p in c]


def test_dirichlet_small_alpha_gives_more_label_skew():
    skewed = np.mean([mean_tv_distance(LABELS, dirichlet(LABELS, 5, 0.1, s)) for s in range(10)])
    mild = np.mean([mean_tv_distance(LABELS, dirichlet(LABELS, 5, 100.0, s)) for s in range(10)])
    assert skewed > 0.4
    assert mild < 0.1
    assert skewed > 4 * mild


def test_dirichlet_impossible_min_size_is_a_clear_error():
    labels = np.array([0] * 10 + [1] * 10)
    with pytest.raises(ConfigError, match="need 30 rows, there are 20"):
        dirichlet(labels, 3, 1.0, 0, min_size=10)
    # possible on paper, but a tiny alpha almost never gives 4 labs of 5 rows
    with pytest.raises(ConfigError, match="after 1000 draws"):
        dirichlet(labels, 4, 0.001, 0, min_size=5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_labs": 0}, "n_labs"),
        ({"alpha": 0}, "alpha"),
        ({"alpha": -1.0}, "alpha"),
        ({"alpha": float("inf")}, "alpha"),
        ({"alpha": "1"}, "alpha"),
        ({"n_labs": 1000}, "only 650 rows"),
        ({"min_size": -1}, "min_size"),
    ],
)
def test_dirichlet_bad_arguments(kwargs, match):
    args = {"labels": LABELS, "n_labs": 3, "alpha": 1.0, "seed": 0} | kwargs
    with pytest.raises(ConfigError, match=match):
        dirichlet(**args)


@settings(max_examples=60, deadline=None)
@given(
    labels=st.lists(st.integers(0, 4), min_size=1, max_size=60),
    n_labs=st.integers(1, 8),
    alpha=st.floats(0.05, 50.0),
    seed=st.integers(0, 2**32),
)
def test_dirichlet_always_covers_or_refuses(labels, n_labs, alpha, seed):
    y = np.array(labels)
    try:
        parts = dirichlet(y, n_labs, alpha, seed, min_size=1)
    except ConfigError:
        return
    assert len(parts) == n_labs and min(len(p) for p in parts) >= 1
    assert_disjoint_cover(parts, len(y))
