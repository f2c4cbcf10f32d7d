"""Per-feature statistics for standardising numeric columns.

The federation standardises numeric columns with means and standard deviations of
*all* labs' data. Those are computed federatedly: each lab contributes the count,
sum and sum of squares of its raw numeric values (:func:`local_moments`), the
moments are summed (through secure aggregation) and :meth:`FeatureStats.from_sums`
turns the totals into the statistics every lab then loads its file with
(``load_csv(..., stats=...)``). No data leaves a lab; only these sums do.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedlab.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureStats:
    """Mean and standard deviation of each numeric column (raw units), by column name.

    A standard deviation of 0 (a column constant across the federation) is kept
    as given; standardising then divides by 1 instead, so the feature becomes 0.
    """

    names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        # Accept any sequences (lists, numpy arrays); store plain tuples so that equal
        # statistics compare equal and the object stays immutable.
        try:
            names = tuple(str(n) for n in self.names)
            mean = tuple(float(v) for v in self.mean)
            std = tuple(float(v) for v in self.std)
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"feature stats: expected sequences of names and of numbers ({exc})"
            ) from None
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        if not (len(self.names) == len(self.mean) == len(self.std)):
            raise ConfigError(
                f"feature stats: {len(self.names)} names, {len(self.mean)} means and "
                f"{len(self.std)} standard deviations; give one of each per numeric column"
            )
        if len(set(self.names)) != len(self.names):
            raise ConfigError(f"feature stats: duplicate column names in {list(self.names)}")
        for name, mu, sd in zip(self.names, self.mean, self.std, strict=True):
            if not (math.isfinite(mu) and math.isfinite(sd)) or sd < 0:
                raise ConfigError(
                    f"feature stats, column {name!r}: found mean {mu!r} and std {sd!r}; "
                    "expected a finite mean and a finite std >= 0"
                )

    @classmethod
    def from_sums(
        cls,
        names: Sequence[str],
        count: Sequence[float] | np.ndarray,
        total: Sequence[float] | np.ndarray,
        total_sq: Sequence[float] | np.ndarray,
    ) -> FeatureStats:
        """Statistics from summed moments (per column: count, sum, sum of squares).

        Uses the population standard deviation. A column with count 0 is a
        ``ConfigError``: no lab has a value for it.
        """
        n = np.asarray(count, dtype=np.float64)
        s = np.asarray(total, dtype=np.float64)
        sq = np.asarray(total_sq, dtype=np.float64)
        if not (n.shape == s.shape == sq.shape == (len(names),)):
            raise ConfigError(
                f"feature stats: expected {len(names)} counts, sums and sums of squares, "
                f"found shapes {n.shape}, {s.shape}, {sq.shape}"
            )
        empty = [name for name, c in zip(names, n, strict=True) if c <= 0]
        if empty:
            raise ConfigError(
                f"feature stats: no values for column(s) {', '.join(map(repr, empty))}; "
                "at least one lab must have present values"
            )
        mean = s / n
        var = np.maximum(sq / n - mean * mean, 0.0)
        return cls(
            names=tuple(names),
            mean=tuple(float(v) for v in mean),
            std=tuple(float(v) for v in np.sqrt(var)),
        )

    @classmethod
    def from_values(cls, names: Sequence[str], values: np.ndarray) -> FeatureStats:
        """Statistics of a matrix of raw values, one column per name (e.g. ``Table.numeric``)."""
        count, total, total_sq = local_moments(values)
        return cls.from_sums(names, count, total, total_sq)

    def aligned(self, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Means and safe divisors (std, or 1 where std is 0) in the order of ``names``.

        Raises ``ConfigError`` when the statistics do not cover exactly these columns.
        """
        if set(names) != set(self.names):
            missing = [n for n in names if n not in self.names]
            extra = [n for n in self.names if n not in names]
            raise ConfigError(
                "feature stats do not match the schema's numeric columns: "
                f"missing {missing or 'none'}, unexpected {extra or 'none'}; compute the "
                "statistics with the federation's schema"
            )
        index = {name: i for i, name in enumerate(self.names)}
        mean = np.array([self.mean[index[n]] for n in names], dtype=np.float64)
        std = np.array([self.std[index[n]] for n in names], dtype=np.float64)
        return mean, np.where(std > 0, std, 1.0)


def local_moments(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-column count, sum and sum of squares of a lab's raw numeric values.

    These three vectors are what a lab contributes to the federated statistics.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2:
        raise ConfigError(f"local moments: expected a 2-D matrix, found {v.ndim} dimensions")
    count = np.full(v.shape[1], float(v.shape[0]))
    return count, v.sum(axis=0), (v * v).sum(axis=0)
