"""Reading a channel's frames off its socket, with a bound on how long a frame may stall.

A :class:`~consortium.sandbox.channel.Channel` sends from any thread while one
thread reads. Both use the same socket, which therefore stays blocking and
without a timeout, always: Python's ``settimeout`` makes the descriptor
non-blocking for every thread, and a send under way when the reader set it
could fail with EAGAIN in the middle of a frame (the frame cut short, the other
side waiting for its rest). The reader waits with ``poll`` instead, and reads
only once there are bytes (or the end) to read.
"""

from __future__ import annotations

import array
import math
import select
import socket

from consortium.core.buffers import POOL_MIN_BYTES, empty_buffer
from consortium.core.errors import ConsortiumError
from consortium.sandbox.shared_blocks import MAX_BLOCKS

#: once a frame has begun, the longest the other side may leave it without a byte
FRAME_STALL_SECONDS = 60.0
#: room for the descriptors of every block a frame may name
_FD_SPACE = socket.CMSG_SPACE(MAX_BLOCKS * array.array("i").itemsize)


class ChannelError(ConsortiumError):
    """The other side sent a malformed frame, or the channel broke."""


class ChannelClosed(ChannelError):
    """The other side closed the channel (its process ended)."""


class SocketReader:
    """The reading side of a channel's socket (one reader thread at a time)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.settimeout(None)  # and never changed: see the module's docstring
        self._poller = select.poll()
        self._poller.register(sock, select.POLLIN)

    def prefix(self, size: int, fds: list[int], timeout: float | None) -> bytes:
        """A frame's first ``size`` bytes, the first of them within ``timeout`` seconds
        (None: however long it takes; else TimeoutError), and into ``fds`` the
        descriptors that ride on them."""
        got = b""
        while len(got) < size:
            if not self._readable(FRAME_STALL_SECONDS if got else timeout):
                if not got:
                    raise TimeoutError("no frame came in time")
                raise ChannelError("the other side stopped in the middle of a frame")
            try:
                data, ancillary, flags, _ = self.sock.recvmsg(
                    size - len(got), _FD_SPACE, socket.MSG_CMSG_CLOEXEC
                )
            except OSError as exc:
                raise ChannelClosed(f"the channel broke: {exc}") from exc
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.extend(array.array("i", value[: len(value) - len(value) % 4]))
            if flags & socket.MSG_CTRUNC:
                raise ChannelError(f"a frame carried more than {MAX_BLOCKS} descriptors")
            if not data:
                raise ChannelClosed("the other side closed the channel")
            got += data
        return got

    def read(self, size: int) -> bytearray | memoryview:
        """The next ``size`` bytes of a frame under way."""
        # a model-sized payload goes into a reused buffer: fresh memory costs ~3x more to
        # fill than the copy itself (a 400 MB frame: ~1.1 s into a new bytearray, ~0.35 s
        # into a pooled buffer; benchmarks/transport.py --stages)
        if size >= POOL_MIN_BYTES:
            return self.read_into(empty_buffer(size))
        buf = bytearray(size)
        self.read_into(memoryview(buf))
        return buf

    def read_into(self, out: memoryview | bytearray) -> memoryview | bytearray:
        """Fill ``out`` with the next bytes of a frame under way."""
        view = memoryview(out)
        got, size = 0, len(view)
        while got < size:
            # a frame under way is read to its end, unless the other side stalls in it
            if not self._readable(FRAME_STALL_SECONDS):
                raise ChannelError("the other side stopped in the middle of a frame")
            try:
                n = self.sock.recv_into(view[got:])
            except OSError as exc:
                raise ChannelClosed(f"the channel broke: {exc}") from exc
            if n == 0:
                raise ChannelClosed("the other side closed the channel")
            got += n
        return out

    def _readable(self, timeout: float | None) -> bool:
        """Whether there are bytes (or the end) to read within ``timeout`` seconds."""
        if timeout is None:
            return True
        return bool(self._poller.poll(max(0, math.ceil(timeout * 1000))))
