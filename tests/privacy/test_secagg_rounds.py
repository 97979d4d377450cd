"""SecAgg+ rounds in simulation: correct sums with and without dropouts, clean failures,
and what the server sees (only masked vectors) and what nodes refuse.

The harness (``secagg_harness.py``) runs one FedAvg round of the SecAgg+ workflow over
nodes with known updates, through a grid that records, and can tamper with, every task
and reply: the tampering plays a malicious server.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import secagg_harness as h

from consortium.core.arrays import Arrays
from consortium.core.context import Context, NodeState
from consortium.core.errors import ConfigError, RoundFailed, SecurityError
from consortium.core.message import METRICS, TRAIN, Content, Message
from consortium.privacy.secagg import (
    Ed25519Keyring,
    SecAggParams,
    secaggplus_mod,
    shamir,
)
from consortium.privacy.secagg import protocol as p
from consortium.privacy.secagg.crypto import KeyPair
from consortium.privacy.secagg.quantize import HEADER
from consortium.server import ServerConfig
from consortium.server.workflow.secagg import SecAggPlusWorkflow
from consortium.strategy import FedAvg
from consortium.strategy.robust import Krum, RobustFedAvg

WHEN = {"after-share-keys": TRAIN, "after-masked-input": p.UNMASK}


def _mean_update(run: h.Run, size: int) -> np.ndarray:
    start = h.model(size)
    return np.concatenate([(run.arrays[k] - start[k]).ravel() for k in start])


def _errors(grid: h.RecordingGrid) -> dict[str, str]:
    return {m.metadata.src: m.error.reason for m in grid.received if m.error is not None}


def _tamper(
    kind: str, node: str, change: Callable[[Content], Content]
) -> Callable[[Message], Message]:
    def tamper(message: Message) -> Message:
        meta = message.metadata
        if meta.kind != kind or meta.dst != node or message.content is None:
            return message
        return Message(meta, content=change(message.content))

    return tamper


def _with_record(content: Content, **changes: object) -> Content:
    record = {**content.configs[p.RECORD], **changes}
    return Content(
        dict(content.arrays), {**content.configs, p.RECORD: record}, dict(content.metrics)
    )


@pytest.mark.parametrize("dropout", ["none", "after-share-keys", "after-masked-input"])
@pytest.mark.parametrize(("n", "size"), [(3, 300), (10, 300), (50, 24)])
def test_the_sum_is_right_within_the_quantisation_step(n: int, size: int, dropout: str) -> None:
    nodes = [str(i) for i in range(n)]
    dropped = [] if dropout == "none" else nodes[1 :: max(2, n // max(1, (3 * n) // 10))]
    dropped = dropped[: max(1, (3 * n) // 10)] if dropped else []
    run = h.run(n, size, drop={d: WHEN[dropout] for d in dropped})
    # a node dropping after its masked input arrived is still in the sum
    summed = [u for u in nodes if dropout != "after-share-keys" or u not in dropped]
    error = np.abs(_mean_update(run, size) - h.expected_mean(summed, size)).max()
    assert error <= h.bound()
    assert run.metrics["secagg.survivors"] == len(summed)
    assert run.metrics["secagg.dropped"] == (len(dropped) if dropout == "after-share-keys" else 0)
    if dropout == "after-share-keys":  # the test can fail: the mean over all is far off
        assert len(dropped) == max(1, (3 * n) // 10)
        everyone = np.abs(_mean_update(run, size) - h.expected_mean(nodes, size)).max()
        assert everyone > 100 * h.bound()


def test_distributed_dp_noise_has_the_planned_scale_and_the_server_no_clean_sum() -> None:
    """Each node adds its discrete Gaussian share before masking: the unmasked sum is off
    from the exact one by noise of ``noise_stddev`` quantisation steps, no less."""
    n, size, sigma = 5, 4000, 1000.0
    params = SecAggParams(clip=1.0, quantization_bits=20, modulus_bits=40, max_weight=100,
                          noise_stddev=sigma)  # fmt: skip
    run = h.run(n, size, params=params)
    nodes = [str(i) for i in range(n)]
    total = sum(h.examples_of(u) for u in nodes)
    in_steps = (_mean_update(run, size) - h.expected_mean(nodes, size)) * total / params.step
    assert abs(float(np.mean(in_steps))) < 5 * sigma / np.sqrt(size)
    # rounding adds about 15 steps of spread, in quadrature: nothing at this scale
    assert 0.95 * sigma < float(np.std(in_steps)) < 1.05 * sigma


def test_a_round_across_worker_processes_keeps_each_nodes_secrets_in_its_state() -> None:
    """The processes backend carries each node's state between tasks as a deployed node
    does (encoded records): the four stages still meet up, on whichever worker."""
    run = h.run(4, 50, backend="processes")
    nodes = ["0", "1", "2", "3"]
    assert np.abs(_mean_update(run, 50) - h.expected_mean(nodes, 50)).max() <= h.bound()


def test_the_server_never_holds_an_unmasked_update() -> None:
    n, size = 3, 20_000
    run = h.run(n, size)
    updates = {u: h.update_of(u, size) for u in map(str, range(n))}
    masked = []
    for reply in run.grid.received:
        assert reply.error is None and reply.content is not None
        content = reply.content
        assert METRICS not in content.metrics  # no loss, no num_examples in the clear
        for arrays in content.arrays.values():
            for value in arrays.values():
                assert value.dtype == np.uint64  # nothing but masked integers
        if reply.metadata.kind != TRAIN:
            assert not content.arrays
            continue
        vector = content.arrays[p.MASKED][p.MASKED]
        masked.append(vector)
        node = reply.metadata.src
        plain = updates[node]  # what it encodes is an increasing function of this
        assert abs(np.corrcoef(vector[HEADER:].astype(np.float64), plain)[0, 1]) < 0.05
        assert int(vector[0]) != h.examples_of(node) or int(vector[1]) != 0
    assert len(masked) == n
    # every masked coordinate looks uniform on [0, M): chi-square over 16 buckets
    values = np.concatenate(masked)
    assert int(values.max()) < 2**h.PARAMS.modulus_bits
    assert h.chi2_16(values, h.PARAMS.modulus_bits) < h.CHI2_UNIFORM_16
    # ... and yet their unmasked sum is the right one
    error = np.abs(_mean_update(run, size) - h.expected_mean(list(updates), size)).max()
    assert error <= h.bound()


def test_below_the_threshold_the_round_fails_with_a_reason_and_reveals_nothing() -> None:
    seen: list[h.RecordingGrid] = []
    # 5 nodes: every node's secrets are with all 5, any 3 rebuild them; 3 drop after sharing
    with pytest.raises(
        RoundFailed,
        match="only 2 nodes left after the masked-input stage, below the reconstruction "
        "threshold 3",
    ):
        h.run(5, 40, drop={"0": TRAIN, "2": TRAIN, "4": TRAIN}, seen=seen)
    assert not [m for m in seen[0].sent if m.metadata.kind == p.UNMASK]


def test_a_node_missing_a_stage_timeout_is_a_dropout() -> None:
    params = SecAggParams(clip=1.0, quantization_bits=24, modulus_bits=40, max_weight=100,
                          stage_timeout=0.3)  # fmt: skip
    seen: list[h.RecordingGrid] = []
    # node 2 answers the unmask task past the stage timeout: the server goes on without it
    run = h.run(3, 40, params=params, slow={"2": (p.UNMASK, 0.6)}, seen=seen)
    nodes = ["0", "1", "2"]
    assert np.abs(_mean_update(run, 40) - h.expected_mean(nodes, 40)).max() <= h.bound()
    assert not [
        m for m in seen[0].received if m.metadata.kind == p.UNMASK and m.metadata.src == "2"
    ]


def test_a_substituted_public_key_is_refused() -> None:
    """The server swaps neighbour 1's mask key for one it owns: node 0 refuses the round."""

    def swap(content: Content) -> Content:
        record = content.configs[p.RECORD]
        peers = list(record[p.PEERS])
        keys = list(record[p.PEER_MASK_KEYS])
        keys[peers.index("1")] = KeyPair().public.hex()
        return _with_record(content, **{p.PEER_MASK_KEYS: keys})

    seen: list[h.RecordingGrid] = []
    run = h.run(5, 40, tamper=_tamper(TRAIN, "0", swap), seen=seen)
    assert "the signature on neighbour 1's keys does not verify" in _errors(seen[0])["0"]
    summed = ["1", "2", "3", "4"]  # node 0 sent no input: its neighbours' seeds with it go
    assert np.abs(_mean_update(run, 40) - h.expected_mean(summed, 40)).max() <= h.bound()


