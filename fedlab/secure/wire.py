"""A small, strict, canonical encoding for secure-aggregation messages.

Every protocol message is a value built from five types, encoded as:

=========  ==========================================  ==============================
type       encoding                                    canonical form
=========  ==========================================  ==============================
``int``    ``i<decimal>e``                             no ``+``, no leading zeros, no
                                                       ``-0``; at most 20 digits
``bytes``  ``b<len>:<raw bytes>``                      ``len`` without leading zeros
``str``    ``s<len>:<UTF-8 bytes>``                    valid UTF-8
``list``   ``l<item>...e``                             -
``dict``   ``d<str key><value>...e``                   keys strictly increasing by
                                                       their UTF-8 bytes (so unique)
=========  ==========================================  ==============================

There is exactly one encoding of each value, so a signature over the bytes is a
signature over the value. :func:`decode` accepts only canonical input, consumes all
of it and raises :class:`~fedlab.errors.ProtocolError` (never another exception
type) on anything else. The :class:`Fields` helper reads a decoded dict against an
exact set of keys and types, again raising only ``ProtocolError``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from fedlab.errors import ProtocolError

Value = int | bytes | str | list[Any] | dict[str, Any]

MAX_DEPTH = 16
_MAX_INT_DIGITS = 20
_NUMBER = re.compile(rb"[0-9]{1,%d}" % (_MAX_INT_DIGITS + 1))


def encode(value: Value) -> bytes:
    """Encode ``value`` canonically (see the module docstring)."""
    out: list[bytes] = []
    _encode_into(value, out, 0)
    return b"".join(out)


def _encode_into(value: Value, out: list[bytes], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ProtocolError(f"cannot encode a message nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, bool):  # bool is an int subclass; refuse it explicitly
        raise ProtocolError("cannot encode a bool; use 0 or 1")
    if isinstance(value, int):
        text = str(value)
        if len(text.lstrip("-")) > _MAX_INT_DIGITS:
            raise ProtocolError(f"integer {value} is too large for a message")
        out.append(b"i" + text.encode("ascii") + b"e")
    elif isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        out.append(b"b" + str(len(raw)).encode("ascii") + b":" + raw)
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        out.append(b"s" + str(len(raw)).encode("ascii") + b":" + raw)
    elif isinstance(value, list | tuple):
        out.append(b"l")
        for item in value:
            _encode_into(item, out, depth + 1)
        out.append(b"e")
    elif isinstance(value, dict):
        keys = list(value.keys())
        if not all(isinstance(k, str) for k in keys):
            raise ProtocolError("message dict keys must be strings")
        encoded_keys = sorted((k.encode("utf-8"), k) for k in keys)
        out.append(b"d")
        for raw_key, key in encoded_keys:
            out.append(b"s" + str(len(raw_key)).encode("ascii") + b":" + raw_key)
            _encode_into(value[key], out, depth + 1)
        out.append(b"e")
    else:
        raise ProtocolError(f"cannot encode a value of type {type(value).__name__}")


def decode(data: bytes, *, what: str = "message") -> Value:
    """Decode canonical bytes; raise ProtocolError naming ``what`` on any defect."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(f"{what}: expected bytes, got {type(data).__name__}")
    raw = bytes(data)
    try:
        value, pos = _decode_at(raw, 0, 0)
    except ProtocolError as exc:
        raise ProtocolError(f"{what} is malformed: {exc}") from None
    except (RecursionError, ValueError, IndexError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"{what} is malformed: {exc}") from None
    if pos != len(raw):
        raise ProtocolError(f"{what} is malformed: {len(raw) - pos} trailing bytes")
    return value


def _read_length(raw: bytes, pos: int, end_marker: int) -> tuple[int, int]:
    """Read a canonical non-negative decimal terminated by ``end_marker``."""
    match = _NUMBER.match(raw, pos)
    if match is None:
        raise ProtocolError(f"bad number at offset {pos}")
    digits = match.group()
    if len(digits) > _MAX_INT_DIGITS:
        raise ProtocolError(f"number at offset {pos} has too many digits")
    end = match.end()
    if end >= len(raw) or raw[end] != end_marker:
        raise ProtocolError(f"bad number at offset {pos}")
    if len(digits) > 1 and digits[0] == 0x30:
        raise ProtocolError(f"number at offset {pos} has a leading zero")
    return int(digits), end + 1


_I, _B, _S, _L, _D, _E, _COLON, _MINUS = b"ibslde:-"


