"""The refusal gate: once per caller and reason a minute, and bounded against strangers."""

from __future__ import annotations

import logging
import time

import pytest

from consortium.transport.refusal_gate import REFUSAL_EVERY, RefusalGate, RefusalLog, peer_host


def test_the_same_caller_and_reason_pass_once_a_minute() -> None:
    gate = RefusalGate()
    assert gate.admit("mallory", "revoked", 0.0)
    assert not gate.admit("mallory", "revoked", REFUSAL_EVERY - 1)
    assert gate.admit("mallory", "expired", 1.0)  # another reason is news
    assert gate.admit("eve", "revoked", 1.0)  # another caller too
    assert gate.admit("mallory", "revoked", REFUSAL_EVERY)


def test_a_flood_of_strangers_is_forgotten_not_kept() -> None:
    gate = RefusalGate(kept=100)
    for i in range(1000):  # every caller a new address
        assert gate.admit(f"ipv4:10.0.0.{i}:5000", "unknown CA", float(i) / 1000)
        assert len(gate) <= 100
    # expired pairs go first: an old caller's pair is dropped, a recent one's is kept
    old = RefusalGate(kept=2)
    old.admit("a", "r", 0.0)
    old.admit("b", "r", REFUSAL_EVERY + 1)
    old.admit("c", "r", REFUSAL_EVERY + 2)  # full: "a" expired and is dropped
    assert not old.admit("b", "r", REFUSAL_EVERY + 3)
    assert old.admit("a", "r", REFUSAL_EVERY + 3)


def test_a_refusal_is_logged_once_per_caller_and_reason_then_with_how_many_were_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    refusals = RefusalLog(logging.getLogger("test.refusals"), every=0.3)
    with caplog.at_level(logging.WARNING, logger="test.refusals"):
        for _ in range(50):
            refusals.warning("mallory", "not allowed", "refused %s", "mallory")
        refusals.warning("eve", "not allowed", "refused %s", "eve")  # another caller: logged
        time.sleep(0.35)
        refusals.warning("mallory", "not allowed", "refused %s", "mallory")
    assert [r.getMessage() for r in caplog.records] == [
        "refused mallory",
        "refused eve",
        "refused mallory (49 more refused since, not logged)",
    ]


def test_a_peers_connections_count_as_one_caller() -> None:
    assert peer_host("ipv4:127.0.0.1:54321") == peer_host("ipv4:127.0.0.1:40000")
    assert peer_host("ipv6:[::1]:54321") == "ipv6:[::1]"
    assert peer_host("unix:/tmp/socket") == "unix:/tmp/socket"