def test_a_node_refuses_its_own_keys_relayed_back_as_a_neighbours() -> None:
    advertised: dict[str, str] = {}

    def reflect(message: Message) -> Message:
        meta, content = message.metadata, message.content
        if meta.kind == TRAIN and meta.dst == "0" and content is not None:
            record = content.configs[p.RECORD]
            keys = list(record[p.PEER_MASK_KEYS])
            keys[list(record[p.PEERS]).index("1")] = advertised["0"]
            return Message(meta, content=_with_record(content, **{p.PEER_MASK_KEYS: keys}))
        return message

    seen: list[h.RecordingGrid] = []

    def remember(message: Message) -> Message:  # the server keeps node 0's advertised key
        for reply in seen[0].received if seen else []:
            if reply.metadata.kind == p.ADVERTISE and reply.content is not None:
                advertised[reply.metadata.src] = str(reply.content.configs[p.RECORD][p.MASK_KEY])
        return reflect(message)

    h.run(5, 40, tamper=remember, seen=seen)
    assert "public keys are repeated" in _errors(seen[0])["0"]


def test_a_node_signing_with_an_untrusted_key_is_refused_by_its_peers() -> None:
    keys = Ed25519Keyring.generate(["0", "1", "2"])
    trusted = Ed25519Keyring(
        public={**keys.public_keys(), "2": Ed25519Keyring.generate(["2"]).public_keys()["2"]}
    )
    seen: list[h.RecordingGrid] = []
    with pytest.raises(RoundFailed, match="after the masked-input stage"):
        h.run(3, 40, keyring=keys, verify=trusted, seen=seen)
    errors = _errors(seen[0])
    assert "neighbour 2's keys does not verify" in errors["0"]
    assert "neighbour 2's keys does not verify" in errors["1"]


