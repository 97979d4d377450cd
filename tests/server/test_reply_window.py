"""How far the server forwards a round's replies ahead of its app process's fold
(``ReplyWindow``; the deployed behaviour is in
``tests/deploy/test_reply_pacing_deployed.py``)."""

from __future__ import annotations

import threading

from consortium.server.isolation.reply_window import REPLIES_AHEAD, ReplyWindow


def _waits(window: ReplyWindow) -> bool:
    """Whether ``wait_for_room`` is still waiting 0.2 s after it was called."""
    done = threading.Event()
    threading.Thread(target=lambda: (window.wait_for_room(), done.set()), daemon=True).start()
    return not done.wait(0.2)


def test_the_server_waits_once_it_is_replies_ahead_of_the_app() -> None:
    window = ReplyWindow()
    for _ in range(REPLIES_AHEAD):
        assert window.wait_for_room()
        window.sent()
    assert _waits(window)
    window.consumed()
    assert window.wait_for_room()


def test_consumed_messages_the_app_invents_grant_no_extra_room() -> None:
    window = ReplyWindow()
    for _ in range(10):  # "consumed" before anything was sent
        window.consumed()
    for _ in range(REPLIES_AHEAD):
        window.sent()
    assert _waits(window)


def test_closing_wakes_a_waiting_server_and_says_stop() -> None:
    window = ReplyWindow()
    for _ in range(REPLIES_AHEAD):
        window.sent()
    result: list[bool] = []
    waiter = threading.Thread(target=lambda: result.append(window.wait_for_room()))
    waiter.start()
    window.close()
    waiter.join(5)
    assert result == [False]


def test_a_forwarded_reply_is_released_when_the_app_consumed_it_not_before() -> None:
    """Its transfer budget stays in flight until the app is done with it (the release
    ``Fleet.send_and_receive(hold=...)`` hands over), and what the app never consumed is
    released when the forwarding ends."""
    window = ReplyWindow()
    released: list[int] = []
    for index in range(3):
        window.hold(lambda index=index: released.append(index))  # type: ignore[misc]
        window.sent()
    window.hold(None)  # a reply without a budget (received in one piece)
    assert released == []
    window.consumed()
    assert released == [0], "the oldest first, once the app says it consumed it"
    window.consumed()
    assert released == [0, 1]
    window.release_all()
    assert released == [0, 1, 2]
    window.consumed()  # nothing left to release
    assert released == [0, 1, 2]
