"""Arrays wire format: exact round-trips, zero-copy decoding, bad input refused."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from consortium.core.arrays import ALIGN, Arrays
from consortium.core.errors import WireFormatError

NUMERIC_DTYPES = [
    np.dtype(t).newbyteorder(order)
    for t in ("i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16")
    for order in ("<", ">")
] + [np.dtype("?")]

shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)


@st.composite
def arrays_records(draw: st.DrawFn) -> Arrays:
    n = draw(st.integers(min_value=0, max_value=5))
    names = draw(st.lists(st.text(min_size=1, max_size=12), min_size=n, max_size=n, unique=True))
    out = Arrays()
    for name in names:
        dtype = draw(st.sampled_from(NUMERIC_DTYPES))
        out[name] = draw(hnp.arrays(dtype=dtype, shape=shapes))
    return out


@settings(max_examples=300, deadline=None)
@given(arrays_records())
def test_round_trip_is_bit_exact(original: Arrays) -> None:
    decoded = Arrays.from_bytes(original.to_bytes())
    assert list(decoded) == list(original)
    for name, value in original.items():
        got = decoded[name]
        assert got.dtype == value.dtype
        assert got.shape == value.shape
        assert got.tobytes() == value.tobytes()  # NaN payloads and -0.0 included
    assert decoded.equals(original)


@pytest.mark.parametrize("dtype", NUMERIC_DTYPES, ids=str)
def test_every_numeric_dtype_zero_d_and_empty(dtype: np.dtype) -> None:
    original = Arrays(
        {
            "scalar": np.array(7, dtype=dtype),
            "empty": np.zeros((0, 3), dtype=dtype),
            "matrix": np.arange(12).astype(dtype).reshape(3, 4),
        }
    )
    decoded = Arrays.from_bytes(original.to_bytes())
    assert decoded["scalar"].shape == ()
    assert decoded["empty"].shape == (0, 3)
    assert decoded.equals(original)


def test_decoding_does_not_copy() -> None:
    original = Arrays({"a": np.arange(1000, dtype="f4"), "b": np.ones((7, 9), dtype="f8")})
    wire = bytearray(original.to_bytes())
    decoded = Arrays.from_bytes(wire)
    backing = np.frombuffer(wire, dtype=np.uint8)
    for value in decoded.values():
        assert np.shares_memory(value, backing)
        assert value.ctypes.data % ALIGN == np.frombuffer(wire, np.uint8).ctypes.data % ALIGN
    # a write through the buffer shows up in the decoded array: the same memory
    offset = decoded["a"].ctypes.data - backing.ctypes.data
    wire[offset : offset + 4] = np.float32(42.0).tobytes()
    assert decoded["a"][0] == 42.0


def test_non_contiguous_input_is_encoded_by_value() -> None:
    base = np.arange(24, dtype="i4").reshape(4, 6)
    original = Arrays({"t": base.T, "s": base[:, ::2]})
    decoded = Arrays.from_bytes(original.to_bytes())
    np.testing.assert_array_equal(decoded["t"], base.T)
    np.testing.assert_array_equal(decoded["s"], base[:, ::2])


def test_object_dtype_is_refused() -> None:
    with pytest.raises(WireFormatError, match="dtype"):
        Arrays({"o": np.array([object()], dtype=object)}).to_bytes()


def _wire() -> bytes:
    return Arrays({"w": np.arange(10, dtype="f8")}).to_bytes()


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b[:3],
        lambda b: b"XXXX" + b[4:],
        lambda b: b[:40],
        lambda b: b[:-8],
        lambda b: b[:8] + b"{" * (len(b) - 8),
    ],
    ids=["short", "magic", "truncated-header", "truncated-data", "garbage-header"],
)
def test_corrupt_payloads_raise_wire_format_error(mutate) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(WireFormatError):
        Arrays.from_bytes(mutate(_wire()))


def test_header_lies_are_refused() -> None:
    import json
    import struct

    good = _wire()
    (hlen,) = struct.unpack_from("<I", good, 4)
    header = json.loads(good[8 : 8 + hlen])
    for bad_entry in (
        ["w", "|O", [10], 0, 80],  # object dtype
        ["w", "<f8", [11], 0, 80],  # shape disagrees with byte count
        ["w", "<f8", [-10], 0, 80],  # negative dimension
        ["w", "<f8", [10], 10**9, 80],  # offset past the end
    ):
        header["a"] = [bad_entry]
        head = json.dumps(header).encode()
        payload = b"CSA1" + struct.pack("<I", len(head)) + head + bytes(4096)
        with pytest.raises(WireFormatError):
            Arrays.from_bytes(payload)


def test_size_limit() -> None:
    with pytest.raises(WireFormatError, match="exceed"):
        Arrays.from_bytes(_wire(), max_bytes=16)


def test_decoded_arrays_are_sent_as_the_bytes_they_came_in_until_changed() -> None:
    original = Arrays({"w": np.arange(10, dtype=np.float32), "b": np.ones((3, 4))})
    encoded = original.to_bytes()
    decoded = Arrays.from_bytes(encoded)
    (part,) = decoded.wire_parts()  # one piece: the bytes received, not a re-encoding
    assert bytes(part) == encoded
    decoded["b"] = np.zeros(2)
    assert b"".join(bytes(p) for p in decoded.wire_parts()) == decoded.to_bytes()
    assert len(decoded.wire_parts()) > 1
    del decoded["b"]
    assert b"".join(bytes(p) for p in decoded.wire_parts()) == decoded.to_bytes()


def test_an_encoding_laid_out_otherwise_is_sent_as_laid_out_by_to_bytes() -> None:
    """Trailing bytes (a valid but not canonical layout) are not sent on: the arrays are
    encoded afresh."""
    original = Arrays({"w": np.arange(10, dtype=np.float32)})
    decoded = Arrays.from_bytes(original.to_bytes() + b"\x00" * 64)
    assert b"".join(bytes(p) for p in decoded.wire_parts()) == original.to_bytes()


def test_arrays_encoded_in_place_are_their_encoding_and_leak_no_old_bytes() -> None:
    """``encoded_empty`` lays the arrays out as ``to_bytes`` does, in a buffer that may
    hold old bytes (a reused block): the header and the padding between arrays are
    written, so what is sent is exactly the encoding."""
    from consortium.core import buffers

    buffers.send_buffers_from(lambda n: memoryview(bytearray(b"\xff" * n)))
    try:
        specs: list[tuple[str, np.dtype[Any], tuple[int, ...]]] = [
            ("w", np.dtype("f4"), (3, 5)),
            ("b", np.dtype("f8"), (3,)),
            ("q", np.dtype("i1"), (3,)),
        ]
        encoded = Arrays.encoded_empty(specs)
    finally:
        buffers.send_buffers_from(None)
    encoded["w"][...] = 1.5  # filled in place (a fold's sums)
    encoded["b"][...] = -2.0
    encoded["q"][...] = 7
    plain = Arrays({name: np.array(encoded[name]) for name, _, _ in specs})
    (part,) = encoded.wire_parts()
    assert bytes(part) == plain.to_bytes()
    assert Arrays.from_bytes(part).equals(plain)