def _unmask_replies(grid: h.RecordingGrid) -> list[Message]:
    return [m for m in grid.received if m.metadata.kind == p.UNMASK]


def test_inconsistent_models_are_refused_before_anything_is_revealed() -> None:
    """The server sends node 2 another model than the others (Pasquini et al.). Node 2
    trains on it and vouches for its hash to each neighbour (a MAC under their shared key);
    every node checks its neighbours' MACs against its own model before it reveals
    anything, so no self-mask is ever rebuilt and the masked inputs stay masked."""

    def other_model(content: Content) -> Content:
        assert content.model is not None
        changed = Arrays({k: v + 1.0 for k, v in content.model.items()})
        return Content({**content.arrays, "model": changed}, dict(content.configs))

    seen: list[h.RecordingGrid] = []
    with pytest.raises(RoundFailed, match=r"shares of node \d's self-mask seed came back, below"):
        h.run(3, 40, tamper=_tamper(TRAIN, "2", other_model), seen=seen)
    errors = _errors(seen[0])
    assert set(errors) == {"0", "1", "2"}
    assert all("model inconsistency" in reason for reason in errors.values())
    assert all(m.content is None for m in _unmask_replies(seen[0]))  # nothing revealed


def test_a_forged_model_mac_is_refused() -> None:
    """The server cannot vouch for a node itself: relaying node 1's MAC as node 2's to
    node 0 makes node 0 refuse to reveal; the other two still rebuild every seed."""

    def swap(content: Content) -> Content:
        record = content.configs[p.RECORD]
        sources, macs = list(record[p.SOURCES]), list(record[p.PEER_MODEL_MACS])
        macs[sources.index("2")] = macs[sources.index("1")]
        return _with_record(content, **{p.PEER_MODEL_MACS: macs})

    seen: list[h.RecordingGrid] = []
    run = h.run(3, 40, tamper=_tamper(p.UNMASK, "0", swap), seen=seen)
    assert "neighbour 2 did not vouch for the model" in _errors(seen[0])["0"]
    nodes = ["0", "1", "2"]
    assert np.abs(_mean_update(run, 40) - h.expected_mean(nodes, 40)).max() <= h.bound()


