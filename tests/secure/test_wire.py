"""The strict canonical message encoding: round trips, canonical form, fuzzed input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlab.errors import ProtocolError
from fedlab.secure.wire import Fields, decode, encode

values = st.recursive(
    st.integers(-(10**19), 10**19) | st.binary(max_size=40) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=20,
)


@settings(max_examples=60, deadline=None)
@given(values)
def test_round_trip(value: object) -> None:
    raw = encode(value)  # type: ignore[arg-type]
    assert decode(raw) == value
    assert encode(decode(raw)) == raw


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_protocol_error(raw: bytes) -> None:
    try:
        value = decode(raw)
    except ProtocolError:
        return
    assert encode(value) == raw  # whatever decodes is canonical


@settings(max_examples=80, deadline=None)
@given(values, st.data())
def test_mutated_messages_raise_only_protocol_error(value: object, data: st.DataObject) -> None:
    raw = bytearray(encode(value))  # type: ignore[arg-type]
    position = data.draw(st.integers(0, max(len(raw) - 1, 0)))
    action = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
    if action == "flip" and raw:
        raw[position] ^= data.draw(st.integers(1, 255))
    elif action == "truncate":
        del raw[position:]
    elif action == "insert":
        raw.insert(position, data.draw(st.integers(0, 255)))
    elif raw:
        del raw[position]
    try:
        decoded = decode(bytes(raw))
    except ProtocolError:
        return
    assert encode(decoded) == bytes(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"i01e",
        b"i-0e",
        b"i+1e",
        b"ie",
        b"i1",
        b"b01:x",
        b"b2:x",
        b"s1:\xff",
        b"d",
        b"l",
        b"ds1:bi1es1:ai1ee",
        b"ds1:ai1es1:ai2ee",
        b"di1ei1ee",
        b"x",
        b"i1ei1e",
        b"i" + b"9" * 30 + b"e",
        b"l" * 100 + b"e" * 100,
        b"",
    ],
)
def test_non_canonical_or_malformed_input_is_refused(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(raw)


def test_encoding_is_canonical() -> None:
    assert encode({"b": 1, "a": [b"x", "y"]}) == b"ds1:alb1:xs1:yes1:bi1ee"
    assert encode(-5) == b"i-5e"
    with pytest.raises(ProtocolError):
        encode(True)  # type: ignore[arg-type]
    with pytest.raises(ProtocolError):
        encode(1.5)  # type: ignore[arg-type]
    with pytest.raises(ProtocolError):
        encode({1: 2})  # type: ignore[dict-item]
    with pytest.raises(ProtocolError):
        decode("i1e")  # type: ignore[arg-type]


def test_fields_checks_keys_and_types() -> None:
    f = Fields({"n": 3, "b": b"xy", "s": "z", "l": ["a", "b"], "d": {}}, "test message", "nbsld")
    assert f.int("n", maximum=3) == 3
    assert f.bytes("b", length=2) == b"xy"
    assert f.str("s", expected="z") == "z"
    assert f.str_list("l") == ["a", "b"]
    assert f.dict("d") == {}
    with pytest.raises(ProtocolError, match="outside"):
        f.int("n", maximum=2)
    with pytest.raises(ProtocolError, match="must be an integer"):
        f.int("b")
    with pytest.raises(ProtocolError, match="3 bytes"):
        f.bytes("b", length=3)
    with pytest.raises(ProtocolError, match="expected"):
        f.str("s", expected="q")
    with pytest.raises(ProtocolError, match="missing fields"):
        Fields({"n": 1}, "test message", ["n", "m"])
    with pytest.raises(ProtocolError, match="unexpected fields"):
        Fields({"n": 1, "x": 2}, "test message", ["n"])
    with pytest.raises(ProtocolError, match="twice"):
        Fields({"l": ["a", "a"]}, "m", ["l"]).str_list("l")
    with pytest.raises(ProtocolError, match="expected a dict"):
        Fields([1], "m", [])
