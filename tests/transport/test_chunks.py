"""Chunked streams: exact reassembly; corruption, truncation, reordering and size refused."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from consortium.core.errors import WireFormatError
from consortium.transport.chunks import (
    Chunk,
    PayloadTooLarge,
    decode_chunk,
    encode_chunk,
    iter_chunks,
    reassemble,
)
from consortium.transport.proto import fleet_pb2 as pb


@pytest.mark.parametrize("size", [0, 1, 999, 1000, 1001, 12_345])
def test_round_trip(size: int) -> None:
    payload = os.urandom(size)
    chunks = list(iter_chunks(payload, "m1", chunk_size=1000))
    assert len(chunks) == max(1, -(-size // 1000))
    result = reassemble(iter(chunks), max_bytes=10**6)
    assert result is not None and result == ("m1", bytearray(payload))


def test_parts_are_streamed_back_to_back() -> None:
    parts = [os.urandom(10), os.urandom(2500), b"", os.urandom(7)]
    result = reassemble(iter_chunks(parts, "m", chunk_size=1000), max_bytes=10**6)
    assert result is not None and bytes(result[1]) == b"".join(parts)


def _stream() -> list[Chunk]:
    return list(iter_chunks(os.urandom(5000), "m", chunk_size=1000))


def test_empty_stream_means_no_message() -> None:
    assert reassemble(iter([]), max_bytes=10) is None


def test_corrupted_chunk_refused() -> None:
    chunks = _stream()
    data = bytes(chunks[2].data)
    chunks[2] = replace(chunks[2], data=bytes([data[0] ^ 1]) + data[1:])
    with pytest.raises(WireFormatError, match="checksum mismatch in chunk 2"):
        reassemble(iter(chunks), max_bytes=10**6)


def test_truncated_stream_refused() -> None:
    with pytest.raises(WireFormatError, match="truncated"):
        reassemble(iter(_stream()[:-1]), max_bytes=10**6)


def test_reordered_stream_refused() -> None:
    chunks = _stream()
    chunks[1], chunks[2] = chunks[2], chunks[1]
    with pytest.raises(WireFormatError, match="expected"):
        reassemble(iter(chunks), max_bytes=10**6)


def test_oversized_announcement_refused_before_allocating() -> None:
    first = Chunk(message_id="m", total_size=10**15, index=0, data=b"", crc32=0)
    with pytest.raises(PayloadTooLarge, match="exceeds the limit"):
        reassemble(iter([first]), max_bytes=10**6)


def test_more_data_than_announced_refused() -> None:
    chunks = _stream()
    chunks[0] = replace(chunks[0], total_size=1500)
    with pytest.raises(WireFormatError, match="more than the announced"):
        reassemble(iter(chunks), max_bytes=10**6)


def test_chunk_codec_is_the_protobuf_wire_format() -> None:
    for chunk in [*iter_chunks(os.urandom(2500), "m1", chunk_size=1000), Chunk()]:
        ours = encode_chunk(chunk)
        theirs = pb.Chunk(
            message_id=chunk.message_id,
            total_size=chunk.total_size,
            index=chunk.index,
            data=bytes(chunk.data),
            crc32=chunk.crc32,
            last=chunk.last,
            total_crc32=chunk.total_crc32,
        )
        assert ours == theirs.SerializeToString()
        back = decode_chunk(ours)
        assert replace(back, data=bytes(back.data)) == replace(chunk, data=bytes(chunk.data))
        parsed = pb.Chunk.FromString(ours)
        assert (parsed.index, parsed.crc32, parsed.last) == (chunk.index, chunk.crc32, chunk.last)


@pytest.mark.parametrize(
    "raw", [b"\x22\x05ab", b"\x10", b"\x0f", b"\x22\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"]
)
def test_bad_chunk_bytes_refused(raw: bytes) -> None:
    with pytest.raises(ValueError):
        decode_chunk(raw)


def test_the_fast_crc_is_zlibs_crc32() -> None:
    """Peers may fall back to zlib: the accelerated CRC must be the same checksum."""
    import zlib

    import numpy as np

    from consortium.transport import chunks

    data = np.random.default_rng(3).integers(0, 256, 5_000_003, dtype=np.uint8)
    view = memoryview(data)
    for start in (0, 1, 0xDEADBEEF):
        assert chunks.crc32(view, start) == zlib.crc32(view, start)
        assert chunks.crc32(view[7:1001], start) == zlib.crc32(bytes(view[7:1001]), start)
