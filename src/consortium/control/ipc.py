"""The channel between the server and its REST API process: JSON frames on a socket pair.

A frame is a 4-byte big-endian length and that many bytes of UTF-8 JSON: an
object, at most :data:`MAX_FRAME` bytes. No pickle crosses it: each side checks
every field it reads (:func:`take`) and a malformed frame ends the channel.
Three kinds of frame:

- a request (API process → server): ``{"id": N, "op": OP, "args": {...}}``;
- its reply: ``{"id": N, "ok": {...}}`` or ``{"id": N, "error": {"kind", "message"}}``;
- a push (server → API process): ``{"push": NAME, "args": {...}}`` (``moved``: a run
  moved on; ``config``: the API's settings, the first frame; ``stop``).

The socket pair is made by the server and one end is inherited by the API
process, so neither listens where a third process could connect.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from consortium.core.errors import ConsortiumError

#: the largest frame either side sends or accepts (a 10,000-node run's lists fit)
MAX_FRAME = 16 * 1024 * 1024
#: how long the API process waits for the server to answer one request (seconds)
CALL_TIMEOUT = 30.0
_HEADER = struct.Struct(">I")
T = TypeVar("T")


class ProtocolError(ConsortiumError):
    """A frame that is not what the channel's protocol allows (the channel ends)."""


class ChannelClosed(ConsortiumError):
    """The other side is gone (its process ended, or the channel broke)."""


class Refused(Exception):
    """A request the server answered with an error: ``kind`` is ``invalid`` (the
    request's fault, a 4xx) or ``internal`` (the server's)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def send_frame(sock: socket.socket, message: Mapping[str, Any]) -> None:
    data = json.dumps(message, separators=(",", ":")).encode()
    if len(data) > MAX_FRAME:
        raise ProtocolError(f"a frame of {len(data)} bytes is over the limit of {MAX_FRAME}")
    sock.sendall(_HEADER.pack(len(data)) + data)


def recv_frame(sock: socket.socket) -> dict[str, Any] | None:
    """The next frame (None: the other side closed the channel between frames)."""
    header = _recv_exact(sock, _HEADER.size)
    if header is None:
        return None
    (size,) = _HEADER.unpack(header)
    if size > MAX_FRAME:
        raise ProtocolError(f"a frame of {size} bytes is over the limit of {MAX_FRAME}")
    data = _recv_exact(sock, size)
    if data is None:
        raise ProtocolError("the channel closed in the middle of a frame")
    try:
        message = json.loads(data)
    except ValueError as exc:
        raise ProtocolError(f"a frame is not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError("a frame must be a JSON object")
    return message


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    parts, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            if left == size:
                return None
            raise ProtocolError("the channel closed in the middle of a frame")
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def take(args: Mapping[str, Any], name: str, kind: type[T], *, optional: bool = False) -> T:
    """``args[name]``, which must be a ``kind`` (None allowed when ``optional``), else
    :class:`ProtocolError` naming the field. ``bool`` is not an ``int`` here."""
    value = args.get(name)
    if value is None and optional:
        return value  # type: ignore[return-value]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(f"{name}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def take_strings(args: Mapping[str, Any], name: str, *, most: int) -> list[str] | None:
    """``args[name]``: None or a list of at most ``most`` strings."""
    value = take(args, name, list, optional=True)
    if value is None:
        return None
    if len(value) > most or not all(isinstance(v, str) for v in value):
        raise ProtocolError(f"{name}: expected at most {most} strings")
    return [str(v) for v in value]


class Caller:
    """The API process's end: requests from any thread, replies matched by id, pushes
    handed to ``on_push`` (from the reader thread, which :meth:`start` starts)."""

    def __init__(self, sock: socket.socket, on_push: Callable[[str, dict[str, Any]], None]) -> None:
        self.sock = sock
        self.on_push = on_push
        self.closed = threading.Event()
        self._send = threading.Lock()
        self._lock = threading.Lock()
        self._next = 0
        self._waiting: dict[int, _Slot] = {}
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        self._reader = threading.Thread(target=self._read, name="api-channel", daemon=True)
        self._reader.start()

    def can_call(self) -> bool:
        """Whether :meth:`call` may be used from this thread now (not from the reader
        thread, which delivers the replies, nor once the channel closed)."""
        return not self.closed.is_set() and threading.current_thread() is not self._reader

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        """Ask the server; its reply (:class:`Refused` for an error answer,
        :class:`ChannelClosed` when the server is gone or does not answer in time)."""
        slot = _Slot()
        with self._lock:
            if self.closed.is_set():
                raise ChannelClosed("the server is not reachable")
            self._next += 1
            number = self._next
            self._waiting[number] = slot
        try:
            with self._send:
                send_frame(self.sock, {"id": number, "op": op, "args": args})
            if not slot.done.wait(CALL_TIMEOUT):
                raise ChannelClosed(f"the server did not answer {op!r} in {CALL_TIMEOUT:.0f} s")
        except OSError as exc:
            raise ChannelClosed(f"the server is not reachable: {exc}") from None
        finally:
            with self._lock:
                self._waiting.pop(number, None)
        if slot.reply is None:
            raise ChannelClosed("the server is not reachable")
        error = slot.reply.get("error")
        if error is not None:
            if not isinstance(error, dict):
                raise ProtocolError("error: expected an object")
            raise Refused(take(error, "kind", str), take(error, "message", str))
        return take(slot.reply, "ok", dict)

    def _read(self) -> None:
        try:
            while (frame := recv_frame(self.sock)) is not None:
                if "push" in frame:
                    self.on_push(take(frame, "push", str), take(frame, "args", dict))
                    continue
                number = take(frame, "id", int)
                with self._lock:
                    slot = self._waiting.get(number)
                if slot is not None:
                    slot.reply = frame
                    slot.done.set()
        except (OSError, ProtocolError):
            pass
        finally:
            with self._lock:
                self.closed.set()
                slots = list(self._waiting.values())
            for slot in slots:
                slot.done.set()  # no reply: ChannelClosed


class _Slot:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.reply: dict[str, Any] | None = None
