"""Mask expansion: AES-256-CTR keystreams straight into uint32 arrays.

A mask is the AES-256-CTR keystream of a 32-byte key (counter block starting at
zero), read as little-endian uint32. Keys are single-use: each is derived with
HKDF-SHA256 for one purpose, run and round (:func:`derive_mask_key`), so the
all-zero initial counter never repeats under one key. The keystream is written
by ``encryptor.update_into`` directly into the array's buffer; no Python loop
runs over elements.

Adding masks into an accumulator works chunk by chunk (:data:`CHUNK_WORDS`
uint32 = 256 KiB, measured fastest on the development machine: the keystream
chunk and the accumulator chunk stay in L2), and :func:`apply_masks_into` walks
the accumulator once for any number of keys, which is faster than generating a
full-length stream per key (that would write and re-read every stream through
main memory).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedlab.errors import ProtocolError

logger = logging.getLogger(__name__)

KEY_LEN = 32
CHUNK_WORDS = 1 << 16
_ZERO_IV = bytes(16)
_ZEROS = bytes(4 * CHUNK_WORDS)
_BIG_ENDIAN = sys.byteorder == "big"  # keystream words are little-endian on every host

SELF_MASK_LABEL = "fedlab/secagg/self-mask/v1"
PAIR_MASK_LABEL = "fedlab/secagg/pair-mask/v1"


def _stream(key: bytes, counter: bytes = _ZERO_IV) -> CipherContext:
    if not isinstance(key, bytes) or len(key) != KEY_LEN:
        raise ProtocolError(f"mask key must be {KEY_LEN} bytes")
    if not isinstance(counter, bytes) or len(counter) != 16:
        raise ProtocolError("the initial counter block must be 16 bytes")
    return Cipher(algorithms.AES(key), modes.CTR(counter)).encryptor()


def _check_words(array: np.ndarray, name: str) -> None:
    if (
        not isinstance(array, np.ndarray)
        or array.dtype != np.uint32
        or array.ndim != 1
        or not array.flags.c_contiguous
        or not array.flags.writeable
    ):
        raise ProtocolError(f"{name} must be a writeable, contiguous, 1-D uint32 array")


def expand_mask(
    key: bytes, length: int, *, out: np.ndarray | None = None, counter: bytes = _ZERO_IV
) -> np.ndarray:
    """Return ``length`` uint32 words of AES-256-CTR keystream under ``key``.

    The keystream bytes are read as little-endian uint32 words. With ``out`` (a
    writeable contiguous uint32 array of exactly ``length``) the stream is written
    into it and ``out`` is returned. ``counter`` is the initial 128-bit counter
    block (all zero for masks; other values exist for known-answer tests).
    """
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise ProtocolError(f"mask length must be a non-negative integer, got {length!r}")
    if out is None:
        out = np.empty(length, dtype=np.uint32)
    else:
        _check_words(out, "mask output")
        if out.shape[0] != length:
            raise ProtocolError(f"mask output has {out.shape[0]} words, expected {length}")
    stream = _stream(key, counter)
    buffer = memoryview(out).cast("B")
    total = len(buffer)
    step = len(_ZEROS)
    for start in range(0, total, step):
        size = min(step, total - start)
        source = _ZEROS if size == step else memoryview(_ZEROS)[:size]
        stream.update_into(source, buffer[start : start + size])
    if _BIG_ENDIAN:
        out.byteswap(inplace=True)
    return out


def apply_masks_into(acc: np.ndarray, masks: Sequence[tuple[bytes, int]]) -> None:
    """Add (sign +1) or subtract (sign -1) the keystream of each key into ``acc`` mod 2^32.

    Walks ``acc`` once in chunks of :data:`CHUNK_WORDS` words; extra memory is one
    chunk (256 KiB) plus one cipher context per key.
    """
    _check_words(acc, "mask accumulator")
    for _, sign in masks:
        if sign not in (1, -1):
            raise ProtocolError(f"mask sign must be +1 or -1, got {sign!r}")
    if not masks:
        return
    streams = [(_stream(key), sign) for key, sign in masks]
    scratch = np.empty(CHUNK_WORDS, dtype=np.uint32)
    scratch_bytes = memoryview(scratch).cast("B")
    n = acc.shape[0]
    for start in range(0, n, CHUNK_WORDS):
        stop = min(n, start + CHUNK_WORDS)
        words = stop - start
        target = acc[start:stop]
        if words == CHUNK_WORDS:
            source, sink, chunk = _ZEROS, scratch_bytes, scratch
        else:
            source = memoryview(_ZEROS)[: 4 * words]
            sink = scratch_bytes[: 4 * words]
            chunk = scratch[:words]
        for stream, sign in streams:
            stream.update_into(source, sink)
            if _BIG_ENDIAN:
                chunk.byteswap(inplace=True)
            if sign > 0:
                np.add(target, chunk, out=target)
            else:
                np.subtract(target, chunk, out=target)


def add_mask_into(acc: np.ndarray, key: bytes, sign: int = 1) -> None:
    """Add (``sign=+1``) or subtract (``sign=-1``) the keystream of ``key`` into ``acc``."""
    apply_masks_into(acc, [(key, sign)])


def context_info(label: str, *parts: str | int | bytes) -> bytes:
    """Injective encoding of a label and context parts: each part is a type byte and
    its value, prefixed with a 4-byte big-endian length (ints: 8 bytes unsigned)."""
    out = [label.encode("ascii")]
    for part in parts:
        kind = type(part)
        if kind is str:
            raw = b"s" + part.encode("utf-8")  # type: ignore[union-attr]
        elif kind is int:
            if not 0 <= part < 1 << 64:  # type: ignore[operator]
                raise ProtocolError(f"key derivation context integer {part} out of range")
            raw = b"i" + part.to_bytes(8, "big")  # type: ignore[union-attr]
        elif kind is bytes:
            raw = b"b" + part  # type: ignore[operator]
        else:
            raise ProtocolError(f"unsupported key derivation context part {kind.__name__}")
        out.append(len(raw).to_bytes(4, "big"))
        out.append(raw)
    return b"".join(out)


def hkdf32(secret: bytes, label: str, *parts: str | int | bytes) -> bytes:
    """HKDF-SHA256 (no salt) of ``secret`` to 32 bytes, info = label + parts."""
    if not isinstance(secret, bytes) or len(secret) < 32:
        raise ProtocolError("key derivation needs a secret of at least 32 bytes")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=context_info(label, *parts)).derive(
        secret
    )


def self_mask_key(seed: bytes, run_id: str, round: int, lab: str) -> bytes:
    """The AES key of a lab's self mask in ``round``, from its one-round seed."""
    return hkdf32(seed, SELF_MASK_LABEL, run_id, round, lab)


def pair_mask_key(pair_secret: bytes, run_id: str, round: int, lab_a: str, lab_b: str) -> bytes:
    """The AES key of the pairwise mask of two labs in ``round`` (order-independent)."""
    low, high = sorted((lab_a, lab_b))
    return hkdf32(pair_secret, PAIR_MASK_LABEL, run_id, round, low, high)


def derive_mask_key(
    secret: bytes, *, label: str, run_id: str, round: int, context: Sequence[str] = ()
) -> bytes:
    """Generic per-round mask key: HKDF-SHA256(secret, label, run id, round, context)."""
    if label not in (SELF_MASK_LABEL, PAIR_MASK_LABEL):
        raise ProtocolError(f"unknown mask label {label!r}")
    return hkdf32(secret, label, run_id, round, *context)
