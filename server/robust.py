"""Robust aggregation for plain mode: the server sees each update and can resist outliers.

Coordinate-wise median, trimmed mean (Yin et al., 2018) and Krum (Blanchard et al.,
2017). They need individual updates, so they exist only where secure aggregation is
off; the config refuses them with secure aggregation on.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedlab.config import RobustnessConfig
from fedlab.errors import RoundAborted


def aggregate(updates: Sequence[np.ndarray], weights: Sequence[int], cfg: RobustnessConfig
              ) -> tuple[np.ndarray, list[int]]:
    """Combine updates; returns (aggregate, indices of the updates it used)."""
    n = len(updates)
    if n == 0:
        raise RoundAborted("no update to aggregate")
    w = np.asarray(weights, dtype=np.float64)
    if cfg.aggregator == "mean":
        # Streamed in float64: no (labs x parameters) matrix, which at 50 labs and 10M
        # parameters would be 4 GB (and another 4 GB for the weighted copy).
        acc = np.zeros(np.shape(updates[0]), dtype=np.float64)
        tmp = np.empty_like(acc)
        for u, wi in zip(updates, w, strict=True):
            np.multiply(u, wi, out=tmp)
            acc += tmp
        acc /= w.sum()
        return acc, list(range(n))
    stack = np.stack([np.asarray(u, dtype=np.float64) for u in updates])
    if cfg.aggregator == "median":
        return np.median(stack, axis=0), list(range(n))
    if cfg.aggregator == "trimmed_mean":
        k = int(np.floor(cfg.trim_fraction * n))
        if n - 2 * k < 1:
            raise RoundAborted(f"trimmed mean of {n} updates with trim_fraction "
                               f"{cfg.trim_fraction} leaves nothing")
        ordered = np.sort(stack, axis=0)
        return ordered[k:n - k].mean(axis=0), list(range(n))
    if cfg.aggregator == "krum":
        f = cfg.byzantine
        if n < 2 * f + 3:
            raise RoundAborted(f"Krum with byzantine = {f} needs at least {2 * f + 3} updates, "
                               f"got {n}")
        sq = (stack ** 2).sum(axis=1)
        dist = sq[:, None] + sq[None, :] - 2 * stack @ stack.T
        np.fill_diagonal(dist, np.inf)
        closest = np.sort(dist, axis=1)[:, :n - f - 2]
        best = int(np.argmin(closest.sum(axis=1)))
        return stack[best], [best]
    raise RoundAborted(f"unknown aggregator {cfg.aggregator!r}")
