"""Vertical logistic regression as a program over the Grid: the server only relays.

:func:`run_vertical_lr` drives the parties through the protocol of
``docs/vertical.md`` ("Vertical logistic regression"): setup, then per
iteration forward (passive parties' pairwise-masked partial logits), residual (the label
holder's encrypted residuals), gradient (passive parties' masked encrypted
gradients) and decrypt (the label holder decrypts them masked), and a last
forward and residual pass that only evaluates. The server sees masked
logits (their sum), ciphertexts, masked numbers and the label holder's metrics; it
checks what it relays (shapes, finite values, ciphertext counts, that each passive party's gradient
comes signed) so one
party's garbage stops the run here with a message naming the party, instead
of in another party's handler. Each iteration is one :class:`RoundRecord`:
loss and accuracy (train and held-out), and every party's bytes in and out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from consortium.core.arrays import Arrays
from consortium.core.errors import RoundFailed, UpdateRejected
from consortium.core.grid import Grid
from consortium.core.history import NodeResult, Outcome, RoundRecord
from consortium.core.message import CONFIG, Content
from consortium.core.records import Config, Metrics, Scalar
from consortium.vertical.logistic_masks import KEY_BYTES
from consortium.vertical.logistic_protocol import (
    ACTIVE,
    BIAS,
    COUNTS,
    FEATURE_NAMES,
    FEATURES,
    GRADIENT,
    GRADIENT_SIGNATURE,
    GRADIENT_SIGNATURES,
    ITERATION,
    KEY,
    KEY_SIGNATURE,
    KIND_DECRYPT,
    KIND_FINISH,
    KIND_FORWARD,
    KIND_GRADIENT,
    KIND_RESIDUAL,
    KIND_SETUP,
    LABEL_HOLDER,
    PARTIES,
    PASSIVE,
    PAYLOAD,
    PEER_KEY,
    PEER_NODES,
    PEER_SIGNATURES,
    PEERS,
    PLAIN,
    RESIDUALS,
    ROLE,
    SIGNATURE,
    TEST_ROWS,
    TRAIN_ROWS,
    TRAINING,
    U_TEST,
    U_TRAIN,
    WEIGHTS,
    VerticalLRParams,
    float_vector,
    uint64_matrix,
)
from consortium.vertical.relay import Party, Relay, SetupKeys, read_parties

log = logging.getLogger("consortium.vertical")


class RunContext(Protocol):
    """What the protocol needs of the server's context (a ``ServerContext`` is one)."""

    @property
    def run_id(self) -> str: ...

    def report(self, record: RoundRecord) -> None: ...


#: the keys of a vertical LR setup reply
_SETUP_KEYS = SetupKeys(ROLE, FEATURE_NAMES, TRAIN_ROWS, TEST_ROWS, FEATURES, ACTIVE, PASSIVE)


@dataclass
class VerticalLRResult:
    """What the server learnt: the parties, the last metrics, and the weights if revealed."""

    active: Party
    passives: list[Party]
    metrics: Metrics
    #: node -> its weights (and the label holder's ``bias``); empty unless revealed
    weights: dict[str, Arrays] = field(default_factory=dict)
    bytes_exchanged: int = 0


@dataclass(frozen=True)
class _Setup:
    active: Party
    passives: list[Party]
    key: np.ndarray  # the label holder's public modulus, as it sent it
    peers: np.ndarray  # the passive parties' mask keys, in passive order
    train_rows: int
    test_rows: int
    #: each party's signature over its key (hex), relayed with the first forward task
    signatures: dict[str, str]

    def first_forward(self) -> tuple[Arrays, Config]:
        """What the first forward task adds: the signed keys for each passive party to check."""
        passives: list[Scalar] = [p.node for p in self.passives]
        signatures: list[Scalar] = [self.signatures[p.node] for p in self.passives]
        config: Config = {LABEL_HOLDER: self.active.node, PEER_NODES: passives,
                          KEY_SIGNATURE: self.signatures[self.active.node],
                          PEER_SIGNATURES: signatures}  # fmt: skip
        return Arrays({KEY: self.key}), config


