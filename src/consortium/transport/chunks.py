"""Messages as streams of chunks: no size ceiling, integrity checked as they arrive.

A payload (an encoded :class:`~consortium.core.message.Message`) is cut into
chunks of ``chunk_size`` bytes. Each chunk carries its index and the running
CRC-32 of the payload up to and including it, so one pass over the data both
transfers and checks it; the first chunk announces the total size, which the
receiver checks against its limit before allocating anything. TLS already
authenticates every byte on the wire; the CRC catches truncation, reordering
and corruption between the two ends of the application.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator, Sequence

from consortium.core.errors import WireFormatError
from consortium.transport.proto import fleet_pb2 as pb

#: Bytes per chunk. Large enough that per-chunk overhead is negligible,
#: small enough to stay well inside gRPC's per-message limit (see MAX_GRPC_MESSAGE).
CHUNK_SIZE = 4 * 1024 * 1024
#: The per-gRPC-message limit both ends configure (one chunk plus headers).
MAX_GRPC_MESSAGE = CHUNK_SIZE + 64 * 1024


class PayloadTooLarge(WireFormatError):
    """The announced payload is larger than this receiver accepts."""


Buffer = bytes | bytearray | memoryview


def iter_chunks(
    payload: Buffer | Sequence[Buffer], message_id: str, *, chunk_size: int = CHUNK_SIZE
) -> Iterator[pb.Chunk]:
    """Cut a payload (one buffer, or parts to send back to back) into chunks."""
    parts = [payload] if isinstance(payload, (bytes, bytearray, memoryview)) else list(payload)
    views = [memoryview(p).cast("B") for p in parts]
    total = sum(len(v) for v in views)
    pieces = [v[i : i + chunk_size] for v in views for i in range(0, len(v), chunk_size)]
    if not pieces:
        pieces = [memoryview(b"")]
    crc = 0
    for index, piece in enumerate(pieces):
        crc = zlib.crc32(piece, crc)
        last = index == len(pieces) - 1
        yield pb.Chunk(
            message_id=message_id if index == 0 else "",
            total_size=total if index == 0 else 0,
            index=index,
            data=bytes(piece),
            crc32=crc,
            last=last,
            total_crc32=crc if last else 0,
        )


class Reassembler:
    """Rebuilds one payload from its chunks, refusing anything inconsistent."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.message_id = ""
        self._buffer: bytearray | None = None
        self._offset = 0
        self._index = 0
        self._crc = 0
        self._done = False

    def feed(self, chunk: pb.Chunk) -> None:
        if self._done:
            raise WireFormatError("chunk received after the last one")
        if chunk.index != self._index:
            raise WireFormatError(f"chunk {chunk.index} arrived where {self._index} was expected")
        if self._buffer is None:
            total = int(chunk.total_size)
            if total > self.max_bytes:
                raise PayloadTooLarge(
                    f"message of {total} bytes exceeds the limit of {self.max_bytes} bytes"
                )
            self.message_id = chunk.message_id
            self._buffer = bytearray(total)
        data = chunk.data
        end = self._offset + len(data)
        if end > len(self._buffer):
            raise WireFormatError(f"chunks carry more than the announced {len(self._buffer)} bytes")
        self._buffer[self._offset : end] = data
        self._crc = zlib.crc32(data, self._crc)
        if self._crc != chunk.crc32:
            raise WireFormatError(f"checksum mismatch in chunk {chunk.index}: data corrupted")
        self._offset = end
        self._index += 1
        if chunk.last:
            if self._offset != len(self._buffer):
                raise WireFormatError(
                    f"stream ended after {self._offset} of {len(self._buffer)} announced bytes"
                )
            if chunk.total_crc32 != self._crc:
                raise WireFormatError("checksum of the whole message does not match")
            self._done = True

    def result(self) -> bytearray:
        """The payload; raises if the stream ended before its last chunk."""
        if not self._done or self._buffer is None:
            got = self._offset
            expected = len(self._buffer) if self._buffer is not None else "?"
            raise WireFormatError(f"truncated stream: {got} of {expected} bytes, no last chunk")
        return self._buffer


def reassemble(chunks: Iterable[pb.Chunk], max_bytes: int) -> tuple[str, bytearray] | None:
    """Consume a chunk stream; None if it was empty (e.g. a long-poll with no task)."""
    rebuilder = Reassembler(max_bytes)
    seen = False
    for chunk in chunks:
        seen = True
        rebuilder.feed(chunk)
    if not seen:
        return None
    return rebuilder.message_id, rebuilder.result()
