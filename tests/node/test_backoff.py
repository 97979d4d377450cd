"""Retrying: exponential backoff with full jitter that honours its cap, and a log that
says why a node retries once per backoff level, not once per attempt."""

from __future__ import annotations

import logging
import random

import pytest

from consortium.core.errors import ServerUnavailable, TransportError
from consortium.node.runner import REMIND_EVERY, UNREACHED_AFTER, Backoff, RetryLog

LOGGER = "consortium.node"
DOWN = ServerUnavailable("hello to 127.0.0.1:1 failed (UNAVAILABLE): Socket closed")


def test_delays_grow_then_stay_under_the_cap() -> None:
    backoff = Backoff(base=0.2, cap=10.0, rng=random.Random(1))
    ceilings = []
    for _ in range(20):
        ceilings.append(backoff.ceiling)
        assert 0 <= backoff.next_delay() <= ceilings[-1]
    assert ceilings[:7] == [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0]
    assert set(ceilings[6:]) == {10.0} and backoff.capped


def test_a_long_outage_never_overflows() -> None:
    backoff = Backoff(base=0.2, cap=10.0, rng=random.Random(2))
    delays = [backoff.next_delay() for _ in range(5000)]  # ~14 hours at the cap
    assert max(delays) <= 10.0
    assert backoff.attempt == 6  # the level stops at the cap
    assert sum(delays[-1000:]) / 1000 == pytest.approx(5.0, rel=0.1)  # full jitter: U(0, cap)
    backoff.reset()
    assert backoff.ceiling == 0.2


@pytest.mark.parametrize(("base", "cap"), [(0.0, 1.0), (2.0, 1.0), (-1.0, 1.0)])
def test_a_backoff_that_could_not_reach_its_cap_is_refused(base: float, cap: float) -> None:
    with pytest.raises(ValueError, match="base"):
        Backoff(base=base, cap=cap)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def test_one_line_per_level_then_a_reminder_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = Clock()
    retries = RetryLog("127.0.0.1:1", clock=clock)
    retries.connected()  # reached once: this is an outage, not a refused handshake
    backoff = Backoff(base=0.2, cap=10.0, rng=random.Random(3))
    for _ in range(300):  # 300 attempts, ~25 minutes at the cap
        clock.now += retries.failed(DOWN, backoff)
    logged = lines(caplog)
    levels = [line for line in logged if "retrying in" in line]
    assert len(levels) == 6  # 0.2 .. 6.4 s: one line each
    reminders = [line for line in logged if "attempts in a row failed" in line]
    assert 1 <= len(reminders) <= clock.now / REMIND_EVERY + 1
    assert len(logged) == len(levels) + len(reminders) < 40  # not 300
    assert not any("TLS handshake" in line for line in logged)


def test_a_server_never_reached_is_named_as_maybe_refusing_the_certificate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = Clock()
    retries = RetryLog("127.0.0.1:1", clock=clock)
    backoff = Backoff(base=0.2, cap=10.0, rng=random.Random(4))
    for _ in range(UNREACHED_AFTER + 20):
        clock.now += retries.failed(DOWN, backoff)
    (said, *_) = [line for line in lines(caplog) if "TLS handshake" in line]
    assert "have not reached the server at 127.0.0.1:1" in said
    assert "certificate" in said and "Socket closed" in said


def test_a_refused_call_is_logged_as_an_error(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    retries = RetryLog("127.0.0.1:1")
    retries.failed(TransportError("pulling a task failed (INTERNAL): boom"), Backoff())
    (record,) = [r for r in caplog.records if r.name == LOGGER]
    assert record.levelno == logging.ERROR and "refused the call" in record.getMessage()
