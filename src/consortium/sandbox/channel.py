"""Framed messages between a parent and its sandboxed child over one socket.

A frame is ``!IQ`` (header length, payload length), a JSON header (at most
:data:`MAX_HEADER_BYTES`) and a binary payload (at most the channel's
``max_payload``). Both lengths are checked before anything is allocated, so a
child that sends garbage costs its parent an error, not its memory.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from consortium.core.buffers import POOL_MIN_BYTES, empty_buffer
from consortium.core.errors import ConsortiumError

_PREFIX = struct.Struct("!IQ")
#: the largest JSON header a frame may carry
MAX_HEADER_BYTES = 1 << 20

Buffer = bytes | bytearray | memoryview


class ChannelError(ConsortiumError):
    """The other side sent a malformed frame, or the channel broke."""


class ChannelClosed(ChannelError):
    """The other side closed the channel (its process ended)."""


@dataclass(frozen=True, slots=True)
class Frame:
    kind: str
    header: dict[str, Any] = field(default_factory=dict)
    payload: bytes | bytearray | memoryview = b""


class Channel:
    """One end of a socket carrying :class:`Frame` s; ``send`` is thread-safe,
    ``recv`` is for one reader at a time."""

    def __init__(self, sock: socket.socket, *, max_payload: int) -> None:
        self.sock = sock
        self.max_payload = max_payload
        self._send_lock = threading.Lock()

    @classmethod
    def from_fd(cls, fd: int, *, max_payload: int) -> Channel:
        return cls(socket.socket(fileno=fd), max_payload=max_payload)

    def send(self, kind: str, header: dict[str, Any] | None = None,
             payload: Buffer | Sequence[Buffer] = b"") -> None:  # fmt: skip
        parts = [payload] if isinstance(payload, bytes | bytearray | memoryview) else payload
        size = sum(memoryview(p).nbytes for p in parts)
        if size > self.max_payload:
            raise ChannelError(f"a {kind!r} frame of {size} bytes exceeds {self.max_payload}")
        # NaN and inf travel (a diverged loss is a metric to record); the reader checks
        # finiteness wherever a number must be finite (wire.round_from_json's seconds)
        head = json.dumps({**(header or {}), "kind": kind}).encode()
        if len(head) > MAX_HEADER_BYTES:
            raise ChannelError(f"a {kind!r} frame's header of {len(head)} bytes is too large")
        with self._send_lock:
            try:
                self.sock.sendall(_PREFIX.pack(len(head), size) + head)
                for part in parts:
                    # not even an empty send once the frame is out: a peer that has read
                    # it may have answered and closed, and b"" would then raise EPIPE
                    if memoryview(part).nbytes:
                        self.sock.sendall(part)
            except OSError as exc:
                raise ChannelClosed(f"the channel broke: {exc}") from exc

    def recv(self, timeout: float | None = None) -> Frame:
        """The next frame; ``timeout`` bounds the wait for its first byte."""
        self.sock.settimeout(timeout)
        try:
            prefix = self._read(_PREFIX.size, first=True)
        finally:
            self.sock.settimeout(None)
        head_len, size = _PREFIX.unpack(prefix)
        if head_len > MAX_HEADER_BYTES:
            raise ChannelError(f"a frame header of {head_len} bytes (limit {MAX_HEADER_BYTES})")
        if size > self.max_payload:
            raise ChannelError(f"a frame payload of {size} bytes (limit {self.max_payload})")
        try:
            header = json.loads(bytes(self._read(head_len)))  # at most MAX_HEADER_BYTES
        except ValueError as exc:
            raise ChannelError(f"a frame header is not JSON: {exc}") from exc
        if not isinstance(header, dict) or not isinstance(header.get("kind"), str):
            raise ChannelError("a frame header is not an object with a 'kind'")
        kind = header.pop("kind")
        return Frame(kind, header, self._read(size) if size else b"")

    def _read(self, size: int, *, first: bool = False) -> bytearray | memoryview:
        # a model-sized payload goes into a reused buffer: fresh memory costs ~3x more to
        # fill than the copy itself (a 400 MB frame: ~1.1 s into a new bytearray, ~0.35 s
        # into a pooled buffer; benchmarks/transport.py --stages)
        buf: bytearray | memoryview
        if size >= POOL_MIN_BYTES:
            buf = view = empty_buffer(size)
        else:
            buf = bytearray(size)
            view = memoryview(buf)
        got = 0
        while got < size:
            try:
                n = self.sock.recv_into(view[got:])
            except TimeoutError:
                if first and got == 0:
                    raise
                raise ChannelError("the other side stopped in the middle of a frame") from None
            except OSError as exc:
                raise ChannelClosed(f"the channel broke: {exc}") from exc
            if n == 0:
                raise ChannelClosed("the other side closed the channel")
            got += n
            if first:
                self.sock.settimeout(None)  # a frame under way is read to its end
        return buf

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
