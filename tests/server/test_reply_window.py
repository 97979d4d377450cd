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
