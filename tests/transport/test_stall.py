"""The stall watch cuts off exactly the transfers that made no progress for its timeout."""

from __future__ import annotations

import pytest

from consortium.transport.stall import StallWatch


class Call:
    def __init__(self) -> None:
        self.cancelled = 0

    def cancel(self) -> None:
        self.cancelled += 1


def test_only_a_transfer_without_progress_is_cut_off_once() -> None:
    now = [0.0]
    watch = StallWatch(10.0, clock=lambda: now[0])
    try:
        slow, busy = Call(), Call()
        with watch.watching(slow, "a silent reply") as silent, watch.watching(busy, "x") as moving:
            now[0] = 8.0
            moving.last = now[0]  # a chunk went through at t=8
            now[0] = 10.5
            assert watch.check() == [silent]
            assert slow.cancelled == 1 and busy.cancelled == 0 and silent.stalled
            now[0] = 30.0
            assert watch.check() == [moving]  # no progress since t=8 now
            assert slow.cancelled == 1  # cut off once only
        now[0] = 100.0
        assert watch.check() == []  # finished transfers are no longer watched
    finally:
        watch.close()


def test_the_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError):
        StallWatch(0.0)


def test_a_transfer_is_not_judged_while_the_server_waits_on_itself() -> None:
    """Waiting for the transfer budget is the server's time, not the node's: a reply held
    back longer than the timeout is not cut off, and its clock starts again after."""
    now = [0.0]
    watch = StallWatch(10.0, clock=lambda: now[0])
    try:
        call = Call()
        with watch.watching(call, "a reply waiting for the budget") as transfer:
            with transfer.paused():
                now[0] = 500.0
                assert watch.check() == []
            now[0] = 509.0
            assert watch.check() == []  # 9 s since the wait ended
            now[0] = 510.5
            assert watch.check() == [transfer] and transfer.stalled
        assert call.cancelled == 1
    finally:
        watch.close()


def test_a_transfers_moving_time_leaves_out_the_servers_waits() -> None:
    """What a link is measured over: the transfer's time, less the server's own waits
    (nested ones counted once, one still going on counted up to now)."""
    now = [100.0]
    watch = StallWatch(10.0, clock=lambda: now[0])
    try:
        with watch.watching(Call(), "a reply") as transfer:
            now[0] = 103.0
            with transfer.paused():
                now[0] = 110.0
                with transfer.paused():
                    now[0] = 150.0
                assert transfer.moving_seconds() == pytest.approx(3.0)
                now[0] = 160.0
            now[0] = 165.0  # 3 s moving, 57 s waiting, 5 s moving
            assert transfer.moving_seconds() == pytest.approx(8.0)
            with transfer.paused():
                now[0] = 170.0
                assert transfer.moving_seconds() == pytest.approx(8.0)
    finally:
        watch.close()


class Waiting:
    """Whether others wait behind the watched transfers, as the test sets it."""

    def __init__(self) -> None:
        self.now = False

    def __call__(self) -> bool:
        return self.now


def _look_every_second(watch: StallWatch, now: list[float], until: float) -> list[object]:
    cut: list[object] = []
    while now[0] < until:
        now[0] += 1.0
        cut += watch.check()
    return cut


def test_a_transfer_under_the_floor_is_cut_off_only_while_others_wait_behind_it() -> None:
    now = [0.0]
    waiting = Waiting()
    watch = StallWatch(10.0, min_rate=1000.0, others_waiting=waiting, clock=lambda: now[0])
    try:
        crawl, fast, app = Call(), Call(), Call()
        with (
            watch.watching(crawl, "a crawling reply") as crawling,
            watch.watching(fast, "a reply at the floor") as at_floor,
            watch.watching(app, "an app's download", held_to_rate=False) as exempt,
        ):
            for second in range(30):  # nobody waits: the slow ones are left alone
                now[0] = float(second)
                crawling.moved(900)
                at_floor.moved(1000)
                exempt.moved(10)
                assert watch.check() == []
            waiting.now = True
            now[0] = 30.0
            crawling.moved(900)
            at_floor.moved(1000)
            exempt.moved(10)
            assert watch.check() == [crawling]
            assert crawling.too_slow == pytest.approx(900.0) and not crawling.stalled
            assert crawl.cancelled == 1 and fast.cancelled == 0 and app.cancelled == 0
            why = watch.reason(crawling, "its reply stopped arriving", "its reply arrived")
            assert why == (
                "its reply arrived at 0.01 Mbit/s while other transfers waited, "
                "under the floor of 0.01 Mbit/s"
            )
            assert watch.check() == []  # cut off once only
    finally:
        watch.close()


def test_the_rate_is_judged_over_a_whole_window_after_any_wait_of_the_servers() -> None:
    """A transfer just started, or just back from the server's own wait, has moved
    little yet: it is judged once it was watched, unpaused, for the whole timeout."""
    now = [0.0]
    watch = StallWatch(10.0, min_rate=1000.0, others_waiting=lambda: True, clock=lambda: now[0])
    try:
        call = Call()
        with watch.watching(call, "a reply") as transfer:
            assert _look_every_second(watch, now, 9.0) == []  # nothing moved, 9 s in
            transfer.moved(10_000)
            with transfer.paused():
                assert _look_every_second(watch, now, 60.0) == []
            cut: list[object] = []
            while not cut:  # back from the wait, slow again: 100 bytes a second
                now[0] += 1.0
                transfer.moved(100)
                cut = watch.check()
            assert cut == [transfer] and now[0] == 71.0  # its first look after the wait: 61
            assert transfer.too_slow is not None and transfer.too_slow < 1000.0
    finally:
        watch.close()


def test_a_steady_transfer_above_the_floor_is_never_cut_off() -> None:
    now = [0.0]
    watch = StallWatch(10.0, min_rate=1000.0, others_waiting=lambda: True, clock=lambda: now[0])
    try:
        call = Call()
        with watch.watching(call, "a reply") as transfer:
            for _ in range(100):
                now[0] += 0.5
                transfer.moved(600)  # 1200 bytes a second
                assert watch.check() == []
    finally:
        watch.close()


def test_the_floor_must_not_be_negative() -> None:
    with pytest.raises(ValueError):
        StallWatch(1.0, min_rate=-1.0)
