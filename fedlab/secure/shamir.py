"""Shamir secret sharing of 32-byte secrets over GF(p), p = 2^521 - 1.

A secret ``s`` (32 bytes, read big-endian as an integer < 2^256 < p) is the
constant term of a random polynomial of degree ``threshold - 1`` whose other
coefficients are drawn uniformly from GF(p) with :mod:`secrets`. The share for
x-coordinate ``x`` (an integer in ``1..MAX_X``) is the polynomial's value at
``x``, encoded as :data:`SHARE_LEN` = 66 big-endian bytes. Any ``threshold``
shares determine ``s`` (Lagrange interpolation at 0); fewer reveal nothing about
it (every secret is equally consistent with them).
"""

from __future__ import annotations

import functools
import logging
import secrets
from collections.abc import Mapping, Sequence

from fedlab.errors import ProtocolError

logger = logging.getLogger(__name__)

PRIME = (1 << 521) - 1
SECRET_LEN = 32
SHARE_LEN = 66  # ceil(521 / 8)
MAX_X = 1 << 20


def _check_x(x: object) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or not 1 <= x <= MAX_X:
        raise ProtocolError(f"Shamir: x-coordinate must be an integer in [1, {MAX_X}], got {x!r}")
    return x


def _check_threshold(threshold: object) -> int:
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
        raise ProtocolError(f"Shamir: threshold must be a positive integer, got {threshold!r}")
    return threshold


def _random_field_elements(count: int) -> list[int]:
    """``count`` uniform elements of GF(p) from the OS CSPRNG (one read, rejection sampling)."""
    pool = secrets.token_bytes(SHARE_LEN * count)
    values = []
    for i in range(count):
        value = int.from_bytes(pool[SHARE_LEN * i : SHARE_LEN * (i + 1)], "big") & PRIME  # 521 bits
        while value >= PRIME:  # only for the all-ones value, probability 2^-521
            value = secrets.randbelow(PRIME)
        values.append(value)
    return values


def split(secret: bytes, threshold: int, xs: Sequence[int]) -> dict[int, bytes]:
    """Split a 32-byte ``secret`` into shares at ``xs``; any ``threshold`` recover it."""
    if not isinstance(secret, bytes) or len(secret) != SECRET_LEN:
        raise ProtocolError(f"Shamir: the secret must be {SECRET_LEN} bytes")
    t = _check_threshold(threshold)
    points = [_check_x(x) for x in xs]
    if len(set(points)) != len(points):
        raise ProtocolError("Shamir: duplicate x-coordinates")
    if len(points) < t:
        raise ProtocolError(
            f"Shamir: {len(points)} shares cannot meet a threshold of {t}; the secret would be unrecoverable"
        )
    coefficients = [int.from_bytes(secret, "big")]
    coefficients.extend(_random_field_elements(t - 1))
    shares: dict[int, bytes] = {}
    for x in points:
        acc = 0
        for coefficient in reversed(coefficients):  # Horner
            acc = (acc * x + coefficient) % PRIME
        shares[x] = acc.to_bytes(SHARE_LEN, "big")
    return shares


@functools.lru_cache(maxsize=1024)
def _lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """Lagrange basis values at 0 for the points ``xs`` (prod_{j != i} x_j / (x_j - x_i)).

    Cached: in a round most seeds are rebuilt from the same few sets of holders."""
    numerator = 1
    for x in xs:
        numerator = numerator * x % PRIME
    basis = []
    for xi in xs:
        denominator = xi
        for xj in xs:
            if xj != xi:
                denominator = denominator * (xj - xi) % PRIME
        basis.append(numerator * pow(denominator, -1, PRIME) % PRIME)
    return tuple(basis)


def combine(shares: Mapping[int, bytes], threshold: int) -> bytes:
    """Recover the secret from at least ``threshold`` shares (uses the ``threshold`` lowest x).

    Raises ProtocolError on too few shares, bad or duplicate x-coordinates,
    malformed share bytes, or shares that interpolate to no 32-byte secret.
    """
    t = _check_threshold(threshold)
    if not isinstance(shares, Mapping):
        raise ProtocolError("Shamir: shares must be a mapping from x-coordinate to bytes")
    points: dict[int, int] = {}
    for x, raw in shares.items():
        x = _check_x(x)
        if x in points:
            raise ProtocolError(f"Shamir: duplicate x-coordinate {x}")
        if not isinstance(raw, bytes) or len(raw) != SHARE_LEN:
            raise ProtocolError(f"Shamir: share at x={x} must be {SHARE_LEN} bytes")
        y = int.from_bytes(raw, "big")
        if y >= PRIME:
            raise ProtocolError(f"Shamir: share at x={x} is not a field element")
        points[x] = y
    if len(points) < t:
        raise ProtocolError(f"Shamir: {len(points)} shares given, {t} needed to reconstruct")
    chosen = tuple(sorted(points)[:t])
    secret = 0
    for x, basis in zip(chosen, _lagrange_at_zero(chosen), strict=True):
        secret = (secret + points[x] * basis) % PRIME
    if secret >= 1 << (8 * SECRET_LEN):
        raise ProtocolError(
            "Shamir: the shares do not interpolate to a 32-byte secret (inconsistent or too few "
            "shares for the threshold they were made with)"
        )
    return secret.to_bytes(SECRET_LEN, "big")
