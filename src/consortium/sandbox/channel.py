"""Framed messages between a parent and its sandboxed child over one socket.

A frame is ``!IQ`` (header length, payload length), a JSON header (at most
:data:`MAX_HEADER_BYTES`) and a binary payload (at most the channel's
``max_payload``). Both lengths are checked before anything is allocated, so a
child that sends garbage costs its parent an error, not its memory.

A parent with a :class:`~consortium.sandbox.shared_blocks.Lender` sends the
parts of a payload that lie in its child's shared blocks by reference: the
header's ``_shm`` lists ``[position, block, offset, size]`` for each, ``_fds``
the blocks whose descriptors ride on the frame's first byte, and only the
other parts follow on the socket (the prefix's payload length counts those).
The child rebuilds the payload in a buffer of its own and answers at once with
a ``_released`` frame naming the blocks, which the parent's :meth:`Channel.recv`
consumes itself.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from consortium.core.buffers import POOL_MIN_BYTES, empty_buffer
from consortium.sandbox.let_go import LetGo
from consortium.sandbox.shared_blocks import (
    SHARE_MIN_BYTES,
    Block,
    Lender,
    Mappings,
    Reference,
    SharedBlockError,
)
from consortium.sandbox.socket_reader import ChannelClosed as ChannelClosed
from consortium.sandbox.socket_reader import ChannelError as ChannelError
from consortium.sandbox.socket_reader import SocketReader

_PREFIX = struct.Struct("!IQ")
#: the largest JSON header a frame may carry
MAX_HEADER_BYTES = 1 << 20

Buffer = bytes | bytearray | memoryview
#: the sandboxed child's argument saying that its channel carries shared memory
SHARED_FLAG = "--shared"
#: how a child reads a payload its parent sends in one block range (see Channel)
InPlace = Literal["read-only", "copy-on-write"]
#: header keys and the frame kind only the channel itself writes
_SHM, _FDS, _RELEASED = "_shm", "_fds", "_released"


@dataclass(frozen=True, slots=True)
class Frame:
    kind: str
    header: dict[str, Any] = field(default_factory=dict)
    payload: bytes | bytearray | memoryview = b""


class Channel:
    """One end of a socket carrying :class:`Frame` s; ``send`` is thread-safe,
    ``recv`` is for one reader at a time.

    With shared memory (``peer``: who is at the other end), each end has a
    :class:`~consortium.sandbox.shared_blocks.Lender` of blocks it writes. The
    parent's (``peer="child"``) are filled by the parent's own receiving code
    (:meth:`Lender.allocate`: a node's task straight from the network) and the
    child copies out what a frame names in them; the child's (``peer="parent"``)
    are filled by :meth:`send` itself, and the parent reads what a frame names in
    them where it lies, read-only, telling the child once it is done with it. A
    child reads a payload of the parent's (one block range) as ``in_place`` says:

    * ``"read-only"``: where it lies, as the parent reads the child's (the server's
      app process: a node's reply is folded from the block it was received into, and
      no copy of it waits in the app);
    * ``"copy-on-write"``: through a private mapping of the range, writable, whose
      pages are copied only where the child writes them (a node's app process: the
      app gets its task's arrays to use as its own, and the copy of them it used to
      make costs neither time nor memory);
    * None: copied out at once.

    Read in place, the block goes back to the parent once the payload and all built
    on it are gone: read-only, a thread of the child's (:meth:`_release_promptly`)
    tells the parent at once, and no later than the child's next frame
    (:mod:`~consortium.sandbox.let_go`: the server reads its app's frames all the
    time, and lets the next upload in on the app's ``consumed``, which must find
    the block free); copy-on-write, with the child's next frame (a node reads its
    app's frames only while a task runs: the app drops its task before it sends
    the reply, which then carries the release)."""

    def __init__(self, sock: socket.socket, *, max_payload: int,
                 peer: Literal["child", "parent"] | None = None,
                 in_place: InPlace | None = None) -> None:  # fmt: skip
        self.sock = sock
        self._reader = SocketReader(sock)
        self.max_payload = max_payload
        self.peer = peer
        #: (a child) how it reads a payload the parent sends in one block range
        self.in_place = in_place
        #: this end's shared blocks (None: no shared memory)
        self.lender = Lender() if peer is not None else None
        self._mappings = Mappings() if peer is not None else None
        #: blocks of the other side's this side is done with, told with its next frame
        #: (or at once, by a child reading read-only in place)
        self._done = LetGo()
        self._send_lock = threading.Lock()
        if peer == "parent" and in_place == "read-only":
            threading.Thread(target=self._release_promptly, daemon=True,
                             name="channel-release").start()  # fmt: skip

    @classmethod
    def from_fd(cls, fd: int, *, max_payload: int,
                peer: Literal["child", "parent"] | None = None,
                in_place: InPlace | None = None) -> Channel:  # fmt: skip
        return cls(socket.socket(fileno=fd), max_payload=max_payload, peer=peer,
                   in_place=in_place)  # fmt: skip

    def send(self, kind: str, header: dict[str, Any] | None = None,
             payload: Buffer | Sequence[Buffer] = b"") -> None:  # fmt: skip
        parts = [payload] if isinstance(payload, bytes | bytearray | memoryview) else payload
        size = sum(memoryview(p).nbytes for p in parts)
        if size > self.max_payload:
            raise ChannelError(f"a {kind!r} frame of {size} bytes exceeds {self.max_payload}")
        fields: dict[str, Any] = {**(header or {}), "kind": kind}
        done = self._done.for_frame()  # put back if this frame is refused before it leaves
        if done:
            fields[_RELEASED] = done
        try:
            first, parts, lent, blocks, held = self._encode(kind, fields, parts, size)
        except BaseException:
            self._done.put_back(done)  # they go with the next frame
            raise
        with self._send_lock:
            try:
                if blocks:  # the descriptors ride on the frame's first byte
                    assert self.lender is not None
                    self.lender.lend(blocks, lent)
                    fds = array.array("i", [b.fd for b in blocks])
                    sent = self.sock.sendmsg([first], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
                    self.sock.sendall(first[sent:])
                else:
                    self.sock.sendall(first)
                for part in parts:
                    # not even an empty send once the frame is out: a peer that has read
                    # it may have answered and closed, and b"" would then raise EPIPE
                    if memoryview(part).nbytes:
                        self.sock.sendall(part)
            except OSError as exc:
                # a frame cut short would leave the other side waiting for its rest, and the
                # next frame read as part of it: the channel is closed for both sides now
                with contextlib.suppress(OSError):
                    self.sock.shutdown(socket.SHUT_RDWR)
                raise ChannelClosed(f"the channel broke: {exc}") from exc
        del held

    def _encode(
        self, kind: str, fields: dict[str, Any], parts: Sequence[Buffer], size: int
    ) -> tuple[bytes, Sequence[Buffer], list[Buffer], list[Block], memoryview | None]:
        """The frame's first bytes, the parts that follow on the socket, the parts it
        names in blocks and those blocks, and a staged copy to keep alive until it is
        out."""
        refs: list[Reference | None] = []
        held = None  # a staged copy, alive until the frame is out
        if self.lender is not None and self.peer == "parent" and size >= SHARE_MIN_BYTES:
            # a payload that already lies in one of this side's blocks (a server app's
            # model, Arrays.encoded_empty) is read there; any other is copied into one
            lying = self.lender.references(parts) if len(parts) == 1 else [None]
            if lying[0] is not None:
                refs = lying
            else:
                staged = self.lender.stage(parts, size)
                if staged is not None:
                    refs, held = [staged[0]], staged[1]
                    parts = [held]
        elif self.lender is not None:
            refs = self.lender.references(parts)
        blocks = list({r.block.block_id: r.block for r in refs if r is not None}.values())
        lent = [p for p, r in zip(parts, refs, strict=True) if r is not None] if blocks else []
        if blocks:
            fields[_SHM] = [[r.position, r.block.block_id, r.offset, r.size]
                            for r in refs if r is not None]  # fmt: skip
            fields[_FDS] = [b.block_id for b in blocks]
            parts = [p for p, r in zip(parts, refs, strict=True) if r is None]
            size = sum(memoryview(p).nbytes for p in parts)
        # NaN and inf travel (a diverged loss is a metric to record); the reader checks
        # finiteness wherever a number must be finite (wire.round_from_json's seconds)
        head = json.dumps(fields).encode()
        if len(head) > MAX_HEADER_BYTES:
            raise ChannelError(f"a {kind!r} frame's header of {len(head)} bytes is too large")
        return _PREFIX.pack(len(head), size) + head, parts, lent, blocks, held

    def recv(self, timeout: float | None = None) -> Frame:
        """The next frame; ``timeout`` bounds the wait for its first byte (release frames
        the other side sends meanwhile do not extend it)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError("no frame came in time")
            frame = self._recv_frame(left)
            if frame.kind != _RELEASED:
                return frame

    def _recv_frame(self, timeout: float | None) -> Frame:
        fds: list[int] = []
        try:
            prefix = self._reader.prefix(_PREFIX.size, fds, timeout)
            head_len, size = _PREFIX.unpack(prefix)
            if head_len > MAX_HEADER_BYTES:
                raise ChannelError(f"a frame header of {head_len} bytes (limit {MAX_HEADER_BYTES})")
            if size > self.max_payload:
                raise ChannelError(f"a frame payload of {size} bytes (limit {self.max_payload})")
            try:
                header = json.loads(bytes(self._reader.read_into(bytearray(head_len))))
            except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
                raise ChannelError(f"a frame header is not JSON: {exc}") from exc
            if not isinstance(header, dict) or not isinstance(header.get("kind"), str):
                raise ChannelError("a frame header is not an object with a 'kind'")
            return self._frame(header, size, fds)
        finally:
            _close_all(fds)

    def _frame(self, header: dict[str, Any], size: int, fds: list[int]) -> Frame:
        """The frame whose ``header`` was read; its payload is read (or rebuilt) here."""
        kind = header.pop("kind")
        if _RELEASED in header:
            self._take_back(header.pop(_RELEASED))
        if kind == _RELEASED:
            return Frame(kind)
        refs, block_fds = header.pop(_SHM, None), header.pop(_FDS, None)
        if refs is None and block_fds is None:
            if fds:
                raise ChannelError(f"a {kind!r} frame carried a file descriptor")
            return Frame(kind, header, self._reader.read(size) if size else b"")
        return Frame(kind, header, self._shared_payload(kind, size, refs, block_fds, fds))

    def _take_back(self, released: Any) -> None:
        if self.lender is None:
            raise ChannelError("a release of shared blocks this side never lent")
        try:
            self.lender.returned(released)
        except SharedBlockError as exc:
            raise ChannelError(str(exc)) from exc

    def _shared_payload(self, kind: str, inline: int, refs: Any, block_fds: Any,
                        fds: list[int]) -> memoryview | bytearray:  # fmt: skip
        """The payload rebuilt from the socket's parts and the referenced blocks' ranges;
        the blocks are then released at once."""
        ranges, descriptors = _checked_refs(kind, refs, block_fds, fds)
        total = inline + sum(r[3] for r in ranges)
        if ranges[-1][0] + ranges[-1][3] > total:  # sorted and apart: then the gaps fit too
            raise ChannelError(f"a {kind!r} frame names shared memory past its payload's end")
        if self._mappings is None or total > self.max_payload:
            raise ChannelError(f"a {kind!r} frame in shared memory this side does not take")
        in_place = "read-only" if self.peer == "child" else self.in_place
        if in_place is not None and len(ranges) == 1 and inline == 0:
            # the other side's payload read where it lies; it gets the block back once
            # the payload and all built on it are gone (see the class's docstring)
            _, block_id, offset, length = ranges[0]
            try:
                if in_place == "read-only":
                    return self._mappings.view(block_id, descriptors[block_id], offset,
                                               length, self._done.put)  # fmt: skip
                private = self._mappings.private_view(block_id, descriptors[block_id],
                                                      offset, length, self._done.put)  # fmt: skip
            except SharedBlockError as exc:
                raise ChannelError(str(exc)) from exc
            if private is not None:
                return private
        out = empty_buffer(total) if total >= POOL_MIN_BYTES else memoryview(bytearray(total))
        position = 0
        try:
            for start, block_id, offset, length in ranges:
                if start > position:
                    self._reader.read_into(out[position:start])
                self._mappings.copy(block_id, descriptors[block_id], offset,
                                    out[start : start + length])  # fmt: skip
                position = start + length
            if position < total:
                self._reader.read_into(out[position:])
        except SharedBlockError as exc:
            raise ChannelError(str(exc)) from exc
        if self.peer == "parent":
            self._release(list(descriptors))  # at once: the parent may want it again soon
        else:
            for block_id in descriptors:
                self._done.put(block_id)
        return out

    def _release_promptly(self) -> None:
        """Tell the parent of each block this side let go of as soon as it does."""
        while (block_ids := self._done.next_batch()) is not None:
            try:
                self._release(block_ids)
            except ChannelClosed:
                return
            finally:
                self._done.sent()

    def _release(self, block_ids: list[int]) -> None:
        head = json.dumps({"kind": _RELEASED, _RELEASED: block_ids}).encode()
        with self._send_lock:
            try:
                self.sock.sendall(_PREFIX.pack(len(head), 0) + head)
            except OSError as exc:
                raise ChannelClosed(f"the channel broke: {exc}") from exc

    def close(self) -> None:
        self._done.close()  # ends the release thread, if any
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        if self._mappings is not None:
            self._mappings.close()
        if self.lender is not None:  # the child is gone: nothing will copy from them again
            self.lender.close()


def _checked_refs(
    kind: str, refs: Any, block_fds: Any, fds: list[int]
) -> tuple[list[tuple[int, int, int, int]], dict[int, int]]:
    """A frame's references (sorted, not overlapping) and each block's descriptor."""
    bad = ChannelError(f"a {kind!r} frame's shared-memory references are malformed")
    if not isinstance(block_fds, list) or not all(type(b) is int for b in block_fds):
        raise bad
    if not fds or len(block_fds) != len(fds) or len(set(block_fds)) != len(fds):
        raise bad
    descriptors = dict(zip(block_fds, fds, strict=True))
    if not isinstance(refs, list) or not refs:
        raise bad
    ranges: list[tuple[int, int, int, int]] = []
    end = 0
    for ref in refs:
        if not isinstance(ref, list) or len(ref) != 4 or not all(type(v) is int for v in ref):
            raise bad
        start, block_id, offset, length = ref
        if start < end or offset < 0 or length <= 0 or block_id not in descriptors:
            raise bad
        ranges.append((start, block_id, offset, length))
        end = start + length
    return ranges, descriptors


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    fds.clear()
