"""X25519 key pairs, authenticated pairwise keys, AES-256-GCM share bundles.

* Each lab makes two X25519 key pairs at setup: one to encrypt Shamir shares for
  its neighbours, one to agree pairwise mask secrets. Public keys travel as raw
  32 bytes inside adverts signed with the lab's Ed25519 identity key, so the
  server cannot substitute its own keys.
* :func:`agree` runs X25519 and HKDF-SHA256; the HKDF info binds a purpose label,
  the run id, both lab names in a canonical (sorted) order, each lab's setup
  epoch and both public keys. Both sides therefore derive the same 32-byte key,
  and keys for different runs, labs, epochs or purposes are independent.
* :func:`encrypt_bundle` / :func:`decrypt_bundle` are AES-256-GCM with a random
  96-bit nonce prepended; the associated data (:func:`bundle_ad`) binds the run,
  the epoch/round, sender and receiver, so the server cannot redirect a
  ciphertext to another lab, seed or round.
"""

from __future__ import annotations

import logging
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fedlab.errors import ProtocolError
from fedlab.secure.prg import context_info, hkdf32

logger = logging.getLogger(__name__)

KEY_LEN = 32
NONCE_LEN = 12
TAG_LEN = 16
AGREE_LABEL = "fedlab/secagg/agree/v1"
BUNDLE_AD_LABEL = "fedlab/secagg/bundle/v1"


def generate_private_key() -> X25519PrivateKey:
    """A fresh X25519 private key (from the operating system's CSPRNG)."""
    return X25519PrivateKey.generate()


def public_key_bytes(key: X25519PrivateKey | X25519PublicKey) -> bytes:
    """Raw 32-byte encoding of a public key (or of a private key's public half)."""
    public = key.public_key() if isinstance(key, X25519PrivateKey) else key
    return public.public_bytes_raw()


def private_key_bytes(key: X25519PrivateKey) -> bytes:
    """Raw 32-byte encoding of a private key (keep it secret; never log it)."""
    return key.private_bytes_raw()


def load_public_key(raw: bytes) -> X25519PublicKey:
    """Parse a raw 32-byte X25519 public key; ProtocolError if malformed."""
    if not isinstance(raw, bytes) or len(raw) != KEY_LEN:
        raise ProtocolError(f"an X25519 public key must be {KEY_LEN} raw bytes")
    try:
        return X25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise ProtocolError(f"malformed X25519 public key: {exc}") from None


def load_private_key(raw: bytes) -> X25519PrivateKey:
    """Parse a raw 32-byte X25519 private key; ProtocolError if malformed."""
    if not isinstance(raw, bytes) or len(raw) != KEY_LEN:
        raise ProtocolError(f"an X25519 private key must be {KEY_LEN} raw bytes")
    try:
        return X25519PrivateKey.from_private_bytes(raw)
    except ValueError as exc:
        raise ProtocolError(f"malformed X25519 private key: {exc}") from None


def agree(
    own: X25519PrivateKey,
    peer: X25519PublicKey,
    *,
    purpose: str,
    run_id: str,
    own_lab: str,
    peer_lab: str,
    own_epoch: int = 0,
    peer_epoch: int = 0,
) -> bytes:
    """X25519 + HKDF-SHA256 pairwise key, identical on both sides.

    ``purpose`` separates keys of the same key pair used for different things
    (e.g. ``"share"`` and ``"mask"``). Raises ProtocolError for a low-order peer
    key (all-zero shared secret) or equal lab names.
    """
    if own_lab == peer_lab:
        raise ProtocolError(f"key agreement: lab {own_lab!r} cannot agree a key with itself")
    try:
        shared = own.exchange(peer)
    except ValueError:
        raise ProtocolError(
            f"key agreement between {own_lab!r} and {peer_lab!r} failed: the peer public key "
            "is a low-order point"
        ) from None
    own_pub = public_key_bytes(own)
    peer_pub = public_key_bytes(peer)
    first, second = sorted(
        [(own_lab, own_epoch, own_pub), (peer_lab, peer_epoch, peer_pub)], key=lambda e: e[0]
    )
    return hkdf32(
        shared,
        AGREE_LABEL,
        purpose,
        run_id,
        first[0],
        first[1],
        first[2],
        second[0],
        second[1],
        second[2],
    )


def bundle_ad(run_id: str, epoch: int, sender: str, receiver: str, *extra: str | int) -> bytes:
    """Associated data for a share bundle: run, epoch/round, sender, receiver, extras."""
    return context_info(BUNDLE_AD_LABEL, run_id, epoch, sender, receiver, *extra)


def encrypt_bundle(key: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    """AES-256-GCM encrypt; returns nonce (12) || ciphertext || tag (16)."""
    if not isinstance(key, bytes) or len(key) != KEY_LEN:
        raise ProtocolError(f"bundle key must be {KEY_LEN} bytes")
    nonce = os.urandom(NONCE_LEN)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated_data)


def decrypt_bundle(key: bytes, blob: bytes, associated_data: bytes) -> bytes:
    """Decrypt a bundle; ProtocolError if it is malformed, tampered or bound elsewhere."""
    if not isinstance(key, bytes) or len(key) != KEY_LEN:
        raise ProtocolError(f"bundle key must be {KEY_LEN} bytes")
    if not isinstance(blob, bytes) or len(blob) < NONCE_LEN + TAG_LEN:
        raise ProtocolError("encrypted bundle is too short to be valid")
    try:
        return AESGCM(key).decrypt(blob[:NONCE_LEN], blob[NONCE_LEN:], associated_data)
    except InvalidTag:
        raise ProtocolError(
            "encrypted bundle failed authentication (tampered, or addressed to another lab, seed or round)"
        ) from None
