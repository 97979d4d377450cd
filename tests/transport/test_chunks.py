"""Chunked streams: exact reassembly; corruption, truncation, reordering and size refused."""

from __future__ import annotations

import os

import pytest

from consortium.core.errors import WireFormatError
from consortium.transport.chunks import PayloadTooLarge, iter_chunks, reassemble
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


def _stream() -> list[pb.Chunk]:
    return list(iter_chunks(os.urandom(5000), "m", chunk_size=1000))


def test_empty_stream_means_no_message() -> None:
    assert reassemble(iter([]), max_bytes=10) is None


def test_corrupted_chunk_refused() -> None:
    chunks = _stream()
    bad = pb.Chunk()
    bad.CopyFrom(chunks[2])
    bad.data = bytes([bad.data[0] ^ 1]) + bad.data[1:]
    chunks[2] = bad
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
    first = pb.Chunk(message_id="m", total_size=10**15, index=0, data=b"", crc32=0)
    with pytest.raises(PayloadTooLarge, match="exceeds the limit"):
        reassemble(iter([first]), max_bytes=10**6)


def test_more_data_than_announced_refused() -> None:
    chunks = _stream()
    lying = pb.Chunk()
    lying.CopyFrom(chunks[0])
    lying.total_size = 1500
    chunks[0] = lying
    with pytest.raises(WireFormatError, match="more than the announced"):
        reassemble(iter(chunks), max_bytes=10**6)
