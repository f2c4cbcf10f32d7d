"""The weights codec: flatten/unflatten round trip, shape checks, Flower records, hashes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedlab import codec
from fedlab.errors import ProtocolError

shapes = st.lists(hnp.array_shapes(min_dims=1, max_dims=3, max_side=5), min_size=1, max_size=5)


@settings(deadline=None)
@given(shapes, st.integers(0, 2**31))
def test_round_trip(shape_list, seed):
    rng = np.random.default_rng(seed)
    weights = [rng.standard_normal(s).astype(np.float32) for s in shape_list]
    flat = codec.flatten(weights)
    assert flat.dtype == np.float32 and flat.size == codec.num_params(codec.shapes_of(weights))
    back = codec.unflatten(flat, codec.shapes_of(weights))
    for a, b in zip(weights, back, strict=True):
        np.testing.assert_array_equal(a, b)
    rec = codec.to_record(flat)
    np.testing.assert_array_equal(codec.from_record(rec, length=flat.size, dtype=np.float32), flat)


def test_wrong_length_dtype_and_keys_are_refused():
    flat = np.zeros(10, dtype=np.float32)
    with pytest.raises(ProtocolError, match="needs 12"):
        codec.unflatten(flat, ((3, 4),))
    rec = codec.to_record(flat)
    with pytest.raises(ProtocolError, match=r"shape \(10,\), expected \(11,\)"):
        codec.from_record(rec, length=11, dtype=np.float32)
    with pytest.raises(ProtocolError, match="dtype float32, expected float64"):
        codec.from_record(rec, length=10, dtype=np.float64)
    from flwr.app import Array, ArrayRecord

    two = ArrayRecord({"v": Array(flat), "w": Array(flat)})
    with pytest.raises(ProtocolError, match="one array"):
        codec.from_record(two, length=10, dtype=np.float32)


def test_hash_depends_on_values_and_shapes():
    a = [np.arange(6, dtype=np.float32).reshape(2, 3)]
    b = [np.arange(6, dtype=np.float32).reshape(3, 2)]
    c = [np.arange(6, dtype=np.float32).reshape(2, 3) + 1]
    assert codec.weights_hash(a) == codec.weights_hash([x.copy() for x in a])
    assert len({codec.weights_hash(a), codec.weights_hash(b), codec.weights_hash(c)}) == 3
