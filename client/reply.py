"""What a lab sends back for one request, in a module that imports nothing heavy.

The process Flower starts for every message in deployment imports this (through
``client.app`` and ``client.worker``), so it must not pull in the lab's data loading,
configuration or cryptography: each import here is paid once per message per lab.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Reply:
    """What a lab sends back: small values, an optional vector, optional protocol bytes."""

    meta: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float | int] = field(default_factory=dict)
    vector: np.ndarray | None = None
    state: bytes | None = None  # secure-aggregation state to keep for the next message
