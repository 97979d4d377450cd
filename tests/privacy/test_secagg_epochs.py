"""SecAgg+ keys across rounds: one key setup per key epoch, fresh masks every round, and
what a node refuses when a server lies about dropouts or replays an earlier round.

A round reuses the epoch's keys; only its pairwise seeds (HKDF over the X25519
secret with the round's counter) and its self-mask seed b_u are new. So what a
dropout makes the survivors reveal, the round's pairwise seeds with it, opens
no other round, and a node that dropped takes part again under the same keys.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import secagg_harness as h

from consortium.core.errors import RoundFailed
from consortium.core.message import TRAIN, Content, Error, Message
from consortium.privacy.secagg import protocol as p
from consortium.privacy.secagg import shamir
from consortium.privacy.secagg.crypto import mask
from consortium.privacy.secagg.masking import pairwise_mask
from consortium.privacy.secagg.quantize import HEADER

NODES = [str(i) for i in range(5)]  # k = 4 (everyone), threshold 3 of 5


def _moved(run: h.Run, size: int) -> np.ndarray:
    start = h.model(size)
    return np.concatenate([(run.arrays[k] - start[k]).ravel() for k in start])


def _record(message: Message) -> dict[str, object]:
    assert message.content is not None
    return dict(message.content.configs[p.RECORD])


def _with_record(message: Message, **changes: object) -> Message:
    content = message.content
    assert content is not None
    record = {**content.configs[p.RECORD], **changes}
    return Message(
        message.metadata,
        content=Content(dict(content.arrays), {**content.configs, p.RECORD: record}),
    )


def _errors(grid: h.RecordingGrid, rnd: int) -> dict[str, str]:
    return {
        m.metadata.src: m.error.reason
        for m in grid.received
        if m.error is not None and m.metadata.round == rnd
    }


def test_keys_are_set_up_once_and_reused_across_rounds() -> None:
    """Three rounds, no dropout: one advertise task per node in all, two tasks per node
    and round after it, peer keys relayed once, and every round's sum right."""
    size, rounds = 60, 3
    run = h.run(5, size, rounds=rounds)
    sent = Counter(m.metadata.kind for m in run.grid.sent)
    assert sent == {p.ADVERTISE: 5, TRAIN: 5 * rounds, p.UNMASK: 5 * rounds}
    with_keys = [m for m in run.grid.sent if m.metadata.kind == TRAIN and p.PEERS in _record(m)]
    assert {m.metadata.round for m in with_keys} == {1} and len(with_keys) == 5
    assert [r["secagg.key_setup"] for r in run.rounds] == [1, 0, 0]
    counters = {
        m.metadata.round: _record(m)[p.COUNTER] for m in run.grid.sent if m.metadata.kind == TRAIN
    }
    assert counters == {1: 1, 2: 2, 3: 3}  # a new mask counter every round
    expected = rounds * h.expected_mean(NODES, size)
    assert np.abs(_moved(run, size) - expected).max() <= rounds * h.bound()


def test_a_new_set_of_participants_gets_new_keys() -> None:
    """Node 3 fails to advertise in round 1: round 1 runs without it, round 2 (which
    samples it again) sets up a new epoch that includes it."""
    size = 30
    run = h.run(5, size, rounds=2, drop={"3": (p.ADVERTISE, 1)})
    sent = Counter((m.metadata.round, m.metadata.kind) for m in run.grid.sent)
    assert sent[(1, p.ADVERTISE)] == 5 and sent[(2, p.ADVERTISE)] == 5
    assert sent[(1, TRAIN)] == 4 and sent[(2, TRAIN)] == 5
    assert [r["secagg.key_setup"] for r in run.rounds] == [1, 1]
    without = [u for u in NODES if u != "3"]
    expected = h.expected_mean(without, size) + h.expected_mean(NODES, size)
    assert np.abs(_moved(run, size) - expected).max() <= 2 * h.bound()


def test_a_dropout_takes_part_again_under_the_same_keys_and_its_seeds_open_no_other_round() -> None:
    """Node 1 drops at its round-2 masked input: its neighbours reveal their round-2
    pairwise seeds with it. Round 3 counts node 1 again with no new key setup, and the
    round-2 seeds do not unmask node 1's round-3 vector, even with its round-3 b_u (which
    the server legitimately rebuilds): the seeds are per round."""
    size, params = 2000, h.PARAMS
    run = h.run(5, size, rounds=3, drop={"1": (TRAIN, 2)})
    assert Counter(m.metadata.kind for m in run.grid.sent)[p.ADVERTISE] == 5
    assert [r["secagg.survivors"] for r in run.rounds] == [5, 4, 5]
    assert [r["secagg.dropped"] for r in run.rounds] == [0, 1, 0]
    assert [r["secagg.key_setup"] for r in run.rounds] == [1, 0, 0]
    others = [u for u in NODES if u != "1"]
    expected = 2 * h.expected_mean(NODES, size) + h.expected_mean(others, size)
    assert np.abs(_moved(run, size) - expected).max() <= 3 * h.bound()

    # what the server holds: round 2's seeds with node 1, node 1's round-3 vector and b_u
    unmasks = {
        (m.metadata.round, m.metadata.src): _record(m)
        for m in run.grid.received
        if m.metadata.kind == p.UNMASK
    }
    seeds = {}
    for w in others:
        record = unmasks[(2, w)]
        seeds[w] = bytes.fromhex(
            str(record[p.PAIR_SEEDS][list(record[p.PAIR_SEEDS_OF]).index("1")])
        )  # type: ignore[index, arg-type]
    shares = {}
    for holder in NODES:
        record = unmasks[(3, holder)]
        owners = list(record[p.SEED_SHARES_OF])  # type: ignore[call-overload]
        shares[int(holder) + 1] = bytes.fromhex(str(record[p.SEED_SHARES][owners.index("1")]))  # type: ignore[index]
    b_1 = shamir.combine(shares, 3)
    (vector,) = [
        m.content.arrays[p.MASKED][p.MASKED]
        for m in run.grid.received
        if m.metadata.kind == TRAIN and m.metadata.src == "1" and m.metadata.round == 3
        and m.content is not None
    ]  # fmt: skip
    bits = params.modulus_bits
    attempt = vector - mask(b_1, vector.size, bits)
    for w, seed in seeds.items():
        attempt -= pairwise_mask(seed, 2, int(w) + 1, vector.size, bits)
    attempt &= np.uint64((1 << bits) - 1)
    assert int(attempt[0]) != h.examples_of("1")  # the example count is still masked
    plain = h.update_of("1", size)
    assert abs(np.corrcoef(attempt[HEADER:].astype(np.float64), plain)[0, 1]) < 0.1


