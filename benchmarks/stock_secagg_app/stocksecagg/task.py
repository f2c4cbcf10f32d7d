"""The job file and the synthetic client vectors shared by the ServerApp and ClientApp."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

NUM_EXAMPLES = 100  # every client's weight (below SecAgg+'s max_weight of 1000)
_VECTORS: dict[tuple[int, int], np.ndarray] = {}


def load_job(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def synthetic_vector(partition: int, params: int) -> np.ndarray:
    """The fixed random float32 vector client ``partition`` returns (once per process)."""
    key = (partition, params)
    vec = _VECTORS.get(key)
    if vec is None:
        rng = np.random.default_rng(1000 + partition)
        vec = (rng.standard_normal(params, dtype=np.float32) * np.float32(0.01)).astype(np.float32)
        _VECTORS[key] = vec
    return vec


def append_jsonl(path: str, row: dict[str, Any]) -> None:
    """One O_APPEND write per row: safe from several processes at once."""
    if not path:
        return
    data = (json.dumps(row) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