def run_vertical_lr(
    grid: Grid, context: RunContext, params: VerticalLRParams, parties: Sequence[str]
) -> VerticalLRResult:
    """Train a vertical logistic regression across ``parties`` (2-9 nodes, one label holder).

    Round ``t`` of the reported history is the model after ``t`` steps: its loss and
    accuracy (``evaluate`` metrics: on the held-out rows), and the bytes of iteration
    ``t``'s messages, in total and per party.
    """
    relay = Relay(grid, context.run_id, params.timeout, protocol="vertical LR")
    setup = _setup(relay, list(parties))
    active, passives = setup.active, setup.passives
    sent, received = relay.take_counts()
    total = sum(sent.values()) + sum(received.values())
    plain: dict[str, Arrays] = {}
    metrics: Metrics = {}
    started = time.monotonic()
    for t in range(1, params.iterations + 2):
        training = t <= params.iterations
        flags: Config = {ITERATION: t, TRAINING: training}
        signed, signatures = setup.first_forward() if t == 1 else (Arrays(), {})
        replies = relay.step(KIND_FORWARD, t, {
            p.node: Content(arrays={PAYLOAD: Arrays({**plain.get(p.node, {}), **signed,
                                                     PEERS: setup.peers})},
                            configs={CONFIG: {**flags, **signatures}})
            for p in passives})  # fmt: skip
        u_train = np.stack([_masked(_payload(replies, p.node).get(U_TRAIN), setup.train_rows,
                                    f"{p.node}'s {U_TRAIN}") for p in passives])  # fmt: skip
        u_test = np.stack([_masked(_payload(replies, p.node).get(U_TEST), setup.test_rows,
                                   f"{p.node}'s {U_TEST}") for p in passives])  # fmt: skip
        replies = relay.step(KIND_RESIDUAL, t, {active.node: Content(
            arrays={PAYLOAD: Arrays({U_TRAIN: u_train, U_TEST: u_test})},
            configs={CONFIG: flags})})  # fmt: skip
        metrics = dict(replies[active.node].metric_values)
        if t > 1:  # the model after t - 1 steps: round t - 1 ends here
            sent, received = relay.take_counts()
            total += sum(sent.values()) + sum(received.values())
            _report(context, t - 1, metrics, sent, received, time.monotonic() - started)
            started = time.monotonic()
        if training:
            plain = _gradient_step(relay, setup, replies, t)
    weights = _finish(relay, active, passives, params)
    sent, received = relay.take_counts()
    total += sum(sent.values()) + sum(received.values())
    return VerticalLRResult(active, passives, metrics, weights, total)


def _gradient_step(
    relay: Relay, setup: _Setup, replies: dict[str, Content], t: int
) -> dict[str, Arrays]:
    """Iteration ``t``'s gradient and decrypt steps: each passive party's masked gradient."""
    active, passives, key = setup.active, setup.passives, setup.key
    residuals = _payload(replies, active.node).get(RESIDUALS)
    _check_ciphertexts(residuals, setup.train_rows, key.shape[0], f"{active.node}'s {RESIDUALS}")
    ask: Config = {ITERATION: t}
    replies = relay.step(KIND_GRADIENT, t, {p.node: Content(
        arrays={PAYLOAD: Arrays({KEY: key, RESIDUALS: residuals})},
        configs={CONFIG: ask}) for p in passives})  # fmt: skip
    grads = [_payload(replies, p.node).get(GRADIENT) for p in passives]
    counts = [len(p.feature_names) for p in passives]
    for p, g, count in zip(passives, grads, counts, strict=True):
        _check_ciphertexts(g, count, key.shape[0], f"{p.node}'s {GRADIENT}")
    signatures: list[Scalar] = []
    for p in passives:  # each passive party's, over its own gradient: relayed to be checked
        signature = replies[p.node].configs.get(PAYLOAD, Config()).get(GRADIENT_SIGNATURE)
        if not isinstance(signature, str) or not signature:
            raise RoundFailed(f"vertical LR: {p.node}'s {GRADIENT} comes unsigned")
        signatures.append(signature)
    stacked = np.concatenate([g for g in grads if isinstance(g, np.ndarray)])
    replies = relay.step(KIND_DECRYPT, t, {active.node: Content(
        arrays={PAYLOAD: Arrays({GRADIENT: stacked})},
        configs={CONFIG: {ITERATION: t, COUNTS: list(counts),
                          GRADIENT_SIGNATURES: signatures}})})  # fmt: skip
    decrypted = _payload(replies, active.node).get(PLAIN)
    _check_plain(decrypted, sum(counts), key.shape[0], f"{active.node}'s {PLAIN}")
    assert isinstance(decrypted, np.ndarray)
    edges = np.cumsum([0, *counts])
    return {p.node: Arrays({PLAIN: decrypted[edges[i] : edges[i + 1]]})
            for i, p in enumerate(passives)}  # fmt: skip


