"""One lab's data, split into training, validation and test rows."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from fedlab.data.csv import LoadReport, RawRows
from fedlab.errors import ConfigError

logger = logging.getLogger(__name__)


def _no_lines() -> np.ndarray:
    return np.zeros(0, dtype=np.int64)


@dataclass(frozen=True, eq=False)
class LabData:
    """A lab's encoded rows: ``x_*`` ``float32 [n, features]``, ``y_*`` ``int64 [n]``.

    ``x_val``/``y_val`` are empty (0 rows) when no validation split was asked for.
    ``lines_*`` are the 1-based source lines of the rows (empty when unknown).
    ``raw_*`` keep the same rows as parsed, before imputation and scaling (None when
    the loader did not keep them): federated preprocessing (:mod:`fedlab.prep`) reads
    them and encodes ``x_*`` again with the federation's statistics.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    report: LoadReport | None = None
    lines_train: np.ndarray = field(default_factory=_no_lines)
    lines_val: np.ndarray = field(default_factory=_no_lines)
    lines_test: np.ndarray = field(default_factory=_no_lines)
    raw_train: RawRows | None = None
    raw_val: RawRows | None = None
    raw_test: RawRows | None = None

    @property
    def num_train(self) -> int:
        """Number of training rows (the weight of this lab's update)."""
        return int(self.y_train.shape[0])

    @property
    def num_val(self) -> int:
        """Number of validation rows."""
        return int(self.y_val.shape[0])

    @property
    def num_test(self) -> int:
        """Number of test rows."""
        return int(self.y_test.shape[0])


def split_validation(
    y: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, validation)`` carving ``val_fraction`` of the rows ``y`` out.

    The validation size is ``round(val_fraction * n)``, at least 1 when
    ``val_fraction > 0``, and at least one row stays in training. Stratified by label
    (largest-remainder allocation, every class keeping a training row) when every
    class has 2 rows or more and can keep one; otherwise a plain seeded random draw. Both index
    arrays are sorted.
    """
    if (
        not isinstance(val_fraction, int | float)
        or isinstance(val_fraction, bool)
        or not math.isfinite(val_fraction)
        or not 0.0 <= val_fraction < 1.0
    ):
        raise ConfigError(
            f"val_fraction: found {val_fraction!r}; expected a number in [0, 1) "
            "(0 = no validation rows)"
        )
    y = np.asarray(y)
    n = int(y.shape[0])
    everything = np.arange(n, dtype=np.int64)
    if val_fraction == 0.0:
        return everything, np.zeros(0, dtype=np.int64)
    n_val = max(1, math.floor(val_fraction * n + 0.5))
    if n_val >= n:
        raise ConfigError(
            f"val_fraction: {val_fraction} of {n} training rows leaves no training row; "
            "use a smaller fraction"
        )
    rng = np.random.default_rng(seed)
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    if len(classes) < 2 or counts.min() < 2 or n_val > n - len(classes):
        chosen = rng.permutation(n)[:n_val]
    else:
        quota = n_val * counts / n
        take = np.minimum(np.floor(quota).astype(np.int64), counts - 1)
        # Largest remainder first, among classes that can still give a row; the rows
        # that can go (n - number of classes) are at least n_val, so this ends.
        while take.sum() < n_val:
            gap = np.where(take < counts - 1, quota - take, -np.inf)
            take[int(np.argmax(gap))] += 1
        parts = [
            rng.permutation(np.flatnonzero(inverse == c))[: take[c]] for c in range(len(classes))
        ]
        chosen = np.concatenate(parts)
    is_val = np.zeros(n, dtype=bool)
    is_val[chosen] = True
    return everything[~is_val], everything[is_val]
