"""Shamir sharing over GF(2^521 - 1): known answers, thresholds, malformed input."""

from __future__ import annotations

import itertools
import secrets

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlab.errors import ProtocolError
from fedlab.secure.shamir import PRIME, SHARE_LEN, combine, split


def y(value: int) -> bytes:
    return value.to_bytes(SHARE_LEN, "big")


def test_prime_is_the_mersenne_prime_2_521_minus_1() -> None:
    assert PRIME == 2**521 - 1
    assert pow(3, PRIME - 1, PRIME) == 1  # Fermat witness (M521 is a known prime)


def test_known_answer_textbook_example() -> None:
    # f(x) = 1234 + 166 x + 94 x^2: shares (1,1494) (2,1942) (3,2578) (4,3402) (5,4414) (6,5614)
    table = {1: 1494, 2: 1942, 3: 2578, 4: 3402, 5: 4414, 6: 5614}
    secret = (1234).to_bytes(32, "big")
    for subset in itertools.combinations(table, 3):
        assert combine({x: y(table[x]) for x in subset}, 3) == secret
    assert combine({x: y(v) for x, v in table.items()}, 3) == secret


def test_known_answer_full_size_polynomial() -> None:
    secret = bytes(range(1, 33))
    coefficients = [int.from_bytes(secret, "big"), 2**300 + 12345, PRIME - 2, 7**150]

    def evaluate(x: int) -> int:  # straightforward evaluation, independent of split()
        return sum(c * x**i for i, c in enumerate(coefficients)) % PRIME

    shares = {x: y(evaluate(x)) for x in (3, 9, 17, 40, 41)}
    assert combine({x: shares[x] for x in (3, 9, 17, 40)}, 4) == secret
    assert combine({x: shares[x] for x in (9, 17, 40, 41)}, 4) == secret


@settings(max_examples=40, deadline=None)
@given(
    secret=st.binary(min_size=32, max_size=32),
    n=st.integers(1, 12),
    data=st.data(),
)
def test_any_t_shares_reconstruct_fewer_do_not(secret: bytes, n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(1, n))
    xs = data.draw(st.lists(st.integers(1, 1000), min_size=n, max_size=n, unique=True))
    shares = split(secret, t, xs)
    assert sorted(shares) == sorted(xs)
    assert all(len(s) == SHARE_LEN for s in shares.values())
    chosen = data.draw(st.permutations(xs))[:t]
    assert combine({x: shares[x] for x in chosen}, t) == secret
    if t > 1:
        fewer = {x: shares[x] for x in chosen[: t - 1]}
        with pytest.raises(ProtocolError, match="needed"):
            combine(fewer, t)
        # Interpolating t-1 shares as if they were enough gives a random field element,
        # (almost surely) not even a 32-byte value, never the secret.
        try:
            assert combine(fewer, t - 1) != secret
        except ProtocolError:
            pass


def test_shares_are_freshly_random() -> None:
    secret = secrets.token_bytes(32)
    assert split(secret, 3, [1, 2, 3]) != split(secret, 3, [1, 2, 3])
    assert split(secret, 1, [5]) == {5: y(int.from_bytes(secret, "big"))}  # degree 0: the secret


def test_refuses_malformed_input() -> None:
    secret = secrets.token_bytes(32)
    shares = split(secret, 2, [1, 2, 3])
    with pytest.raises(ProtocolError, match="32 bytes"):
        split(b"short", 2, [1, 2])
    with pytest.raises(ProtocolError, match="duplicate"):
        split(secret, 2, [1, 1, 2])
    with pytest.raises(ProtocolError, match="unrecoverable"):
        split(secret, 3, [1, 2])
    for bad_x in (0, -1, True, 1.0, 2**40):
        with pytest.raises(ProtocolError, match="x-coordinate"):
            split(secret, 1, [bad_x])  # type: ignore[list-item]
        with pytest.raises(ProtocolError, match="x-coordinate"):
            combine({bad_x: shares[1], 2: shares[2]}, 2)  # type: ignore[dict-item]
    with pytest.raises(ProtocolError, match="threshold"):
        combine(shares, 0)
    with pytest.raises(ProtocolError, match="66 bytes"):
        combine({1: shares[1][:-1], 2: shares[2]}, 2)
    with pytest.raises(ProtocolError, match="field element"):
        combine({1: b"\xff" * SHARE_LEN, 2: shares[2]}, 2)
    with pytest.raises(ProtocolError, match="mapping"):
        combine([(1, shares[1]), (2, shares[2])], 2)  # type: ignore[arg-type]
    # A share shifted by d moves the secret by d * L_1(0) = 2d here; a large shift lands
    # outside the 32-byte range and is detected, a small one silently changes the secret
    # (callers detect that with the seed commitment).
    shifted = y((int.from_bytes(shares[1], "big") + 2**400) % PRIME)
    with pytest.raises(ProtocolError, match="32-byte secret"):
        combine({1: shifted, 2: shares[2]}, 2)