def _decode_at(raw: bytes, pos: int, depth: int) -> tuple[Value, int]:
    if depth > MAX_DEPTH:
        raise ProtocolError(f"nested deeper than {MAX_DEPTH} levels")
    size = len(raw)
    if pos >= size:
        raise ProtocolError("truncated")
    tag = raw[pos]
    if tag == _B or tag == _S:
        length, pos = _read_length(raw, pos + 1, _COLON)
        end = pos + length
        if end > size:
            raise ProtocolError(f"string of length {length} runs past the end")
        if tag == _B:
            return raw[pos:end], end
        return raw[pos:end].decode("utf-8", errors="strict"), end
    if tag == _I:
        pos += 1
        negative = pos < size and raw[pos] == _MINUS
        if negative:
            pos += 1
        magnitude, pos = _read_length(raw, pos, _E)
        if negative and magnitude == 0:
            raise ProtocolError("negative zero")
        return (-magnitude if negative else magnitude), pos
    if tag == _L:
        pos += 1
        items: list[Any] = []
        while True:
            if pos >= size:
                raise ProtocolError("unterminated list")
            if raw[pos] == _E:
                return items, pos + 1
            item, pos = _decode_at(raw, pos, depth + 1)
            items.append(item)
    if tag == _D:
        pos += 1
        result: dict[str, Any] = {}
        previous = b""
        first = True
        while True:
            if pos >= size:
                raise ProtocolError("unterminated dict")
            if raw[pos] == _E:
                return result, pos + 1
            if raw[pos] != _S:
                raise ProtocolError(f"dict key at offset {pos} is not a string")
            key_start = pos
            length, pos = _read_length(raw, pos + 1, _COLON)
            end = pos + length
            if end > size:
                raise ProtocolError(f"dict key of length {length} runs past the end")
            key_raw = raw[pos:end]
            if not first and key_raw <= previous:
                raise ProtocolError(f"dict keys not strictly increasing at offset {key_start}")
            key = key_raw.decode("utf-8", errors="strict")
            previous, first = key_raw, False
            value, pos = _decode_at(raw, end, depth + 1)
            result[key] = value
    raise ProtocolError(f"unknown type tag {tag!r} at offset {pos}")


class Fields:
    """Typed, exact access to a decoded dict; every defect is a ProtocolError.

    ``what`` names the message in errors (e.g. ``"train reply from lab-a (round 3)"``).
    """

    def __init__(self, value: Any, what: str, keys: Iterable[str]) -> None:
        if not isinstance(value, dict):
            raise ProtocolError(f"{what}: expected a dict, got {type(value).__name__}")
        expected = set(keys)
        present = set(value)
        if present != expected:
            missing = sorted(expected - present)
            extra = sorted(present - expected)
            raise ProtocolError(f"{what}: missing fields {missing}, unexpected fields {extra}")
        self._value: dict[str, Any] = value
        self.what = what

    def int(self, key: str, *, minimum: int = 0, maximum: int = (1 << 63) - 1) -> int:
        value = self._value[key]
        if not isinstance(value, int) or isinstance(value, bool):
            raise ProtocolError(f"{self.what}: field {key!r} must be an integer")
        if not minimum <= value <= maximum:
            raise ProtocolError(f"{self.what}: field {key!r} = {value} is outside [{minimum}, {maximum}]")
        return value

    def bytes(self, key: str, *, length: int | None = None, max_length: int = 1 << 20) -> bytes:
        value = self._value[key]
        if not isinstance(value, bytes):
            raise ProtocolError(f"{self.what}: field {key!r} must be bytes")
        if length is not None and len(value) != length:
            raise ProtocolError(f"{self.what}: field {key!r} must be {length} bytes, got {len(value)}")
        if len(value) > max_length:
            raise ProtocolError(f"{self.what}: field {key!r} is too long ({len(value)} bytes)")
        return value

    def str(self, key: str, *, expected: str | None = None) -> str:
        value = self._value[key]
        if not isinstance(value, str):
            raise ProtocolError(f"{self.what}: field {key!r} must be a string")
        if expected is not None and value != expected:
            raise ProtocolError(f"{self.what}: field {key!r} is {value!r}, expected {expected!r}")
        return value

    def str_list(self, key: str) -> list[str]:
        value = self._value[key]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ProtocolError(f"{self.what}: field {key!r} must be a list of strings")
        if len(set(value)) != len(value):
            raise ProtocolError(f"{self.what}: field {key!r} lists a name twice")
        return list(value)

    def dict(self, key: str) -> dict[str, Any]:
        value = self._value[key]
        if not isinstance(value, dict):
            raise ProtocolError(f"{self.what}: field {key!r} must be a dict")
        return value

    def raw(self, key: str) -> Any:
        return self._value[key]
