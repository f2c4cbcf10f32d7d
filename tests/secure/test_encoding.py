"""Fixed-point encoding into Z/2^32: known answers, round trips, the no-wrap bound."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlab.errors import ProtocolError
from fedlab.secure.encoding import MIN_VALUE_BITS, FixedPointEncoder

DEFAULT = FixedPointEncoder(8.0, 1 << 16, 1000)


def ring_sum(vectors: list[np.ndarray]) -> np.ndarray:
    total = np.zeros_like(vectors[0])
    for vector in vectors:
        np.add(total, vector, out=total)  # uint32 arithmetic wraps mod 2^32
    return total


def test_defaults_choose_two_fraction_bits_on_the_weighted_scale() -> None:
    # 1000 * (8 * 65536 * 2^2 + 1) = 2_097_153_000 <= 2^31 - 1, but with 2^3 it would be 4.19e9.
    assert DEFAULT.frac_bits == 2
    assert DEFAULT.value_bits == 18
    assert 1000 * (8 * 65536 * 4 + 1) <= 2**31 - 1 < 1000 * (8 * 65536 * 8 + 1)


def test_known_answer_defaults() -> None:
    values = np.array([0.3, -1.1, 9.0, -8.5, 0.125, 0.0, 7.99], dtype=np.float32)
    encoded, clipped = DEFAULT.encode_counting(values, 3)
    # scale = 3 * 2^2 = 12; float32(0.3) * 12 = 3.6000001 -> 4; float32(-1.1) * 12 = -13.2 -> -13;
    # 9 clips to 8 -> 96; -8.5 clips to -8 -> -96; 0.125 * 12 = 1.5 -> 2 (half to even);
    # float32(7.99) * 12 = 95.88 -> 96; the weight 3 goes last.
    expected = [4, 2**32 - 13, 96, 2**32 - 96, 2, 0, 96, 3]
    assert encoded.dtype == np.uint32
    assert encoded.tolist() == expected
    assert clipped == 2
    assert DEFAULT.last_clipped == 2


def test_known_answer_thirty_fraction_bits() -> None:
    encoder = FixedPointEncoder(1.0, 1, 1)
    assert encoder.frac_bits == 30  # 1 * (2^30 + 1) fits in 2^31 - 1, 2^31 + 1 does not
    values = np.array([0.5, -0.25, 1.0, -1.0, 2.0**-31, 3.0], dtype=np.float32)
    encoded = encoder.encode(values, 1)
    assert encoded.tolist() == [2**29, 2**32 - 2**28, 2**30, 2**32 - 2**30, 0, 2**30, 1]


def test_known_answer_decode_sum() -> None:
    encoder = FixedPointEncoder(1.0, 4, 2)
    a = encoder.encode(np.array([0.5, -1.0], dtype=np.float32), 1)
    b = encoder.encode(np.array([-0.25, 0.75], dtype=np.float32), 3)
    weighted_sum, weight = encoder.decode_sum(ring_sum([a, b]), 2)
    assert weight == 4
    np.testing.assert_array_equal(weighted_sum, [0.5 - 0.75, -1.0 + 2.25])
    assert weighted_sum.dtype == np.float64


def test_largest_sum_does_not_wrap() -> None:
    values = np.array([8.0, -8.0, 7.999, -7.999, 100.0], dtype=np.float32)
    encoded = DEFAULT.encode(values, DEFAULT.max_weight)
    total = ring_sum([encoded] * DEFAULT.max_labs)
    weighted_sum, weight = DEFAULT.decode_sum(total, DEFAULT.max_labs)
    assert weight == DEFAULT.max_labs * DEFAULT.max_weight
    exact = DEFAULT.max_labs * DEFAULT.max_weight * np.clip(values.astype(np.float64), -8, 8)
    average_error = np.abs(weighted_sum - exact).max() / weight
    assert average_error <= DEFAULT.error_bound(DEFAULT.max_labs, weight)
    assert np.sign(weighted_sum).tolist() == [1, -1, 1, -1, 1]


@pytest.mark.parametrize(
    ("clip", "max_weight", "max_labs"),
    [(1e6, 1 << 16, 1000), (8.0, 1 << 16, 1 << 16), (1.0, 1, 1 << 24)],
)
def test_refuses_parameters_with_too_few_fraction_bits(clip: float, max_weight: int, max_labs: int) -> None:
    with pytest.raises(ProtocolError, match="fractional bits|weight slot"):
        FixedPointEncoder(clip, max_weight, max_labs)


@pytest.mark.parametrize(
    ("clip", "max_weight", "max_labs"),
    [(0.0, 1, 1), (-1.0, 1, 1), (float("nan"), 1, 1), (1.0, 0, 1), (1.0, 1, 0), (1.0, 1 << 30, 1)],
)
def test_refuses_invalid_parameters(clip: float, max_weight: int, max_labs: int) -> None:
    with pytest.raises(ProtocolError):
        FixedPointEncoder(clip, max_weight, max_labs)


def test_refuses_bad_inputs() -> None:
    good = np.zeros(4, dtype=np.float32)
    for weight in (0, -1, DEFAULT.max_weight + 1, 1.5, True):
        with pytest.raises(ProtocolError, match="weight"):
            DEFAULT.encode(good, weight)  # type: ignore[arg-type]
    for bad in (np.array([1.0, np.nan], dtype=np.float32), np.array([np.inf], dtype=np.float32)):
        with pytest.raises(ProtocolError, match="non-finite"):
            DEFAULT.encode(bad, 1)
    with pytest.raises(ProtocolError):
        DEFAULT.encode(np.zeros((2, 2), dtype=np.float32), 1)
    with pytest.raises(ProtocolError):
        DEFAULT.encode(np.zeros(3, dtype=np.int32), 1)
    with pytest.raises(ProtocolError):
        DEFAULT.encode(good, 1, out=np.zeros(4, dtype=np.uint32))  # needs len + 1
    with pytest.raises(ProtocolError, match="impossible"):
        DEFAULT.decode_sum(np.array([1, 2, 0], dtype=np.uint32), 1)  # weight 0 for 1 lab
    with pytest.raises(ProtocolError):
        DEFAULT.decode_sum(np.array([1, 1], dtype=np.uint32), DEFAULT.max_labs + 1)


def test_huge_finite_values_are_clipped_not_rejected() -> None:
    values = np.full(5, np.finfo(np.float32).max, dtype=np.float32)
    encoded, clipped = DEFAULT.encode_counting(values, 1)
    assert clipped == 5
    assert encoded[:-1].tolist() == [32] * 5


def test_encode_writes_into_out() -> None:
    out = np.full(4, 7, dtype=np.uint32)
    result = DEFAULT.encode(np.array([1.0, -1.0, 0.5], dtype=np.float32), 1, out=out)
    assert result is out
    assert out.tolist() == [4, 2**32 - 4, 2, 1]


@st.composite
def federations(draw: st.DrawFn) -> tuple[FixedPointEncoder, list[np.ndarray], list[int]]:
    clip = draw(st.sampled_from([0.5, 1.0, 3.7, 8.0, 100.0]))
    max_weight = draw(st.sampled_from([1, 7, 1000, 1 << 16]))
    max_labs = draw(st.sampled_from([1, 2, 50, 1000]))
    encoder = FixedPointEncoder(clip, max_weight, max_labs)
    n = draw(st.integers(1, min(max_labs, 12)))
    length = draw(st.integers(1, 24))
    bound = float(np.float32(1.5 * clip))
    element = st.floats(-bound, bound, allow_nan=False, width=32)
    vectors = [
        np.array(draw(st.lists(element, min_size=length, max_size=length)), dtype=np.float32)
        for _ in range(n)
    ]
    weights = [draw(st.integers(1, max_weight)) for _ in range(n)]
    return encoder, vectors, weights


@settings(max_examples=80, deadline=None)
@given(federations())
def test_round_trip_within_error_bound(case: tuple[FixedPointEncoder, list[np.ndarray], list[int]]) -> None:
    encoder, vectors, weights = case
    total = ring_sum([encoder.encode(v, w) for v, w in zip(vectors, weights, strict=True)])
    weighted_sum, weight = encoder.decode_sum(total, len(vectors))
    assert weight == sum(weights)
    exact = (
        sum(
            w * np.clip(v.astype(np.float64), -encoder.clip, encoder.clip)
            for v, w in zip(vectors, weights, strict=True)
        )
        / weight
    )
    error = np.abs(weighted_sum / weight - exact).max()
    assert error <= encoder.error_bound(len(vectors), weight)
    assert encoder.error_bound(len(vectors), weight) <= encoder.error_bound(len(vectors))


def test_error_bound_is_not_vacuous() -> None:
    # The bound is the rounding half-unit, not a loose over-estimate: a single lab at weight 1
    # whose value sits exactly between two grid points realises half of it.
    encoder = FixedPointEncoder(1.0, 1, 1)
    value = np.array([2.0**-31], dtype=np.float32)  # half a unit of 2^-30
    weighted_sum, weight = encoder.decode_sum(encoder.encode(value, 1), 1)
    realised = abs(weighted_sum[0] / weight - float(value[0]))
    assert realised == 2.0**-31
    assert realised <= encoder.error_bound(1) < 2 * realised
    assert MIN_VALUE_BITS == 8


def test_encodes_millions_of_values_with_exact_clip_count() -> None:
    # Speed is measured by benchmarks/secure_aggregation.py, not asserted in a unit test.
    values = np.linspace(-10, 10, 4_000_000, dtype=np.float32)
    encoded, clipped = DEFAULT.encode_counting(values, 1000)
    assert clipped == int(np.count_nonzero(np.abs(values) > 8))
    assert encoded.shape == (4_000_001,)
