"""The blocks of the other side's a channel's end is done with, until it has said so.

A reader of shared memory lets go of a block when its last view of a payload
there dies (a weakref finalizer: in whatever thread dropped it, at any moment);
the other side may reuse the block only once told. The release goes with this
end's next frame, or at once from a thread of the channel's
(:meth:`consortium.sandbox.channel.Channel`, read-only in place).

The order matters to the server: its app lets go of a folded reply and then
asks for the next one (the ``consumed`` frame), and the server admits the next
upload on that frame. Were the release still in the thread's hands, the upload
would find the block taken and make another. So a frame is sent only once
every release taken by the thread before it is on the wire
(:meth:`LetGo.for_frame`): whatever was let go before a frame is told no later
than that frame.
"""

from __future__ import annotations

import threading

#: the longest a frame waits for the release thread to send what it took (it only
#: writes a few bytes; the wait ends early if the channel closes)
TOLD_WAIT_SECONDS = 5.0


class LetGo:
    """Block ids let go of and not yet told to the other side."""

    def __init__(self) -> None:
        # reentrant: a finalizer may run in a thread that holds it already
        self._changed = threading.Condition(threading.RLock())
        self._pending: list[int] = []
        #: taken by the release thread and not yet on the wire
        self._in_hand = 0
        self._closed = False

    def put(self, block_id: int) -> None:
        """This end is done with ``block_id`` (a finalizer's callback: any thread)."""
        with self._changed:
            self._pending.append(block_id)
            self._changed.notify_all()

    def for_frame(self) -> list[int]:
        """The releases to send with a frame about to leave, once the release thread has
        sent those it took earlier (see the module's docstring)."""
        with self._changed:
            self._changed.wait_for(lambda: not self._in_hand or self._closed, TOLD_WAIT_SECONDS)
            taken, self._pending = self._pending, []
            return taken

    def put_back(self, block_ids: list[int]) -> None:
        """A frame that was to carry ``block_ids`` did not leave: they go with the next."""
        with self._changed:
            self._pending[:0] = block_ids
            self._changed.notify_all()

    def next_batch(self) -> list[int] | None:
        """(The release thread) the next releases to send at once, waiting for some; None
        once closed. :meth:`sent` must follow."""
        with self._changed:
            self._changed.wait_for(lambda: self._pending or self._closed)
            if self._closed:
                return None
            taken, self._pending = self._pending, []
            self._in_hand = len(taken)
            return taken

    def sent(self) -> None:
        """(The release thread) what :meth:`next_batch` gave is on the wire, or never will be."""
        with self._changed:
            self._in_hand = 0
            self._changed.notify_all()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()