def _setup(relay: Relay, nodes: list[str]) -> _Setup:
    if len(nodes) < 2 or len(set(nodes)) != len(nodes):
        raise RoundFailed(f"vertical LR needs at least 2 distinct parties, got {nodes}")
    task: Config = {PARTIES: list(nodes)}
    replies = relay.step(KIND_SETUP, 0, {n: Content(configs={CONFIG: task}) for n in nodes})
    configs = {n: replies[n].configs.get(PAYLOAD, Config()) for n in nodes}
    active, passives, train, test = read_parties(
        configs, nodes, _SETUP_KEYS, protocol="vertical LR", min_train=2
    )
    signatures = {n: configs[n].get(SIGNATURE) for n in nodes}
    for node, signature in signatures.items():
        if not isinstance(signature, str) or not signature:
            raise RoundFailed(f"party {node} sent its key unsigned")
    key = replies[active.node].arrays.get(PAYLOAD, Arrays()).get(KEY)
    if not isinstance(key, np.ndarray) or key.dtype != np.uint8 or key.ndim != 1:
        raise RoundFailed(f"the label holder {active.node} sent no public key")
    peers = []
    for p in passives:
        peer = replies[p.node].arrays.get(PAYLOAD, Arrays()).get(PEER_KEY)
        if not isinstance(peer, np.ndarray) or peer.dtype != np.uint8 or peer.shape != (KEY_BYTES,):
            raise RoundFailed(f"passive party {p.node} sent no mask key")
        peers.append(peer)
    log.info("vertical LR: label holder %s, passive %s, %d train and %d test rows",
             active.node, [p.node for p in passives], train, test)  # fmt: skip
    signed = {n: str(s) for n, s in signatures.items()}
    return _Setup(active, passives, key, np.stack(peers), train, test, signed)


def _finish(relay: Relay, active: Party, passives: list[Party], params: VerticalLRParams
            ) -> dict[str, Arrays]:  # fmt: skip
    replies = relay.step(
        KIND_FINISH, params.iterations + 2, {p.node: Content() for p in [active, *passives]}
    )
    if not params.reveal_model:
        return {}
    weights = {}
    for p in [active, *passives]:
        got = _payload(replies, p.node)
        w = _floats(got.get(WEIGHTS), len(p.feature_names), f"{p.node}'s {WEIGHTS}")
        weights[p.node] = Arrays({WEIGHTS: w})
        if p.role == ACTIVE:
            weights[p.node][BIAS] = _floats(got.get(BIAS), 1, f"{p.node}'s {BIAS}")
    return weights


def _report(context: RunContext, step: int, metrics: Metrics, sent: dict[str, int],
            received: dict[str, int], seconds: float) -> None:  # fmt: skip
    train = {k: v for k, v in metrics.items() if not k.startswith("test_")}
    test = {k.removeprefix("test_"): v for k, v in metrics.items() if k.startswith("test_")}
    train["bytes"] = sum(sent.values()) + sum(received.values())
    nodes = [NodeResult(node, "train", Outcome.OK, {"bytes_sent": received[node],
                        "bytes_received": sent[node]}) for node in sorted(sent)]  # fmt: skip
    context.report(RoundRecord(step, train_metrics=train, evaluate_metrics=test, nodes=nodes,
                               seconds=seconds))  # fmt: skip


def _floats(value: object, length: int, what: str) -> np.ndarray:
    """A party's float vector, or the run stops here naming the party and the field."""
    try:
        return float_vector(value, length, what)
    except UpdateRejected as exc:
        raise RoundFailed(f"vertical LR: {exc}") from exc


def _masked(value: object, length: int, what: str) -> np.ndarray:
    """A passive party's masked logits: uint64 of one per row (their values look random)."""
    try:
        return uint64_matrix(value, (length,), what)
    except UpdateRejected as exc:
        raise RoundFailed(f"vertical LR: {exc}") from exc


def _payload(replies: dict[str, Content], node: str) -> Arrays:
    return replies[node].arrays.get(PAYLOAD, Arrays())


def _check_ciphertexts(value: object, count: int, key_bytes: int, what: str) -> None:
    """Ciphertexts are below ``n**2``: twice the key's bytes each."""
    _check_uint8(value, (count, 2 * key_bytes), what)


def _check_plain(value: object, count: int, key_bytes: int, what: str) -> None:
    _check_uint8(value, (count, key_bytes), what)


def _check_uint8(value: object, shape: tuple[int, int], what: str) -> None:
    if not isinstance(value, np.ndarray) or value.dtype != np.uint8 or value.shape != shape:
        got = value.shape if isinstance(value, np.ndarray) else type(value).__name__
        raise RoundFailed(f"vertical LR: {what} must be uint8 of shape {shape}, got {got}")
