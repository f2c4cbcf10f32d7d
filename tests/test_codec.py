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


dtypes = st.sampled_from([np.float32, np.float64, np.float16, np.uint32, np.int64, np.uint8,
                          np.dtype(">f4"), np.bool_])


@settings(deadline=None, max_examples=60)
@given(dtypes, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6), st.booleans(),
       st.integers(0, 2**31))
def test_arrays_match_flowers_own_encoding_both_ways(dtype, shape, fortran, seed):
    """``to_array`` writes the bytes ``flwr.app.Array(ndarray)`` writes, and ``array_of``
    reads back what Flower's own ``Array.numpy()`` reads, for any dtype, shape and order."""
    from flwr.app import Array

    raw = np.random.default_rng(seed).integers(0, 255, size=shape, dtype=np.uint8)
    a = raw.astype(dtype)
    if fortran:
        a = np.asfortranarray(a)
    ours, theirs = codec.to_array(a), Array(a)
    if not fortran or a.ndim < 2:
        assert ours.data == theirs.data
    for arr in (ours, theirs):
        got = codec.array_of(arr)
        assert got.dtype == a.dtype and got.shape == a.shape
        np.testing.assert_array_equal(got, a)
        np.testing.assert_array_equal(arr.numpy(), a)
    assert not codec.array_of(theirs).flags.writeable  # a view of the message, never altered


def test_array_of_refuses_what_numpy_load_would_not_be_asked_to_read():
    from flwr.app import Array

    good = codec.to_array(np.arange(6, dtype=np.float32))
    with pytest.raises(ProtocolError, match="metadata"):  # bytes and metadata disagree
        codec.array_of(Array(dtype="float64", shape=(6,), stype=good.stype, data=good.data))
    with pytest.raises(ProtocolError, match="metadata"):
        codec.array_of(Array(dtype="float32", shape=(3, 2), stype=good.stype, data=good.data))
    with pytest.raises(ProtocolError, match="bytes of values"):  # cut short / padded
        codec.array_of(Array(dtype="float32", shape=(6,), stype=good.stype, data=good.data[:-4]))
    with pytest.raises(ProtocolError, match="bytes of values"):
        codec.array_of(Array(dtype="float32", shape=(6,), stype=good.stype,
                             data=good.data + b"\0" * 4))
    with pytest.raises(ProtocolError, match="serialised as"):
        codec.array_of(Array(dtype="float32", shape=(6,), stype="torch", data=good.data))
    with pytest.raises(ProtocolError, match="not a valid .npy"):
        codec.array_of(Array(dtype="float32", shape=(6,), stype=good.stype, data=b"PK\3\4" * 9))
    # A pickled object array: the header declares dtype 'O'; never unpickled.
    import io

    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ProtocolError, match="Python objects"):
        codec.array_of(Array(dtype="object", shape=(1,), stype=good.stype, data=buf.getvalue()))


def _npy(header: bytes, values: bytes = b"") -> bytes:
    pad = b" " * ((64 - (10 + len(header) + 1) % 64) % 64) + b"\n"
    header += pad
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + values


def test_array_of_refuses_zero_byte_values():
    from flwr.app import Array

    data = _npy(b"{'descr': '|V0', 'fortran_order': False, 'shape': (3,), }")
    with pytest.raises(ProtocolError, match="zero bytes"):
        codec.array_of(Array(dtype="|V0", shape=(3,), stype=codec.NPY_STYPE, data=data))


@settings(deadline=None, max_examples=300)
@given(st.binary(max_size=120), st.sampled_from([b"", b"\x01\x00", b"\x02\x00", b"\x03\x00"]))
def test_array_of_gives_an_array_or_a_protocol_error_for_any_bytes(tail, version):
    """Whatever bytes a message carries, reading them never crashes another way."""
    from flwr.app import Array

    try:
        out = codec.array_of(Array(dtype="float32", shape=(3,), stype=codec.NPY_STYPE,
                                   data=b"\x93NUMPY" + version + tail))
    except ProtocolError:
        return
    assert out.dtype == np.float32 and out.shape == (3,)
