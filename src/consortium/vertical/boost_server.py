"""Vertical gradient boosting as a program over the Grid: the server only relays.

:func:`run_vertical_boost` drives the parties through the SecureBoost-style
protocol of ``docs/vertical.md`` ("Vertical gradient boosting (SecureBoost)"):
setup; per tree the label holder's encrypted gradients, then level by level
the passive parties' encrypted histograms, the label holder's decisions, the
owners' partitions and the label holder's signed assignment of the next
level; a last gradients pass that only evaluates. The server
sees ciphertexts, node assignments of rows (the instance space, which the
parties see too), "party k, candidate c" decisions and the label holder's
metrics; it checks what it relays (shapes, dtypes, ranges) so one party's
garbage stops the run here with a message naming the party. Each tree is one
:class:`RoundRecord`: loss and accuracy (train and held-out), every party's
bytes in and out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from consortium.core.arrays import Arrays
from consortium.core.errors import RoundFailed, UpdateRejected
from consortium.core.grid import Grid
from consortium.core.history import NodeResult, Outcome, RoundRecord
from consortium.core.message import CONFIG, Content
from consortium.core.records import Config, Metrics, Scalar
from consortium.vertical.boost_party import children
from consortium.vertical.boost_protocol import (
    ACTIVE,
    ASSIGN,
    ASSIGN_SIGNATURE,
    ASSIGN_TEST,
    CANDIDATES,
    COUNTS,
    DECISIONS,
    FEATURE_NAMES,
    GRAD,
    GRAD_SIGNATURE,
    HIST,
    HOLDER_NODE,
    KEY,
    KEY_SIGNATURE,
    KIND_ASSIGN,
    KIND_FINISH,
    KIND_GRADIENTS,
    KIND_HISTOGRAM,
    KIND_PARTITION,
    KIND_SETUP,
    KIND_SPLIT,
    LABEL_HOLDER,
    LEFT,
    LEFT_TEST,
    LEVEL,
    MAX_CANDIDATES,
    MAX_PASSIVES,
    OWNERS,
    PARTITION_SIGNATURE,
    PARTITION_SIGNATURES,
    PARTY_LIST,
    PASSIVE,
    PAYLOAD,
    ROLE,
    SIGNATURE,
    SPLITS,
    TEST_ROWS,
    TRAIN_ROWS,
    TRAINING,
    TREE,
    BoostParams,
    int_array,
    mask_array,
)
from consortium.vertical.logistic_server import RunContext
from consortium.vertical.relay import Party, Relay, SetupKeys, read_parties

log = logging.getLogger("consortium.vertical")
_T = TypeVar("_T")


@dataclass
class VerticalBoostResult:
    """What the server learnt: the parties, the last metrics, who owns each split."""

    active: Party
    passives: list[Party]
    metrics: Metrics
    #: per tree, per internal node (level order): the node owning its split, "" for none
    owners: list[list[str]] = field(default_factory=list)
    bytes_exchanged: int = 0


@dataclass(frozen=True)
class _Setup:
    active: Party
    passives: list[Party]
    candidates: list[int]  # each passive party's number of split candidates
    key: np.ndarray
    train_rows: int
    test_rows: int
    key_signature: str  # the label holder's, over its key (relayed with each tree's gradients)


def run_vertical_boost(
    grid: Grid, context: RunContext, params: BoostParams, parties: Sequence[str]
) -> VerticalBoostResult:
    """Train ``params.trees`` trees across ``parties`` (2-9 nodes, one label holder).

    Round ``t`` of the reported history is the model after ``t`` trees.
    """
    relay = Relay(grid, context.run_id, params.timeout, protocol="vertical boosting", unit="tree")
    setup = _setup(relay, list(parties))
    total = sum(sum(counts.values()) for counts in relay.take_counts())
    metrics: Metrics = {}
    started = time.monotonic()
    for t in range(1, params.trees + 2):
        training = t <= params.trees
        flags: Config = {TREE: t, TRAINING: training}
        replies = relay.step(
            KIND_GRADIENTS, t, {setup.active.node: Content(configs={CONFIG: flags})}
        )
        metrics = dict(replies[setup.active.node].metric_values)
        if t > 1:
            sent, received = relay.take_counts()
            total += sum(sent.values()) + sum(received.values())
            _report(context, t - 1, metrics, sent, received, time.monotonic() - started)
            started = time.monotonic()
        if training:
            width = 2 * setup.key.shape[0]
            what = f"{setup.active.node}'s {GRAD}"
            got = _payload(replies[setup.active.node]).get(GRAD)
            grad = _check(got, np.uint8, (setup.train_rows, 2, width), what)
            reply = replies[setup.active.node].configs.get(PAYLOAD, Config())
            signed = _signature(reply, GRAD_SIGNATURE, what)
            root = _signature(reply, ASSIGN_SIGNATURE, f"{setup.active.node}'s level-0 {ASSIGN}")
            _grow(relay, setup, params, t, grad, (signed, root))
    replies = relay.step(KIND_FINISH, params.trees + 2,
                         {p.node: Content() for p in [setup.active, *setup.passives]})  # fmt: skip
    total += sum(sum(counts.values()) for counts in relay.take_counts())
    what = f"{setup.active.node}'s {OWNERS}"
    got = _payload(replies[setup.active.node]).get(OWNERS)
    owners = _check(got, np.int64, (params.trees, 2**params.depth - 1), what)
    names = ["", setup.active.node, *(p.node for p in setup.passives)]
    table = [[names[int(o) + 1] if -1 <= o <= len(setup.passives) else "?" for o in row]
             for row in owners]  # fmt: skip
    return VerticalBoostResult(setup.active, setup.passives, metrics, table, total)


def _grow(relay: Relay, setup: _Setup, params: BoostParams, t: int, grad: np.ndarray,
          signatures: tuple[str, str]) -> None:  # fmt: skip
    """One tree, level by level; the server tracks which open node each row is in.

    ``signatures`` are the label holder's over the tree's gradients and over level
    0's assignment; each later level's assignment it signs at its ``vsb.assign`` step
    (the server's own tracking must agree with it)."""
    active, passives = setup.active.node, setup.passives
    assign = np.zeros(setup.train_rows, dtype=np.int64)
    assign_test = np.zeros(setup.test_rows, dtype=np.int64)
    theirs: list[tuple[np.ndarray, np.ndarray]] = []  # last level's passive partitions
    owners: list[Scalar] = ["" for _ in passives]  # their owners' signatures over them
    assigned = signatures[1]  # the label holder's signature over this level's assignment
    for lv in range(params.depth + 1):
        where: Config = {TREE: t, LEVEL: lv}
        if 0 < lv < params.depth:  # passive parties build on it: the label holder signs it
            assigned = _assign(relay, setup, t, lv, (theirs, owners), (assign, assign_test))
            theirs = []  # applied by the label holder already
        arrays = Arrays({LEFT: _stack([m[0] for m in theirs], setup.train_rows),
                         LEFT_TEST: _stack([m[1] for m in theirs], setup.test_rows)})  # fmt: skip
        config: Config = {**where, PARTITION_SIGNATURES: owners}
        if lv < params.depth:
            first = {KEY: setup.key, GRAD: grad} if lv == 0 else {}
            signed: Config = {HOLDER_NODE: active, KEY_SIGNATURE: setup.key_signature,
                              GRAD_SIGNATURE: signatures[0]} if lv == 0 else {}  # fmt: skip
            replies = relay.step(KIND_HISTOGRAM, t, {p.node: Content(
                arrays={PAYLOAD: Arrays({ASSIGN: assign, ASSIGN_TEST: assign_test, **first})},
                configs={CONFIG: {**where, **signed, ASSIGN_SIGNATURE: assigned}})
                for p in passives})  # fmt: skip
            width = 2 * setup.key.shape[0]
            arrays[HIST] = np.concatenate([
                _check(_payload(replies[p.node]).get(HIST), np.uint8, (2**lv * count, 2, width),
                       f"{p.node}'s {HIST}")
                for p, count in zip(passives, setup.candidates, strict=True)])  # fmt: skip
            config[COUNTS] = list(setup.candidates)
        reply = relay.step(KIND_SPLIT, t, {active: Content(arrays={PAYLOAD: arrays},
                                                          configs={CONFIG: config})})  # fmt: skip
        got = _payload(reply[active])
        decisions = _decisions(got, 2**lv, setup, assign)
        nodes = [j for j in range(2**lv) if decisions[j, 0] >= LABEL_HOLDER]
        if not nodes:
            return
        mine = [j for j in nodes if decisions[j, 0] == LABEL_HOLDER]
        left = dict(zip(mine, _masks(got, setup, assign, assign_test, mine, active), strict=True))
        asks = {}
        for k, p in enumerate(passives, start=1):
            owned = [j for j in nodes if decisions[j, 0] == k]
            if owned:
                pairs = np.asarray([[j, decisions[j, 1]] for j in owned], dtype=np.int64)
                asks[p.node] = (owned, Content(arrays={PAYLOAD: Arrays({SPLITS: pairs})},
                                               configs={CONFIG: where}))  # fmt: skip
        owners = ["" for _ in passives]
        if asks:
            replies = relay.step(KIND_PARTITION, t, {n: c for n, (_, c) in asks.items()})
            for n, (owned, _) in asks.items():
                masks = _masks(_payload(replies[n]), setup, assign, assign_test, owned, n)
                left.update(zip(owned, masks, strict=True))
                owners[[p.node for p in passives].index(n)] = _signature(
                    replies[n].configs.get(PAYLOAD, Config()), PARTITION_SIGNATURE,
                    f"{n}'s {LEFT}")  # fmt: skip
        theirs = [left[j] for j in nodes if decisions[j, 0] != LABEL_HOLDER]
        assign = children(assign, nodes, _stack([left[j][0] for j in nodes], setup.train_rows))
        assign_test = children(
            assign_test, nodes, _stack([left[j][1] for j in nodes], setup.test_rows)
        )


def _assign(relay: Relay, setup: _Setup, t: int, lv: int,
            partitions: tuple[list[tuple[np.ndarray, np.ndarray]], list[Scalar]],
            tracked: tuple[np.ndarray, np.ndarray]) -> str:  # fmt: skip
    """The label holder applies the passive parties' partitions (with their owners'
    signatures) and signs the level's assignment, which must be the one the server
    tracked; its signature."""
    active, (theirs, owners) = setup.active.node, partitions
    arrays = Arrays({LEFT: _stack([m[0] for m in theirs], setup.train_rows),
                     LEFT_TEST: _stack([m[1] for m in theirs], setup.test_rows)})  # fmt: skip
    reply = relay.step(KIND_ASSIGN, t, {active: Content(arrays={PAYLOAD: arrays}, configs={
        CONFIG: {TREE: t, LEVEL: lv, PARTITION_SIGNATURES: owners}})})[active]  # fmt: skip
    got = _payload(reply)
    for name, want in zip((ASSIGN, ASSIGN_TEST), tracked, strict=True):
        if not _same(got.get(name), want):
            raise RoundFailed(f"vertical boosting: {active}'s {name} is not the partitions'")
    return _signature(reply.configs.get(PAYLOAD, Config()), ASSIGN_SIGNATURE,
                      f"{active}'s {ASSIGN}")  # fmt: skip


def _same(value: object, want: np.ndarray) -> bool:
    return (
        isinstance(value, np.ndarray) and value.dtype == want.dtype and np.array_equal(value, want)
    )


def _signature(config: Config, key: str, what: str) -> str:
    """A signature a party's reply carries (checked by the parties that use it)."""
    signature = config.get(key)
    if not isinstance(signature, str) or not signature:
        raise RoundFailed(f"vertical boosting: {what} comes unsigned")
    return signature


def _decisions(got: Arrays, slots: int, setup: _Setup, assign: np.ndarray) -> np.ndarray:
    """The label holder's ``(owner, candidate)`` per slot, each naming a real party,
    candidate and non-empty node, or the run stops."""
    what = f"{setup.active.node}'s {DECISIONS}"
    decisions = _refused(
        lambda: int_array(got.get(DECISIONS), (slots, 2), -1, MAX_CANDIDATES, what)
    )
    for j, (owner, candidate) in enumerate(decisions.tolist()):
        if owner == -1:
            continue
        if owner > len(setup.passives) or not (assign == j).any():
            raise RoundFailed(f"vertical boosting: {what} splits node {j} wrongly")
        limit = setup.candidates[owner - 1] if owner != LABEL_HOLDER else 0
        if (owner == LABEL_HOLDER and candidate != -1) or (
            owner != LABEL_HOLDER and not 0 <= candidate < limit
        ):
            raise RoundFailed(f"vertical boosting: {what} names a candidate its owner lacks")
    return decisions


def _stack(rows: list[np.ndarray], width: int) -> np.ndarray:
    return np.asarray(rows, dtype=np.uint8).reshape(len(rows), width)


def _masks(got: Arrays, setup: _Setup, assign: np.ndarray, assign_test: np.ndarray,
           nodes: list[int], node: str) -> list[tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """A party's left rows of its splits of ``nodes``, each within its node, or the run stops."""
    m = len(nodes)
    left = _refused(lambda: mask_array(got.get(LEFT), (m, setup.train_rows), f"{node}'s {LEFT}"))
    left_test = _refused(lambda: mask_array(got.get(LEFT_TEST), (m, setup.test_rows),
                                            f"{node}'s {LEFT_TEST}"))  # fmt: skip
    for j, row, row_test in zip(nodes, left, left_test, strict=True):
        if (row & (assign != j)).any() or (row_test & (assign_test != j)).any():
            raise RoundFailed(f"vertical boosting: {node} sends rows left that are not in node {j}")
    return list(zip(left, left_test, strict=True))


#: the keys of a boosting setup reply (no feature count: the names are what is checked)
_SETUP_KEYS = SetupKeys(ROLE, FEATURE_NAMES, TRAIN_ROWS, TEST_ROWS, None, ACTIVE, PASSIVE)


def _setup(relay: Relay, nodes: list[str]) -> _Setup:
    if not 2 <= len(nodes) <= MAX_PASSIVES + 1 or len(set(nodes)) != len(nodes):
        raise RoundFailed(f"vertical boosting needs 2-{MAX_PASSIVES + 1} distinct parties: {nodes}")
    task: Config = {PARTY_LIST: list(nodes)}
    replies = relay.step(KIND_SETUP, 0, {n: Content(configs={CONFIG: task}) for n in nodes})
    configs = {n: replies[n].configs.get(PAYLOAD, Config()) for n in nodes}
    active, passives, train, test = read_parties(
        configs, nodes, _SETUP_KEYS, protocol="vertical boosting", min_train=2
    )
    candidates = {}
    for party in passives:
        count = configs[party.node].get(CANDIDATES)
        if (
            isinstance(count, bool)
            or not isinstance(count, int)
            or not 0 <= count <= MAX_CANDIDATES
        ):
            raise RoundFailed(f"party {party.node}'s setup reply counts no split candidates")
        candidates[party.node] = count
    key = replies[active.node].arrays.get(PAYLOAD, Arrays()).get(KEY)
    if not isinstance(key, np.ndarray) or key.dtype != np.uint8 or key.ndim != 1:
        raise RoundFailed(f"the label holder {active.node} sent no public key")
    signature = configs[active.node].get(SIGNATURE)
    if not isinstance(signature, str) or not signature:
        raise RoundFailed(f"the label holder {active.node} sent its key unsigned")
    log.info("vertical boosting: label holder %s, passive %s, %d train and %d test rows",
             active.node, [p.node for p in passives], train, test)  # fmt: skip
    counts = [candidates[p.node] for p in passives]
    return _Setup(active, passives, counts, key, train, test, signature)


def _report(context: RunContext, step: int, metrics: Metrics, sent: dict[str, int],
            received: dict[str, int], seconds: float) -> None:  # fmt: skip
    train = {k: v for k, v in metrics.items() if not k.startswith("test_")}
    test = {k.removeprefix("test_"): v for k, v in metrics.items() if k.startswith("test_")}
    train["bytes"] = sum(sent.values()) + sum(received.values())
    nodes = [NodeResult(node, "train", Outcome.OK, {"bytes_sent": received[node],
                        "bytes_received": sent[node]}) for node in sorted(sent)]  # fmt: skip
    context.report(RoundRecord(step, train_metrics=train, evaluate_metrics=test, nodes=nodes,
                               seconds=seconds))  # fmt: skip


def _refused(check: Callable[[], _T]) -> _T:
    try:
        return check()
    except UpdateRejected as exc:
        raise RoundFailed(f"vertical boosting: {exc}") from exc


def _check(value: object, dtype: type, shape: tuple[int, ...], what: str) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.dtype != dtype or value.shape != shape:
        got = value.shape if isinstance(value, np.ndarray) else type(value).__name__
        raise RoundFailed(f"vertical boosting: {what} must be {dtype.__name__} {shape}, got {got}")
    return value


def _payload(content: Content) -> Arrays:
    return content.arrays.get(PAYLOAD, Arrays())
