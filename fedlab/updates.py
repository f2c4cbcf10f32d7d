"""What a lab signs when it sends an update, and how a roster travels in a job.

Both sides compute the same digest: SHA-256 over the update's bytes (dtype, length,
values) followed by the canonical JSON of its metrics, so a signature covers the
numbers the server will use and nothing can be swapped in transit.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedlab.errors import ConfigError


def digest_update(vec: np.ndarray, metrics: Mapping[str, Any]) -> bytes:
    h = hashlib.sha256()
    a = np.ascontiguousarray(vec)
    h.update(f"{a.dtype.str}:{a.size}:".encode())
    h.update(memoryview(a.reshape(-1)).cast("B"))  # hashed in place, not copied
    h.update(json.dumps({k: metrics[k] for k in sorted(metrics)}, sort_keys=True).encode())
    return h.digest()


def roster_from_hex(roster: Mapping[str, str]) -> dict[str, Ed25519PublicKey]:
    out: dict[str, Ed25519PublicKey] = {}
    for lab, hexkey in roster.items():
        try:
            out[lab] = Ed25519PublicKey.from_public_bytes(bytes.fromhex(hexkey))
        except ValueError as exc:
            raise ConfigError(f"roster entry of lab {lab!r} is not an Ed25519 public key") from exc
    return out


def metrics_payload(metrics: Mapping[str, Any]) -> bytes:
    """The canonical bytes of a lab's metrics, as signed beside a masked update."""
    return json.dumps({k: metrics[k] for k in sorted(metrics)}, sort_keys=True).encode()


def secagg_params(run_id: str, labs: tuple[str, ...], min_labs: int) -> Any:
    """The secure-aggregation parameters both sides derive from the run and the roster."""
    from fedlab.secure.protocol import SecAggParams

    return SecAggParams.default_for(run_id, tuple(sorted(labs)), max(2, min_labs))