def test_a_node_never_reveals_both_shares_of_a_peer() -> None:
    def both(content: Content) -> Content:
        record = content.configs[p.RECORD]
        return _with_record(content, **{p.DROPPED: [*record[p.DROPPED], "1"]})

    seen: list[h.RecordingGrid] = []
    run = h.run(5, 40, tamper=_tamper(p.UNMASK, "0", both), seen=seen)
    assert "asks for both shares of ['1']" in _errors(seen[0])["0"]
    reply = [m for m in seen[0].received if m.metadata.kind == p.UNMASK and m.metadata.src == "0"]
    assert reply[0].content is None  # nothing revealed
    nodes = [str(i) for i in range(5)]  # the other four hold enough shares
    assert np.abs(_mean_update(run, 40) - h.expected_mean(nodes, 40)).max() <= h.bound()


def test_a_wrong_share_fails_the_round_instead_of_skewing_the_sum() -> None:
    """Node 0 (malicious) reveals node 1's seed share plus one: the rebuilt seed is still a
    32-byte number, but not the one node 1 committed to, and the round fails saying so."""

    def forge(reply: Message) -> Message:
        if reply.metadata.kind != p.UNMASK or reply.metadata.src != "0" or not reply.content:
            return reply
        record = reply.content.configs[p.RECORD]
        owners, shares = list(record[p.SEED_SHARES_OF]), list(record[p.SEED_SHARES])
        share = int(str(shares[owners.index("1")]), 16) + 1
        shares[owners.index("1")] = share.to_bytes(shamir.SHARE_BYTES, "big").hex()
        return Message(
            reply.metadata, content=_with_record(reply.content, **{p.SEED_SHARES: shares})
        )

    with pytest.raises(RoundFailed, match="node 1's self-mask seed are inconsistent"):
        h.run(3, 40, forge=forge)


def _mod_call(kind: str, state: NodeState, record: dict[str, object] | None) -> Message:
    mod = secaggplus_mod(Ed25519Keyring.generate(["0"]).sign, Ed25519Keyring().verify)
    configs = {p.RECORD: record} if record is not None else {}
    message = Message.create(
        run_id="r", dst="0", round=1, kind=kind, content=Content(configs=configs)
    )

    def handler(m: Message, c: Context) -> Message:
        return m.reply(arrays=Arrays(), metrics={"num_examples": 1})

    return mod(message, Context(node_id="0", state=state), handler)


def test_a_second_unmask_of_a_round_is_refused() -> None:
    revealed = NodeState(configs={p.RECORD: {"run": "r", p.EPOCH: 1, p.STAGE: 4}})
    with pytest.raises(SecurityError, match="out of order"):
        _mod_call(p.UNMASK, revealed, {p.EPOCH: 1, p.SURVIVORS: ["0"], p.DROPPED: []})


def test_stages_without_an_advertisement_and_plain_train_tasks_are_refused() -> None:
    with pytest.raises(SecurityError, match="without this node having advertised"):
        _mod_call(p.UNMASK, NodeState(), {p.EPOCH: 1, p.SURVIVORS: []})
    with pytest.raises(SecurityError, match="without this node having advertised"):
        _mod_call(TRAIN, NodeState(), {p.EPOCH: 1, p.COUNTER: 1})
    with pytest.raises(SecurityError, match="would send its update in the clear"):
        _mod_call(TRAIN, NodeState(), None)


def test_strategies_that_need_every_update_are_refused() -> None:
    with pytest.raises(ConfigError, match="needs every update"):
        SecAggPlusWorkflow(ServerConfig(RobustFedAvg(Krum(f=1))))
    SecAggPlusWorkflow(ServerConfig(FedAvg()))
