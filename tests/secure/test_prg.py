"""AES-256-CTR mask expansion: NIST known answers, chunking, accumulation, key derivation."""

from __future__ import annotations

import os

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fedlab.errors import ProtocolError
from fedlab.secure.prg import (
    CHUNK_WORDS,
    PAIR_MASK_LABEL,
    SELF_MASK_LABEL,
    add_mask_into,
    apply_masks_into,
    derive_mask_key,
    expand_mask,
    pair_mask_key,
    self_mask_key,
)

# NIST SP 800-38A, F.5.5 CTR-AES256.Encrypt
NIST_KEY = bytes.fromhex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
NIST_COUNTER = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
NIST_PLAINTEXT = bytes.fromhex(
    "6bc1bee22e409f96e93d7e117393172a"
    "ae2d8a571e03ac9c9eb76fac45af8e51"
    "30c81c46a35ce411e5fbc1191a0a52ef"
    "f69f2445df4f9b17ad2b417be66c3710"
)
NIST_CIPHERTEXT = bytes.fromhex(
    "601ec313775789a5b7a7f504bbf3d228"
    "f443e3ca4d62b59aca84e990cacaf5c5"
    "2b0930daa23de94ce87017ba2d84988d"
    "dfc9c58db67aada613c2dd08457941a6"
)
# The standard's "Output Block" column (keystream) for the same four blocks.
NIST_OUTPUT_BLOCKS = bytes.fromhex(
    "0bdf7df1591716335e9a8b15c860c502"
    "5a6e699d536119065433863c8f657b94"
    "1bc12c9c01610d5d0d8bd6a3378eca62"
    "2956e1c8693536b1bee99c73a31576b6"
)


def test_nist_sp800_38a_ctr_aes256_keystream() -> None:
    assert bytes(p ^ c for p, c in zip(NIST_PLAINTEXT, NIST_CIPHERTEXT, strict=True)) == NIST_OUTPUT_BLOCKS
    words = expand_mask(NIST_KEY, 16, counter=NIST_COUNTER)
    expected = np.frombuffer(NIST_OUTPUT_BLOCKS, dtype="<u4")
    np.testing.assert_array_equal(words, expected)
    assert words[0] == 0xF17DDF0B  # bytes 0b df 7d f1 read little-endian


def test_zero_counter_matches_independent_ecb_counter_blocks() -> None:
    key = bytes(range(32))
    blocks = b"".join(i.to_bytes(16, "big") for i in range(5))
    ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    expected = np.frombuffer(ecb.update(blocks) + ecb.finalize(), dtype="<u4")
    np.testing.assert_array_equal(expand_mask(key, 20), expected)


@pytest.mark.parametrize(
    "length", [0, 1, 3, 4, 5, CHUNK_WORDS - 1, CHUNK_WORDS, CHUNK_WORDS + 1, 3 * CHUNK_WORDS + 7]
)
def test_chunked_expansion_equals_one_shot_stream(length: int) -> None:
    key = os.urandom(32)
    one_shot = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(4 * length))
    np.testing.assert_array_equal(expand_mask(key, length), np.frombuffer(one_shot, dtype="<u4"))
    out = np.full(length, 0xDEADBEEF, dtype=np.uint32)
    assert expand_mask(key, length, out=out) is out
    np.testing.assert_array_equal(out, np.frombuffer(one_shot, dtype="<u4"))


def test_add_and_subtract_masks_mod_2_32() -> None:
    length = 2 * CHUNK_WORDS + 11
    rng_values = np.frombuffer(os.urandom(4 * length), dtype=np.uint32).copy()
    key = os.urandom(32)
    mask = expand_mask(key, length)
    acc = rng_values.copy()
    add_mask_into(acc, key, +1)
    np.testing.assert_array_equal(acc, rng_values + mask)  # uint32 wraps
    add_mask_into(acc, key, -1)
    np.testing.assert_array_equal(acc, rng_values)


def test_apply_many_masks_equals_sum_of_streams() -> None:
    length = CHUNK_WORDS + 5
    keys = [(os.urandom(32), sign) for sign in (1, -1, 1, 1, -1)]
    expected = np.zeros(length, dtype=np.uint32)
    for key, sign in keys:
        stream = expand_mask(key, length)
        expected = expected + stream if sign > 0 else expected - stream
    acc = np.zeros(length, dtype=np.uint32)
    apply_masks_into(acc, keys)
    np.testing.assert_array_equal(acc, expected)
    apply_masks_into(acc, [(k, -s) for k, s in keys])
    assert not acc.any()


def test_refuses_bad_arguments() -> None:
    key = os.urandom(32)
    with pytest.raises(ProtocolError):
        expand_mask(b"short", 4)
    with pytest.raises(ProtocolError):
        expand_mask(key, -1)
    with pytest.raises(ProtocolError):
        expand_mask(key, 4, out=np.zeros(5, dtype=np.uint32))
    with pytest.raises(ProtocolError):
        expand_mask(key, 4, out=np.zeros(4, dtype=np.int64))
    with pytest.raises(ProtocolError):
        add_mask_into(np.zeros(4, dtype=np.uint32), key, 2)
    with pytest.raises(ProtocolError):
        add_mask_into(np.zeros(8, dtype=np.uint32)[::2], key, 1)
    readonly = np.zeros(4, dtype=np.uint32)
    readonly.flags.writeable = False
    with pytest.raises(ProtocolError):
        add_mask_into(readonly, key, 1)


def test_mask_keys_are_separated_by_label_round_and_labs() -> None:
    secret = os.urandom(32)
    self_key = self_mask_key(secret, "run", 3, "lab-a")
    assert self_key == derive_mask_key(
        secret, label=SELF_MASK_LABEL, run_id="run", round=3, context=["lab-a"]
    )
    pair = pair_mask_key(secret, "run", 3, "lab-a", "lab-b")
    assert pair == pair_mask_key(secret, "run", 3, "lab-b", "lab-a")  # both sides agree
    assert pair == derive_mask_key(
        secret, label=PAIR_MASK_LABEL, run_id="run", round=3, context=["lab-a", "lab-b"]
    )
    others = {
        self_key,
        pair,
        self_mask_key(secret, "run", 4, "lab-a"),
        self_mask_key(secret, "run2", 3, "lab-a"),
        self_mask_key(secret, "run", 3, "lab-b"),
        pair_mask_key(secret, "run", 4, "lab-a", "lab-b"),
        pair_mask_key(secret, "run", 3, "lab-a", "lab-c"),
        derive_mask_key(secret, label=SELF_MASK_LABEL, run_id="run", round=3, context=["lab-a", "lab-b"]),
    }
    assert len(others) == 8
    assert all(len(k) == 32 for k in others)
    with pytest.raises(ProtocolError):
        derive_mask_key(secret, label="other", run_id="run", round=1)
    with pytest.raises(ProtocolError):
        self_mask_key(b"too short", "run", 1, "lab-a")