@pytest.mark.parametrize("replay", ["round-1-box", "round-1-counter"])
def test_a_server_claiming_a_live_node_dropped_cannot_get_its_b_shares_later(
    replay: str,
) -> None:
    """A hostile server keeps node 1's round-1 masked input but tells the others it
    dropped (they reveal their round-1 pairwise seeds with it, not its b-shares). In
    round 2 it asks node 0 for node 1's round-1 b-share: relayed in the round-2 unmask
    (the share is sealed to round 1's counter and does not open), or by an unmask task
    of round 1's counter (node 0 has moved on). Either is refused; round 2 sums right."""
    kept: list[Message] = []

    def forge(reply: Message) -> Message:
        meta = reply.metadata
        if meta.kind == TRAIN and meta.src == "1" and meta.round == 1:
            kept.append(reply)  # the server has it, and says it never came
            return Message(meta, error=Error("timeout", "claimed dropped by the server"))
        return reply

    def tamper(message: Message) -> Message:
        meta = message.metadata
        if meta.kind != p.UNMASK or meta.dst != "0" or meta.round != 2:
            return message
        if replay == "round-1-counter":
            return _with_record(message, **{p.COUNTER: 1})
        old = _record(kept[0])
        box = list(old[p.CIPHERTEXTS])[list(old[p.DESTINATIONS]).index("0")]  # type: ignore[call-overload]
        record = _record(message)
        boxes = list(record[p.CIPHERTEXTS])  # type: ignore[call-overload]
        boxes[list(record[p.SOURCES]).index("1")] = box  # type: ignore[call-overload]
        return _with_record(message, **{p.CIPHERTEXTS: boxes})

    seen: list[h.RecordingGrid] = []
    size = 40
    run = h.run(5, size, rounds=2, forge=forge, tamper=tamper, seen=seen)
    round_1 = {m.metadata.src: _record(m) for m in seen[0].received
               if m.metadata.kind == p.UNMASK and m.metadata.round == 1}  # fmt: skip
    for record in round_1.values():  # told 1 dropped: its seeds with 1, none of 1's b-shares
        assert list(record[p.PAIR_SEEDS_OF]) == ["1"]  # type: ignore[call-overload]
        assert "1" not in list(record[p.SEED_SHARES_OF])  # type: ignore[call-overload]
    reason = _errors(seen[0], 2)["0"]
    if replay == "round-1-box":
        assert "does not authenticate" in reason
    else:
        assert "masked input was for counter 2" in reason
    unmask_0 = [m for m in seen[0].received if m.metadata.kind == p.UNMASK
                and m.metadata.round == 2 and m.metadata.src == "0"]  # fmt: skip
    assert unmask_0[0].content is None  # node 0 revealed nothing in round 2
    others = [u for u in NODES if u != "1"]
    expected = h.expected_mean(others, size) + h.expected_mean(NODES, size)
    assert np.abs(_moved(run, size) - expected).max() <= 2 * h.bound()


def test_a_counter_is_never_masked_twice() -> None:
    """The server sends node 0 round 1's counter again in round 2 (a second masked input
    under the same pairwise masks would give away the difference of two updates):
    refused, and round 2 sums the other four."""

    def tamper(message: Message) -> Message:
        meta = message.metadata
        if meta.kind == TRAIN and meta.dst == "0" and meta.round == 2:
            return _with_record(message, **{p.COUNTER: 1})
        return message

    seen: list[h.RecordingGrid] = []
    size = 40
    run = h.run(5, size, rounds=2, tamper=tamper, seen=seen)
    assert "masks are never reused" in _errors(seen[0], 2)["0"]
    others = [u for u in NODES if u != "0"]
    expected = h.expected_mean(NODES, size) + h.expected_mean(others, size)
    assert np.abs(_moved(run, size) - expected).max() <= 2 * h.bound()


def test_a_dropout_whose_surviving_neighbour_then_fails_fails_the_round() -> None:
    """The price of revealing per-round pairwise seeds instead of sharing a long-term
    key: node 1 drops before its masked input and node 2 (whose input arrived, masked
    with node 1) fails the unmask task, so node 2's seed with node 1 is missing. The round
    fails with that reason and releases nothing (the workflow's round_retries retry it,
    under a new counter)."""
    with pytest.raises(RoundFailed, match="node 2 did not reveal its pairwise seed with node 1"):
        h.run(5, 30, drop={"1": TRAIN, "2": p.UNMASK})
