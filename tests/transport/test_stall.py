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
