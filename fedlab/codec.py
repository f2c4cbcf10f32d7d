"""The one codec for model weights: Keras weight lists <-> flat vectors <-> Flower arrays.

A model's weights travel as one flat float32 vector (what secure aggregation masks)
together with the list of shapes that cuts it back into layers. Shapes are checked
on every decode, so a wrong-shaped update is an error, never a broadcast.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from fedlab.errors import ProtocolError

if TYPE_CHECKING:
    from flwr.app import ArrayRecord

Shapes = tuple[tuple[int, ...], ...]


def shapes_of(weights: Sequence[np.ndarray]) -> Shapes:
    return tuple(tuple(int(d) for d in w.shape) for w in weights)


def num_params(shapes: Shapes) -> int:
    return int(sum(int(np.prod(s, dtype=np.int64)) for s in shapes))


def flatten(weights: Sequence[np.ndarray]) -> np.ndarray:
    """Concatenate weights into one float32 vector."""
    if not weights:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate([np.asarray(w, dtype=np.float32).ravel() for w in weights])


def unflatten(vector: np.ndarray, shapes: Shapes) -> list[np.ndarray]:
    """Cut a flat vector back into arrays of the given shapes (checks the length)."""
    vector = np.asarray(vector)
    if vector.ndim != 1 or vector.size != num_params(shapes):
        raise ProtocolError(
            f"weight vector has {vector.size} values in shape {vector.shape}, the model needs "
            f"{num_params(shapes)}"
        )
    out: list[np.ndarray] = []
    pos = 0
    for s in shapes:
        n = int(np.prod(s, dtype=np.int64))
        out.append(vector[pos:pos + n].astype(np.float32, copy=False).reshape(s))
        pos += n
    return out


def weights_hash(weights: Sequence[np.ndarray]) -> str:
    """SHA-256 over the float32 bytes of every array, in order (the model's identity)."""
    h = hashlib.sha256()
    for w in weights:
        a = np.ascontiguousarray(w, dtype=np.float32)
        h.update(repr(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def to_record(vector: np.ndarray) -> ArrayRecord:
    """A flat vector as a Flower ArrayRecord (one array, key 'v')."""
    from flwr.app import Array, ArrayRecord

    return ArrayRecord({"v": Array(np.ascontiguousarray(vector))})


# Bytes a serialised array may carry beyond its values (the .npy header).
_HEADER_ALLOWANCE = 4096


def from_record(record: ArrayRecord, *, length: int, dtype: type | np.dtype) -> np.ndarray:
    """The flat vector of an ArrayRecord, with its length and dtype checked.

    Shape, dtype and byte size are checked from the array's metadata *before* it is
    decoded, so an oversized or mislabelled update is refused without being parsed."""
    if "v" not in record or len(record) != 1:
        raise ProtocolError(f"expected one array 'v', got keys {sorted(record.keys())}")
    meta = record["v"]
    want = np.dtype(dtype)
    if str(meta.dtype) != want.name:
        raise ProtocolError(f"update has dtype {meta.dtype}, expected {want}")
    if tuple(meta.shape) != (length,):
        raise ProtocolError(f"update has shape {tuple(meta.shape)}, expected ({length},)")
    if len(meta.data) > length * want.itemsize + _HEADER_ALLOWANCE:
        raise ProtocolError(f"update is {len(meta.data)} bytes, more than {length} {want} values "
                            "need; refused before decoding")
    arr = meta.numpy()
    if arr.dtype != np.dtype(dtype):
        raise ProtocolError(f"update has dtype {arr.dtype}, expected {np.dtype(dtype)}")
    if arr.ndim != 1 or arr.size != length:
        raise ProtocolError(f"update has shape {arr.shape}, expected ({length},)")
    return arr
