"""The one codec for model weights: Keras weight lists <-> flat vectors <-> Flower arrays.

A model's weights travel as one flat float32 vector (what secure aggregation masks)
together with the list of shapes that cuts it back into layers. Shapes are checked
on every decode, so a wrong-shaped update is an error, never a broadcast.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from numpy.lib import format as npformat

from fedlab.errors import ProtocolError

if TYPE_CHECKING:
    from flwr.app import Array, ArrayRecord

NPY_STYPE = "numpy.ndarray"  # flwr.app's SType.NUMPY: the .npy format

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
        h.update(memoryview(a.reshape(-1)).cast("B"))  # no copy of the bytes
    return h.hexdigest()


def to_record(vector: np.ndarray) -> ArrayRecord:
    """A flat vector as a Flower ArrayRecord (one array, key 'v')."""
    from flwr.app import ArrayRecord

    return ArrayRecord({"v": to_array(vector)})


def to_array(a: np.ndarray) -> Array:
    """A Flower ``Array`` holding ``a`` in the ``.npy`` format, exactly as
    ``Array(ndarray)`` stores it (``np.save``), in one copy of the values.

    Flower's own path writes the array into a ``BytesIO`` and copies it out again; at
    10M parameters and 50 labs that is 4 GB of extra copying per round."""
    from flwr.app import Array

    a = np.asarray(a, order="C")  # (ascontiguousarray would make a 0-d array 1-d)
    if a.dtype.hasobject:
        raise ProtocolError("arrays of Python objects are never sent")
    head = io.BytesIO()
    npformat.write_array_header_1_0(head, npformat.header_data_from_array_1_0(a))
    data = b"".join((head.getbuffer(), memoryview(a.reshape(-1)).cast("B")))
    return Array(dtype=str(a.dtype), shape=tuple(int(d) for d in a.shape), stype=NPY_STYPE,
                 data=data)


def array_of(arr: Array, what: str = "array") -> np.ndarray:
    """The values of a Flower ``Array`` in the ``.npy`` format, as a read-only view of its
    bytes (no copy).

    Flower's ``Array.numpy()`` runs ``np.load`` on a ``BytesIO``, which reads the values
    in 256 KiB pieces in a Python loop, twice copied; at 10M parameters that was the
    largest single cost of a round at the server. The header is parsed by numpy's own
    ``.npy`` reader (never with pickles), and the declared dtype and shape must match
    the ``Array``'s metadata and the byte count exactly. ``what`` names the array in errors.
    """
    if arr.stype != NPY_STYPE:
        raise ProtocolError(f"{what} is serialised as {arr.stype!r}, expected {NPY_STYPE!r}")
    data = arr.data
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(f"{what} carries no bytes")
    head = io.BytesIO(bytes(memoryview(data)[:_HEADER_ALLOWANCE]))
    try:
        version = npformat.read_magic(head)
        if version == (1, 0):
            shape, fortran, dtype = npformat.read_array_header_1_0(head)
        elif version == (2, 0):
            shape, fortran, dtype = npformat.read_array_header_2_0(head)
        else:
            raise ValueError(f".npy version {version} is not supported")
    except (ValueError, TypeError, SyntaxError, EOFError) as exc:
        raise ProtocolError(f"{what} is not a valid .npy array: {exc}") from exc
    offset = head.tell()
    if dtype.hasobject:
        raise ProtocolError(f"{what} holds Python objects; refused")
    if dtype.itemsize == 0:
        raise ProtocolError(f"{what} has values of zero bytes ({dtype}); refused")
    if str(dtype) != str(arr.dtype) or tuple(shape) != tuple(arr.shape):
        raise ProtocolError(f"{what}: its bytes say {dtype} {tuple(shape)}, its metadata "
                            f"{arr.dtype} {tuple(arr.shape)}")
    count = int(np.prod(shape, dtype=np.int64))
    if len(data) - offset != count * dtype.itemsize:
        raise ProtocolError(f"{what} has {len(data) - offset} bytes of values, {dtype} "
                            f"{tuple(shape)} needs {count * dtype.itemsize}")
    out = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return out.reshape(shape, order="F" if fortran else "C")


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
    arr = array_of(meta, "update")
    if arr.dtype != np.dtype(dtype):
        raise ProtocolError(f"update has dtype {arr.dtype}, expected {np.dtype(dtype)}")
    if arr.ndim != 1 or arr.size != length:
        raise ProtocolError(f"update has shape {arr.shape}, expected ({length},)")
    return arr
