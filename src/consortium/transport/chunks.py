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

from collections.abc import Callable, Generator, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

from consortium.core.buffers import empty_buffer
from consortium.core.checksum import crc32
from consortium.core.errors import WireFormatError
from consortium.transport.receive_budget import ReceiveBudget
from consortium.transport.spill import SpillFile, SpillStore
from consortium.transport.stage_times import stage

#: Bytes per chunk. Large enough that per-chunk overhead is negligible,
#: small enough to stay well inside gRPC's per-message limit (see MAX_GRPC_MESSAGE).
CHUNK_SIZE = 4 * 1024 * 1024
#: The per-gRPC-message limit both ends configure (one chunk plus headers).
MAX_GRPC_MESSAGE = CHUNK_SIZE + 64 * 1024


class PayloadTooLarge(WireFormatError):
    """The announced payload is larger than this receiver accepts."""


class ChunkTooLarge(WireFormatError):
    """A chunk over the size its sender was told to send in
    (:data:`~consortium.transport.link_chunks.REPLY_CHUNK_HEADER`)."""


class Refused(WireFormatError):
    """A payload the receiver will not take for what it claims to be (a reply no task
    of its sender's asked for, or larger than its task allows).

    ``status`` is the name of the gRPC status to answer with (``FAILED_PRECONDITION``,
    ``INVALID_ARGUMENT``, ``RESOURCE_EXHAUSTED``); ``reason`` a
    short key the server counts refusals by (``unknown-task``, ``wrong-run``, ...).
    """

    def __init__(self, message: str, *, status: str, reason: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


Buffer = bytes | bytearray | memoryview

#: Judges a payload from its first bytes and its announced size, before the rest is
#: received: True to take it, False to see more bytes first; raises to refuse it.
Admit = Callable[[memoryview, int], bool]
#: Where a payload is received, from its first bytes and its size: a writable buffer of
#: that size, or None for an ordinary one (``core.buffers``). A node receives a task
#: straight into its app process's shared memory this way (``sandbox/shared_blocks.py``).
Allocate = Callable[[memoryview, int], "memoryview | None"]

#: Most bytes a Reassembler keeps while its ``admit`` has not decided yet.
STAGE_LIMIT = 64 * 1024 * 1024


@dataclass(slots=True)
class Chunk:
    """One ``consortium.v1.Chunk``; ``data`` may be a view (of the payload, or of the gRPC message).

    Encoded and decoded by :func:`encode_chunk`/:func:`decode_chunk` in the
    protobuf wire format, without the generated class: that one copies
    ``data`` three times to send a chunk and twice to read one.
    """

    message_id: str = ""
    total_size: int = 0
    index: int = 0
    data: Buffer = b""
    crc32: int = 0
    last: bool = False
    total_crc32: int = 0


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(raw: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(raw) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = raw[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


#: field number -> name of Chunk's varint fields (fleet.proto)
_VARINTS = {2: "total_size", 3: "index", 5: "crc32", 6: "last", 7: "total_crc32"}


def encode_chunk(chunk: Chunk) -> bytes:
    """The protobuf encoding of ``chunk``, with a single copy of its data."""
    with stage("send.copy", len(chunk.data)):
        return _encode_chunk(chunk)


def _encode_chunk(chunk: Chunk) -> bytes:
    head = bytearray()
    if chunk.message_id:
        ident = chunk.message_id.encode()
        head += b"\x0a" + _varint(len(ident)) + ident
    if chunk.total_size:
        head += b"\x10" + _varint(chunk.total_size)
    if chunk.index:
        head += b"\x18" + _varint(chunk.index)
    data = memoryview(chunk.data).cast("B")
    if len(data):
        head += b"\x22" + _varint(len(data))
    tail = bytearray()
    for tag, value in ((0x28, chunk.crc32), (0x30, int(chunk.last)), (0x38, chunk.total_crc32)):
        if value:
            tail += bytes((tag,)) + _varint(value)
    return b"".join((head, data, tail))


def decode_chunk(raw: bytes) -> Chunk:
    """Parse a Chunk; ``data`` is a view of ``raw``. Raises ValueError on bad bytes."""
    view = memoryview(raw)
    chunk = Chunk()
    pos, end = 0, len(raw)
    while pos < end:
        key, pos = _read_varint(raw, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(raw, pos)
            name = _VARINTS.get(number)
            if name == "last":
                chunk.last = bool(value)
            elif name is not None:
                setattr(chunk, name, value)
        elif wire == 2:
            size, pos = _read_varint(raw, pos)
            if pos + size > end:
                raise ValueError("a length-delimited field runs past the end")
            if number == 1:
                chunk.message_id = bytes(view[pos : pos + size]).decode()
            elif number == 4:
                chunk.data = view[pos : pos + size]
            pos += size
        elif wire == 5:
            pos += 4
        elif wire == 1:
            pos += 8
        else:
            raise ValueError(f"unsupported wire type {wire}")
    return chunk


class ChunkSize:
    """The size :func:`iter_chunks` cuts its next chunk to, which may change on the way:
    a download found crawling over a slow link goes on in smaller chunks."""

    __slots__ = ("nbytes",)

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes


def iter_chunks(
    payload: Buffer | Sequence[Buffer], message_id: str, *, chunk_size: int | ChunkSize = CHUNK_SIZE
) -> Generator[Chunk, None, None]:
    """Cut a payload (one buffer, or parts to send back to back) into chunks, each cut as
    it is asked for (to ``chunk_size`` as it is then)."""
    size = chunk_size if isinstance(chunk_size, ChunkSize) else ChunkSize(chunk_size)
    parts = [payload] if isinstance(payload, (bytes, bytearray, memoryview)) else list(payload)
    views = [view for p in parts if len(view := memoryview(p).cast("B"))]
    total = sum(len(v) for v in views)
    if not views:
        yield Chunk(message_id=message_id, total_size=0, index=0, data=memoryview(b""),
                    crc32=0, last=True, total_crc32=0)  # fmt: skip
        return
    crc = index = 0
    for number, view in enumerate(views):
        offset = 0
        while offset < len(view):
            piece = view[offset : offset + size.nbytes]
            offset += len(piece)
            with stage("send.crc32", len(piece)):
                crc = crc32(piece, crc)
            last = number == len(views) - 1 and offset == len(view)
            yield Chunk(
                message_id=message_id if index == 0 else "",
                total_size=total if index == 0 else 0,
                index=index,
                data=piece,
                crc32=crc,
                last=last,
                total_crc32=crc if last else 0,
            )
            index += 1


class Reassembler:
    """Rebuilds one payload from its chunks, refusing anything inconsistent.

    With ``admit`` (see :data:`Admit`), the first bytes are kept aside until it
    took the payload: nothing of the announced size is reserved or allocated
    before, so a payload it refuses costs what was received of it, no more.
    ``server_wait`` wraps its wait for the transfer budget (the stall watch does not
    count that time against the sender). With ``spill``, a payload that waited
    ``spill.after`` seconds for the budget (none with ``spill_at_once``: its sender
    is on a slow link) is received into a file instead, and read back into memory
    once complete and admitted; ``on_spill`` is called when it starts to be.
    """

    def __init__(
        self,
        max_bytes: int,
        budget: ReceiveBudget | None = None,
        admit: Admit | None = None,
        allocate: Allocate | None = None,
        server_wait: Callable[[], AbstractContextManager[object]] = nullcontext,
        spill: SpillStore | None = None,
        *,
        spill_at_once: bool = False,
        on_spill: Callable[[], None] | None = None,
    ) -> None:
        self.max_bytes = max_bytes
        self.budget = budget
        self.reserved = 0
        self.message_id = ""
        self._admit = admit
        self._allocate_in = allocate
        #: wraps a wait of the server's own (for the budget): the stall watch's pause
        self._server_wait = server_wait
        #: where a reply goes that waited too long for the budget (see transport/spill.py)
        self._spill = spill
        self._spill_at_once = spill_at_once
        self._on_spill = on_spill
        self._spilled: SpillFile | None = None
        self._head = b""  # a spilled payload's first bytes, for ``allocate`` when it lands
        self._staged: bytearray | None = None
        self._buffer: memoryview | None = None
        self._total = 0
        self._offset = 0
        self._index = 0
        self._crc = 0
        self._done = False

    def feed(self, chunk: Chunk) -> None:
        if self._done:
            raise WireFormatError("chunk received after the last one")
        if chunk.index != self._index:
            raise WireFormatError(f"chunk {chunk.index} arrived where {self._index} was expected")
        if self._index == 0:
            total = int(chunk.total_size)
            if total > self.max_bytes:
                raise PayloadTooLarge(
                    f"message of {total} bytes exceeds the limit of {self.max_bytes} bytes"
                )
            self.message_id = chunk.message_id
            self._total = total
            if self._admit is None:
                self._allocate(memoryview(chunk.data))
            else:
                self._staged = bytearray()
        data = chunk.data
        end = self._offset + len(data)
        if end > self._total:
            raise WireFormatError(f"chunks carry more than the announced {self._total} bytes")
        with stage("recv.crc32", len(data)):
            self._crc = crc32(data, self._crc)
        if self._crc != chunk.crc32:
            raise WireFormatError(f"checksum mismatch in chunk {chunk.index}: data corrupted")
        self._store(data, chunk.last)
        self._offset = end
        self._index += 1
        if chunk.last:
            if self._offset != self._total:
                raise WireFormatError(
                    f"stream ended after {self._offset} of {self._total} announced bytes"
                )
            if chunk.total_crc32 != self._crc:
                raise WireFormatError("checksum of the whole message does not match")
            self._done = True

    def _store(self, data: Buffer, last: bool) -> None:
        """Write ``data`` at the current offset, or keep it aside until admitted."""
        if self._buffer is not None:
            with stage("recv.copy", len(data)):
                self._buffer[self._offset : self._offset + len(data)] = data
            return
        if self._spilled is not None:
            with stage("recv.spill", len(data)):
                self._spilled.write(data)
            return
        staged = self._staged
        assert staged is not None and self._admit is not None
        staged += data
        if not self._admit(memoryview(staged), self._total) and not last:
            if len(staged) > STAGE_LIMIT:
                raise WireFormatError(f"the first {len(staged)} bytes were not enough to judge")
            return
        self._staged = None
        self._allocate(memoryview(staged))
        if self._spilled is not None:
            self._spilled.write(staged)
            return
        assert self._buffer is not None
        self._buffer[: len(staged)] = staged

    def _allocate(self, head: memoryview, *, may_spill: bool = True) -> None:
        """Reserve the announced size in the budget and allocate it; or, once it waited
        long enough for the budget and the spill folder has room, a file to receive into."""
        if self.budget is not None:
            spill = self._spill if may_spill else None
            wait = None if spill is None else 0.0 if self._spill_at_once else spill.after
            with self._server_wait():
                admitted = self.budget.acquire(self._total, timeout=wait)
            if not admitted:  # only with a timeout, so with a spill store
                assert spill is not None
                why = (
                    "the transfer budget is full and its node's link is slow"
                    if self._spill_at_once
                    else f"it waited {spill.after:g} s for the transfer budget"
                )
                self._spilled = spill.open(self._total, why)
                if self._spilled is not None:
                    self._head = bytes(head[:CHUNK_SIZE])
                    if self._on_spill is not None:
                        self._on_spill()
                    return
                with self._server_wait():
                    self.budget.acquire(self._total)
            self.reserved = self._total
        chosen = self._allocate_in(head, self._total) if self._allocate_in else None
        self._buffer = chosen if chosen is not None else empty_buffer(self._total)

    def _land(self, spilled: SpillFile) -> None:
        """A spilled payload, complete: wait for the budget, then read it into memory."""
        with self._server_wait():
            self._spilled = None
            try:
                self._allocate(memoryview(self._head), may_spill=False)
                assert self._buffer is not None
                with stage("recv.unspill", spilled.written):
                    spilled.read_into(self._buffer)
            finally:
                spilled.close()

    def close(self) -> None:
        """Give the budget back and let go of the payload (which lives on while the
        decoded message uses it)."""
        if self.budget is not None and self.reserved:
            self.budget.release(self.reserved)
            self.reserved = 0
        self._buffer = None
        self._staged = None
        if self._spilled is not None:
            self._spilled.close()
            self._spilled = None

    def consumed(self) -> None:
        """The server is done with the message: its bytes count in the budget until
        its memory is freed (see :meth:`ReceiveBudget.consumed`)."""
        buffer, self._buffer = self._buffer, None
        if self.budget is not None and self.reserved:
            owner = buffer.obj if buffer is not None else None
            if owner is not None:
                self.budget.consumed(self.reserved, owner)
            else:
                self.budget.release(self.reserved)
            self.reserved = 0

    def result(self) -> memoryview:
        """The payload; raises if the stream ended before its last chunk."""
        if self._done and self._spilled is not None:
            self._land(self._spilled)
        if not self._done or self._buffer is None:
            got = self._offset
            expected = self._total if self._index else "?"
            raise WireFormatError(f"truncated stream: {got} of {expected} bytes, no last chunk")
        return self._buffer


def reassemble(chunks: Iterable[Chunk], max_bytes: int) -> tuple[str, memoryview] | None:
    """Consume a chunk stream; None if it was empty (e.g. a long-poll with no task)."""
    rebuilder = Reassembler(max_bytes)
    seen = False
    for chunk in chunks:
        seen = True
        rebuilder.feed(chunk)
    if not seen:
        return None
    return rebuilder.message_id, rebuilder.result()
