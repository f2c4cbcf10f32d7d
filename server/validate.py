"""The one place that decides whether an update or an aggregate is acceptable.

Checked before anything touches the global model: exact length and dtype (the
model's shapes are fixed by the length of its flat vector), every value finite,
and the L2 norm within a bound. A rejected update is dropped and logged with the
lab and the reason; a rejected aggregate keeps the previous global model.
"""

from __future__ import annotations

import math

import numpy as np

# Per-round update norms of the built-in models stay far below this; a lab sending
# a larger update is either broken or hostile.
DEFAULT_MAX_NORM = 1e4


def check_vector(vec: np.ndarray, *, length: int, dtype: np.dtype | type = np.float32,
                 max_norm: float = DEFAULT_MAX_NORM) -> str | None:
    """Return the reason ``vec`` is not acceptable, or None if it is."""
    if not isinstance(vec, np.ndarray):
        return f"not an array but {type(vec).__name__}"
    if vec.dtype != np.dtype(dtype):
        return f"dtype {vec.dtype}, expected {np.dtype(dtype)}"
    if vec.ndim != 1 or vec.size != length:
        return f"shape {vec.shape}, expected ({length},)"
    # One pass: the dot product is NaN or infinite exactly when a value is, or when the
    # norm overflows the dtype (and is then far above any bound). No float64 copy.
    with np.errstate(over="ignore", invalid="ignore"):
        sq = float(np.dot(vec, vec)) if vec.dtype.kind == "f" else float(
            np.dot(vec.astype(np.float64), vec.astype(np.float64)))
    if not math.isfinite(sq):
        bad = int(np.size(vec) - np.count_nonzero(np.isfinite(vec)))
        if bad:
            return f"{bad} value(s) are NaN or infinite"
        return f"L2 norm overflows {vec.dtype}: far above the bound {max_norm:.3g}"
    norm = math.sqrt(sq)
    if norm > max_norm:
        return f"L2 norm {norm:.3g} exceeds the bound {max_norm:.3g}"
    return None
