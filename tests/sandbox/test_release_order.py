"""A block the server's app let go of is back with the server before the app's next frame.

The server admits the next model-sized upload when its app asks for the next reply
(the ``consumed`` frame); the upload is received into a block that is free by then,
or into a new one that costs a model's memory for the rest of the run. Three
things keep it free in time, each checked here with real channels over a socket
pair: the app's reader thread does not keep the last frame it read while it waits
for the next; a frame leaves only once the releases the channel's thread took
before it are on the wire (:class:`LetGo`); and the server, finding the block
given back but its own buffer over it not yet dead, waits a moment for it instead
of making another block.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import weakref
from collections.abc import Iterator

import numpy as np
import pytest

from consortium.sandbox.channel import Channel
from consortium.sandbox.let_go import LetGo
from consortium.sandbox.shared_blocks import FREEING_WAIT_SECONDS, SHARE_MIN_BYTES, Lender
from consortium.server.isolation.link import ParentLink

pytestmark = pytest.mark.skipif(
    not hasattr(os, "memfd_create"), reason="shared blocks need Linux memfd"
)

SIZE = SHARE_MIN_BYTES + 4096


@pytest.fixture
def server_and_app() -> Iterator[tuple[Channel, Channel]]:
    ours, theirs = socket.socketpair()
    server = Channel(ours, max_payload=1 << 30, peer="child")
    app = Channel(theirs, max_payload=1 << 30, peer="parent", in_place="read-only")
    yield server, app
    server.close()
    app.close()


def _lent_reply(server: Channel, value: int) -> tuple[memoryview, weakref.ref[object]]:
    """A model-sized reply received into one of the app's blocks, as the server does."""
    assert server.lender is not None
    buffer = server.lender.allocate(SIZE)
    assert buffer is not None
    np.frombuffer(buffer, dtype=np.uint8)[:] = value
    return buffer, weakref.ref(buffer.obj)


def _lent_blocks(server: Channel) -> int:
    assert server.lender is not None
    return sum(block.lent for block in server.lender._blocks)


def test_a_frame_waits_for_the_releases_the_channels_thread_took_before_it() -> None:
    let_go = LetGo()
    let_go.put(1)
    assert let_go.next_batch() == [1]  # the thread holds it, not yet on the wire
    let_go.put(2)
    taken: list[list[int]] = []
    frame = threading.Thread(target=lambda: taken.append(let_go.for_frame()))
    frame.start()
    frame.join(0.2)
    assert frame.is_alive(), "the frame left before the release the thread took"
    let_go.sent()
    frame.join(5)
    assert taken == [[2]], "what was still pending goes with the frame"
    let_go.put_back([2])
    assert let_go.for_frame() == [2]
    let_go.close()
    assert let_go.next_batch() is None


def test_when_the_app_asks_for_the_next_reply_the_last_ones_block_is_already_back(
    server_and_app: tuple[Channel, Channel],
) -> None:
    server, app = server_and_app
    for round_ in range(30):  # the release thread and the frame race each time
        buffer, _ = _lent_reply(server, round_)
        server.send("reply", {}, [buffer])
        del buffer
        payload = app.recv(timeout=10).payload
        assert int(np.frombuffer(payload, dtype=np.uint8)[0]) == round_ % 256
        del payload  # folded: the app lets go, then asks for the next one
        app.send("consumed", {})
        assert server.recv(timeout=10).kind == "consumed"
        assert _lent_blocks(server) == 0, f"round {round_}: the release came after the frame"


def test_the_apps_reader_does_not_keep_the_last_reply_while_it_waits_for_the_next(
    server_and_app: tuple[Channel, Channel],
) -> None:
    server, app = server_and_app
    link = ParentLink(app)
    link.start()
    rid, answers = link.request("send_and_receive", {})
    assert server.recv(timeout=10).kind == "send_and_receive"
    buffer, owner = _lent_reply(server, 5)
    server.send("replies", {"id": rid}, [buffer])
    del buffer
    frame = answers.get(timeout=10)
    assert int(np.frombuffer(frame.payload, dtype=np.uint8).max()) == 5
    del frame  # the app is done with it; the server sends nothing more
    deadline = time.monotonic() + 5
    while owner() is not None:
        assert time.monotonic() < deadline, "the reader thread still holds the reply"
        with pytest.raises(TimeoutError):  # release frames only
            server.recv(timeout=0.05)
    link.done(rid)
    server.close()  # the reader sees the server go, and ends
    assert link.stop.wait(5)


def _given_back(lender: Lender) -> list[memoryview]:
    """A buffer in a new block, lent to the other side, which gave the block back: the
    buffer (in a list, to be dropped by whoever holds it) is all that keeps it taken."""
    buffer = lender.allocate(SIZE)
    assert buffer is not None
    (reference,) = lender.references([buffer])
    assert reference is not None
    lender.lend([reference.block], [buffer])
    lender.returned([reference.block.block_id])
    return [buffer]


def test_an_upload_waits_a_moment_for_a_block_given_back_instead_of_making_another() -> None:
    lender = Lender()
    holder = _given_back(lender)  # the app let go; our buffer still lives, a moment more
    threading.Timer(0.05, holder.clear).start()
    started = time.monotonic()
    again = lender.allocate_for_upload(SIZE)
    assert again is not None and lender.block_count == 1, "a second block was made"
    assert time.monotonic() - started < FREEING_WAIT_SECONDS
    lender.close()


@pytest.mark.parametrize("case", ["upload being received", "app's model, kept"])
def test_a_new_block_is_made_at_once_when_none_is_being_freed(case: str) -> None:
    """An upload does not wait for a block another upload is being received into (neither
    lent nor given back); the server's app, which keeps its model (in its block) after
    the server gave the block back, takes a new one for its next fold at once too."""
    lender = Lender()
    if case == "upload being received":
        held = [lender.allocate(SIZE)]
        take = lender.allocate_for_upload
    else:
        held = _given_back(lender)
        take = lender.allocate
    started = time.monotonic()
    other = take(SIZE)
    assert other is not None and lender.block_count == 2
    assert time.monotonic() - started < FREEING_WAIT_SECONDS / 2
    del held, other
    lender.close()
