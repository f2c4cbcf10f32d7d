"""Split one data set into virtual labs for simulation.

Every partitioner returns one sorted ``int64`` index array per lab; together they
are disjoint and cover every row exactly once. Randomised partitioners take a
seed (``numpy.random.default_rng(seed)``): the same seed gives the same labs.
These seeds are public experiment seeds, not secrets. Invalid arguments raise
``ConfigError``.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from fedlab.errors import ConfigError

logger = logging.getLogger(__name__)

DIRICHLET_MAX_TRIES = 1000


def _check_int(value: object, name: str, minimum: int) -> int:
    if not isinstance(value, int | np.integer) or isinstance(value, bool):
        raise ConfigError(f"{name}: expected an integer >= {minimum}, found {value!r}")
    if value < minimum:
        raise ConfigError(f"{name}: found {value}, expected an integer >= {minimum}")
    return int(value)


def _check_seed(seed: object) -> int:
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"seed: expected an integer >= 0, found {seed!r}")
    return int(seed)


def _check_labs_fit(n_labs: int, n_rows: int) -> None:
    if n_labs > n_rows:
        raise ConfigError(
            f"n_labs: {n_labs} labs but only {n_rows} rows; every lab needs at least one "
            "row, use fewer labs"
        )


def natural(values: np.ndarray) -> list[np.ndarray]:
    """One lab per distinct value of a column (e.g. hospital, movie), in sorted order."""
    v = np.asarray(values)
    if v.ndim != 1:
        raise ConfigError(f"natural: expected a 1-D column of values, found shape {v.shape}")
    if v.shape[0] == 0:
        raise ConfigError("natural: the column has no rows; nothing to partition")
    if v.dtype.kind == "f" and np.isnan(v).any():
        raise ConfigError(
            f"natural: the column has NaN at row {int(np.flatnonzero(np.isnan(v))[0])}; "
            "every row needs a value to say which lab it belongs to"
        )
    if v.dtype.kind == "O":
        v = v.astype(str)
    _, inverse = np.unique(v, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(np.bincount(inverse))[:-1]
    return [part.astype(np.int64) for part in np.split(order, bounds)]


def iid(n_rows: int, n_labs: int, seed: int) -> list[np.ndarray]:
    """Rows shuffled and dealt into ``n_labs`` labs whose sizes differ by at most 1."""
    n_rows = _check_int(n_rows, "n_rows", 1)
    n_labs = _check_int(n_labs, "n_labs", 1)
    seed = _check_seed(seed)
    _check_labs_fit(n_labs, n_rows)
    perm = np.random.default_rng(seed).permutation(n_rows)
    return [np.sort(part).astype(np.int64) for part in np.array_split(perm, n_labs)]


def dirichlet(
    labels: np.ndarray, n_labs: int, alpha: float, seed: int, min_size: int = 1
) -> list[np.ndarray]:
    """Label-skewed labs: each class is spread over the labs by Dirichlet(alpha) shares.

    Small ``alpha`` (0.1) gives labs dominated by few classes, large ``alpha`` (100)
    labs close to the global label mix. Draws are repeated until every lab has at
    least ``min_size`` rows, at most ``DIRICHLET_MAX_TRIES`` times.
    """
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ConfigError(f"dirichlet: expected a 1-D array of labels, found shape {y.shape}")
    n_rows = int(y.shape[0])
    n_labs = _check_int(n_labs, "n_labs", 1)
    min_size = _check_int(min_size, "min_size", 0)
    seed = _check_seed(seed)
    if (
        not isinstance(alpha, int | float | np.floating)
        or isinstance(alpha, bool)
        or not math.isfinite(alpha)
        or alpha <= 0
    ):
        raise ConfigError(
            f"alpha: found {alpha!r}; expected a finite number > 0 (small = strong label "
            "skew, large = close to iid)"
        )
    if n_rows == 0:
        raise ConfigError("dirichlet: no labels; nothing to partition")
    _check_labs_fit(n_labs, n_rows)
    if n_labs * min_size > n_rows:
        raise ConfigError(
            f"min_size: {n_labs} labs of at least {min_size} rows need {n_labs * min_size} "
            f"rows, there are {n_rows}; lower min_size or n_labs"
        )
    _, inverse = np.unique(y, return_inverse=True)
    by_class = [np.flatnonzero(inverse == c) for c in range(int(inverse.max()) + 1)]
    rng = np.random.default_rng(seed)
    smallest = 0
    for attempt in range(1, DIRICHLET_MAX_TRIES + 1):
        owner = np.empty(n_rows, dtype=np.int64)
        for rows in by_class:
            shares = rng.dirichlet(np.full(n_labs, float(alpha)))
            cuts = (np.cumsum(shares)[:-1] * len(rows)).astype(np.int64)
            owner[rng.permutation(rows)] = np.repeat(
                np.arange(n_labs), np.diff(np.concatenate(([0], cuts, [len(rows)])))
            )
        sizes = np.bincount(owner, minlength=n_labs)
        smallest = int(sizes.min())
        if smallest >= min_size:
            if attempt > 1:
                logger.debug("dirichlet: labs of >= %d rows after %d draws", min_size, attempt)
            return [np.flatnonzero(owner == lab).astype(np.int64) for lab in range(n_labs)]
    raise ConfigError(
        f"dirichlet: after {DIRICHLET_MAX_TRIES} draws some lab still had fewer than "
        f"{min_size} rows (smallest in the last draw: {smallest}) with alpha={alpha}, "
        f"{n_labs} labs, {n_rows} rows; raise alpha, lower min_size or use fewer labs"
    )
