"""The app process's side of the channel: the Grid and observers it sees are requests.

:class:`ParentLink` sends requests (each with an id) and routes the server's
answers back to whoever waits for them, from one reader thread; a ``stop``
frame from the server sets :attr:`ParentLink.stop`, which the run's context
checks between rounds.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from consortium.core.errors import ConsortiumError
from consortium.core.history import History, RoundRecord, RunInfo, round_to_json
from consortium.core.message import Message
from consortium.sandbox.channel import Buffer, Channel, ChannelError, Frame
from consortium.server.context import RunStopped
from consortium.server.isolation.wire import (
    decode_batch,
    encode_batch,
    run_info_to_json,
)

#: the largest frame either side accepts (the server bounds what it accepts further)
MAX_FRAME = 1 << 40
Payload = Buffer | Sequence[Buffer]


class ServerRefused(ConsortiumError):
    """The server refused or could not carry out a request of the app process."""


class ParentLink:
    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.stop = threading.Event()
        self._ids = itertools.count(1)
        self._waiting: dict[int, queue.Queue[Frame]] = {}
        #: requests a stop ends at once (waiting for nodes that may never come)
        self._interruptible: set[int] = set()
        self._lock = threading.Lock()
        self._broken: str | None = None

    def start(self) -> None:
        threading.Thread(target=self._read, name="parent-link", daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                frame = self.channel.recv()
            except ChannelError as exc:
                self._broken = str(exc)
                self.stop.set()
                with self._lock:
                    for waiter in self._waiting.values():
                        waiter.put(Frame("error", {"error": f"the server went away: {exc}"}))
                return
            if frame.kind == "stop":
                self.stop.set()
                with self._lock:
                    for rid in self._interruptible:
                        self._waiting[rid].put(Frame("stopped"))
                continue
            with self._lock:
                answers = self._waiting.get(int(frame.header.get("id", -1)))
            if answers is not None:
                answers.put(frame)
            # not kept while the next frame is awaited: a reply read in place would stay
            # alive here until then, and the server, not told it was let go of, would
            # receive the next reply into another block
            del frame

    def request(
        self,
        op: str,
        header: dict[str, Any] | None = None,
        payload: Payload = b"",
        *,
        interruptible: bool = False,
    ) -> tuple[int, queue.Queue[Frame]]:
        if self._broken is not None:
            raise ServerRefused(f"the server went away: {self._broken}")
        rid = next(self._ids)
        answers: queue.Queue[Frame] = queue.Queue()
        with self._lock:
            self._waiting[rid] = answers
            if interruptible:
                if self.stop.is_set():
                    raise RunStopped("the run was stopped")
                self._interruptible.add(rid)
        self.channel.send(op, {**(header or {}), "id": rid}, payload)
        return rid, answers

    def done(self, rid: int) -> None:
        with self._lock:
            self._waiting.pop(rid, None)
            self._interruptible.discard(rid)

    def call(
        self,
        op: str,
        header: dict[str, Any] | None = None,
        payload: Payload = b"",
        *,
        interruptible: bool = False,
    ) -> Frame:
        """Send a request and wait for its answer; an ``interruptible`` one raises
        :class:`RunStopped` as soon as the server says the run was stopped."""
        rid, answers = self.request(op, header, payload, interruptible=interruptible)
        try:
            return _checked(answers.get())
        finally:
            self.done(rid)

    def checkpoint_written(self, step: int, path: Path) -> None:
        self.call("checkpoint", {"step": step, "path": str(path)})

    def finish(self, kind: str, header: dict[str, Any]) -> None:
        with contextlib.suppress(ChannelError):  # the server is gone: it sees the process end
            self.channel.send(kind, header)


def _checked(frame: Frame) -> Frame:
    if frame.kind == "stopped":
        raise RunStopped("the run was stopped while it waited for nodes")
    if frame.kind == "error":
        raise ServerRefused(str(frame.header.get("error", "the server refused the request")))
    return frame


class RemoteGrid:
    """The :class:`~consortium.core.grid.Grid` of an app process: the server carries it out."""

    def __init__(self, link: ParentLink) -> None:
        self.link = link

    def node_ids(self) -> list[str]:
        return [str(n) for n in self.link.call("node_ids").header["nodes"]]

    def wait_for_nodes(self, count: int, timeout: float) -> list[str]:
        frame = self.link.call(
            "wait_for_nodes", {"count": count, "timeout": timeout}, interruptible=True
        )
        return [str(n) for n in frame.header["nodes"]]

    def send_and_receive(
        self, messages: Sequence[Message], *, timeout: float | None
    ) -> Iterator[Message]:
        # the model, when it lies in a block of this process's (encoded by the fold), goes
        # as that one range, with the tasks in the header: the server reads it there
        header, parts = encode_batch(messages, skeletons_in_header=True)
        rid, answers = self.link.request("send_and_receive", {**header, "timeout": timeout}, parts)
        return self._replies(rid, answers)

    def _replies(self, rid: int, answers: queue.Queue[Frame]) -> Iterator[Message]:
        """The replies as the server forwards them; asking for the next one tells the
        server the last is consumed (it forwards only a few ahead, see
        ``reply_window.REPLIES_AHEAD``)."""
        try:
            while True:
                frame = _checked(answers.get())
                if frame.kind == "end":
                    return
                yield from decode_batch(frame.header, frame.payload, None)
                del frame
                with contextlib.suppress(ChannelError):  # gone: the next answer says so
                    self.link.channel.send("consumed", {"id": rid})
        finally:
            self.link.done(rid)
            with contextlib.suppress(ChannelError):
                self.link.channel.send("close", {"id": rid})  # stop forwarding the rest

    def push(self, messages: Sequence[Message]) -> None:
        header, parts = encode_batch(messages, skeletons_in_header=True)
        self.link.call("push", header, parts)

    def pull(self, timeout: float | None) -> Message | None:
        frame = self.link.call("pull", {"timeout": timeout})
        if not frame.header.get("messages"):
            return None
        return decode_batch(frame.header, frame.payload, None)[0]

    def now(self) -> float:
        return float(self.link.call("now").header["now"])


class RemoteObserver:
    """Reports the run's start, rounds and end to the server, which records them."""

    def __init__(self, link: ParentLink) -> None:
        self.link = link

    def on_run_start(self, info: RunInfo) -> None:
        self.link.call("run_start", {"info": run_info_to_json(info)})

    def on_round_end(self, record: RoundRecord) -> None:
        self.link.call("round", {"record": round_to_json(record)})

    def on_run_end(self, history: History, *, failed: bool) -> None:
        self.link.call("run_end", {"failed": failed})


class ForwardLogs(logging.Handler):
    """Sends the app process's log records (INFO and up) to the server, which logs them
    (rate-limited) beside its own; the process's ``app.log`` has them too."""

    def __init__(self, channel: Channel) -> None:
        super().__init__(logging.INFO)
        self.channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):  # logging must never fail the run
            self.channel.send("log", {"level": record.levelno, "message": record.getMessage()})
