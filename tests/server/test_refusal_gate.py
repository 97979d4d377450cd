"""The refusal gate: once per caller and reason a minute, and bounded against strangers."""

from __future__ import annotations

from consortium.server.refusal_gate import REFUSAL_EVERY, RefusalGate


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
