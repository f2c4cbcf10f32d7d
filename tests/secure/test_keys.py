"""X25519 agreement + HKDF, raw key encoding, AES-256-GCM share bundles."""

from __future__ import annotations

import pytest

from fedlab.errors import ProtocolError
from fedlab.secure.keys import (
    agree,
    bundle_ad,
    decrypt_bundle,
    encrypt_bundle,
    generate_private_key,
    load_private_key,
    load_public_key,
    private_key_bytes,
    public_key_bytes,
)


def pair(**overrides: object) -> tuple[bytes, bytes]:
    a, b = generate_private_key(), generate_private_key()
    args = {"purpose": "mask", "run_id": "run-1", "own_epoch": 1, "peer_epoch": 2}
    args.update(overrides)
    ab = agree(a, b.public_key(), own_lab="lab-a", peer_lab="lab-b", **args)  # type: ignore[arg-type]
    ba = agree(
        b,
        a.public_key(),
        own_lab="lab-b",
        peer_lab="lab-a",
        purpose=args["purpose"],  # type: ignore[arg-type]
        run_id=args["run_id"],
        own_epoch=args["peer_epoch"],
        peer_epoch=args["own_epoch"],  # type: ignore[arg-type]
    )
    return ab, ba


def test_both_sides_derive_the_same_32_byte_key() -> None:
    ab, ba = pair()
    assert ab == ba
    assert len(ab) == 32


def test_keys_differ_by_purpose_run_epoch_and_labs() -> None:
    a, b = generate_private_key(), generate_private_key()

    def k(**kw: object) -> bytes:
        args: dict[str, object] = {
            "purpose": "mask",
            "run_id": "r",
            "own_lab": "x",
            "peer_lab": "y",
            "own_epoch": 1,
            "peer_epoch": 1,
        }
        args.update(kw)
        return agree(a, b.public_key(), **args)  # type: ignore[arg-type]

    variants = [k(), k(purpose="share"), k(run_id="r2"), k(own_epoch=2), k(peer_epoch=2), k(peer_lab="z")]
    assert len(set(variants)) == len(variants)


def test_low_order_and_malformed_public_keys_are_refused() -> None:
    own = generate_private_key()
    with pytest.raises(ProtocolError, match="low-order"):
        agree(own, load_public_key(bytes(32)), purpose="mask", run_id="r", own_lab="a", peer_lab="b")
    with pytest.raises(ProtocolError):
        load_public_key(bytes(31))
    with pytest.raises(ProtocolError):
        load_public_key("00" * 32)  # type: ignore[arg-type]
    with pytest.raises(ProtocolError):
        load_private_key(bytes(33))
    with pytest.raises(ProtocolError, match="itself"):
        agree(own, generate_private_key().public_key(), purpose="mask", run_id="r", own_lab="a", peer_lab="a")


def test_raw_key_round_trip() -> None:
    key = generate_private_key()
    raw = private_key_bytes(key)
    assert len(raw) == 32
    again = load_private_key(raw)
    assert public_key_bytes(again) == public_key_bytes(key) == public_key_bytes(key.public_key())
    assert load_public_key(public_key_bytes(key)).public_bytes_raw() == public_key_bytes(key)


def test_bundle_round_trip_and_binding() -> None:
    key, _ = pair(purpose="share")
    ad = bundle_ad("run-1", 4, "lab-a", "lab-b", "seed-share", 2, 1)
    blob = encrypt_bundle(key, b"share bytes", ad)
    assert decrypt_bundle(key, blob, ad) == b"share bytes"
    assert encrypt_bundle(key, b"share bytes", ad) != blob  # fresh nonce each time
    for other in (
        bundle_ad("run-2", 4, "lab-a", "lab-b", "seed-share", 2, 1),
        bundle_ad("run-1", 5, "lab-a", "lab-b", "seed-share", 2, 1),
        bundle_ad("run-1", 4, "lab-b", "lab-a", "seed-share", 2, 1),
        bundle_ad("run-1", 4, "lab-a", "lab-c", "seed-share", 2, 1),
        bundle_ad("run-1", 4, "lab-a", "lab-b", "seed-share", 3, 1),
    ):
        with pytest.raises(ProtocolError, match="authentication"):
            decrypt_bundle(key, blob, other)
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(ProtocolError, match="authentication"):
        decrypt_bundle(key, tampered, ad)
    with pytest.raises(ProtocolError, match="too short"):
        decrypt_bundle(key, blob[:20], ad)
    with pytest.raises(ProtocolError):
        encrypt_bundle(b"short key", b"x", ad)


def test_associated_data_is_injective() -> None:
    assert bundle_ad("ab", 1, "c", "d") != bundle_ad("a", 1, "bc", "d")
    assert bundle_ad("a", 1, "b", "c", 2) != bundle_ad("a", 1, "b", "c", "2")
