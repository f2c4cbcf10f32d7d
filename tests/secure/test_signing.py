"""Ed25519 signatures over (run, round, stage, sender, payload hash) and the replay guard."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlab.errors import ProtocolError, SignatureError
from fedlab.secure.signing import ReplayGuard, sign, signed_bytes, verify

ALICE = Ed25519PrivateKey.generate()
BOB = Ed25519PrivateKey.generate()
ROSTER = {"alice": ALICE.public_key(), "bob": BOB.public_key()}

names = st.text(min_size=0, max_size=12)


@settings(max_examples=60, deadline=None)
@given(run=names, rnd=st.integers(0, 2**64 - 1), stage=names, payload=st.binary(max_size=200))
def test_sign_verify_round_trip(run: str, rnd: int, stage: str, payload: bytes) -> None:
    signature = sign(ALICE, run, rnd, stage, "alice", payload)
    assert len(signature) == 64
    verify(ROSTER, signature, run, rnd, stage, "alice", payload)
    for changed in (
        (run + "x", rnd, stage, "alice", payload),
        (run, (rnd + 1) % 2**64, stage, "alice", payload),
        (run, rnd, stage + "x", "alice", payload),
        (run, rnd, stage, "bob", payload),
        (run, rnd, stage, "alice", payload + b"\x00"),
    ):
        with pytest.raises(SignatureError):
            verify(ROSTER, signature, *changed)


def test_unknown_sender_and_bad_signatures_are_refused() -> None:
    signature = sign(ALICE, "run", 1, "train", "alice", b"payload")
    with pytest.raises(SignatureError, match="not in the roster"):
        verify(ROSTER, signature, "run", 1, "train", "mallory", b"payload")
    with pytest.raises(SignatureError, match="64-byte"):
        verify(ROSTER, signature[:-1], "run", 1, "train", "alice", b"payload")
    with pytest.raises(SignatureError, match="does not verify"):
        verify(ROSTER, bytes(64), "run", 1, "train", "alice", b"payload")
    # A lab cannot sign for another one with its own key.
    forged = sign(BOB, "run", 1, "train", "alice", b"payload")
    with pytest.raises(SignatureError, match="does not verify"):
        verify(ROSTER, forged, "run", 1, "train", "alice", b"payload")
    with pytest.raises(ProtocolError):
        sign(ALICE, "run", -1, "train", "alice", b"payload")
    with pytest.raises(ProtocolError):
        sign(ALICE, "run", 2**64, "train", "alice", b"payload")


def test_signed_encoding_is_unambiguous() -> None:
    assert signed_bytes("ab", 1, "c", "d", b"") != signed_bytes("a", 1, "bc", "d", b"")
    assert signed_bytes("a", 1, "b", "cd", b"") != signed_bytes("a", 1, "bc", "d", b"")
    assert signed_bytes("a", 256, "b", "c", b"") != signed_bytes("a", 1, "b", "c", b"")


def test_replay_guard() -> None:
    guard = ReplayGuard()
    guard.advance(3)
    guard.accept("alice", "train", 3)
    with pytest.raises(ProtocolError, match="replay"):
        guard.accept("alice", "train", 3)
    guard.accept("alice", "unmask", 3)
    guard.accept("bob", "train", 3)
    guard.accept("bob", "train", 5)  # a future round is accepted, does not move the guard
    assert guard.current_round == 3
    guard.advance(4)
    with pytest.raises(ProtocolError, match="past round"):
        guard.accept("carol", "train", 3)
    with pytest.raises(ProtocolError, match="replay"):
        guard.accept("bob", "train", 5)
    with pytest.raises(ProtocolError, match="move back"):
        guard.advance(2)
