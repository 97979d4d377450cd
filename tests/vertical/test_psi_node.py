"""The node side of PSI against a hostile server: every check that keeps it from being used
as an oracle or fed garbage, called the way a node calls its handlers."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
from nacl import bindings as sodium

from consortium.client.task import run_task
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import ConfigError, NodeError, SecurityError
from consortium.core.message import Content, Message
from consortium.vertical import NODE_MAX_SESSIONS, NODE_SECRET, psi_result
from consortium.vertical import psi_crypto as crypto
from consortium.vertical import psi_protocol as p

from .conftest import psi_client, simulate_psi

IDS = {"hub": [f"id{i}" for i in range(10)], "lab": [f"id{i}" for i in range(5, 20)]}


class Node:
    """One node's handlers and context, driven by hand as a (hostile) server would."""

    def __init__(self, name: str, ids: list[str], **node_config: Any) -> None:
        self.app = psi_client({name: ids})
        self.ctx = Context(node_id=name, node_config=node_config)

    def ask(
        self, kind: str, config: dict[str, Any], arrays: dict[str, Any] | None = None
    ) -> Message:
        content = Content(
            arrays={p.PAYLOAD: Arrays(arrays)} if arrays is not None else {},
            configs={"config": {p.SESSION: "s1", **config}},
        )
        task = Message.create(
            run_id="run", dst=self.ctx.node_id, round=0, kind=kind, content=content
        )
        result = run_task(self.app, task, self.ctx)  # a raise leaves the state as it was? see below
        return result.reply

    def ok(
        self, kind: str, config: dict[str, Any], arrays: dict[str, Any] | None = None
    ) -> Message:
        reply = self.ask(kind, config, arrays)
        assert reply.error is None, reply.error
        return reply

    def refused(
        self, kind: str, config: dict[str, Any], arrays: dict[str, Any] | None = None
    ) -> str:
        reply = self.ask(kind, config, arrays)
        assert reply.error is not None, f"{kind} was not refused"
        return f"{reply.error.code}: {reply.error.reason}"


def _party(**node_config: Any) -> Node:
    node = Node("lab", IDS["lab"], **node_config)
    node.ok(p.KIND_START, {p.ROLE: p.ROLE_PARTY, p.HUB: "hub"})
    return node


def _valid_points(n: int) -> np.ndarray:
    return crypto.hash_and_blind([f"x{i}" for i in range(n)], os.urandom(32), crypto.new_key())


def test_blind_refuses_what_is_not_a_point_of_the_group() -> None:
    node = _party()
    good = _valid_points(3)
    order_two = bytes.fromhex("ec" + "ff" * 30 + "7f")  # the point (0, -1), order 2
    mixed = sodium.crypto_core_ed25519_add(bytes(good[0]), order_two)
    identity = b"\x01" + bytes(31)
    for bad in (identity, bytes(32), order_two, mixed, b"\xff" * 32):
        rows = good.copy()
        rows[1] = np.frombuffer(bad, np.uint8)
        reason = node.refused(p.KIND_BLIND, {p.OFFSET: 0, p.TOTAL: 3}, {p.POINTS: rows})
        assert "SecurityError" in reason and "row 1 is not a valid point" in reason
    for shaped in (good.reshape(-1), good[:, :16], good.astype(np.int16)):
        reason = node.refused(p.KIND_BLIND, {p.OFFSET: 0, p.TOTAL: 3}, {p.POINTS: shaped})
        assert "points must" in reason
    # none of those counted: the real rows are blinded once, then never again
    node.ok(p.KIND_BLIND, {p.OFFSET: 0, p.TOTAL: 3}, {p.POINTS: good})
    assert "already received" in node.refused(
        p.KIND_BLIND, {p.OFFSET: 0, p.TOTAL: 3}, {p.POINTS: good}
    )


def test_blind_serves_each_row_once_and_one_total() -> None:
    node = _party()
    pts = _valid_points(4)
    node.ok(p.KIND_BLIND, {p.OFFSET: 0, p.TOTAL: 6}, {p.POINTS: pts[:2]})
    assert "already received" in node.refused(
        p.KIND_BLIND, {p.OFFSET: 1, p.TOTAL: 6}, {p.POINTS: pts[2:4]}
    )  # overlaps row 1
    assert "earlier 6" in node.refused(p.KIND_BLIND, {p.OFFSET: 2, p.TOTAL: 9}, {p.POINTS: pts})
    assert "run past" in node.refused(p.KIND_BLIND, {p.OFFSET: 4, p.TOTAL: 6}, {p.POINTS: pts[:3]})
    node.ok(p.KIND_BLIND, {p.OFFSET: 2, p.TOTAL: 6}, {p.POINTS: pts})


def test_blinding_commutes_and_matches_only_equal_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    hkey, k1, k2 = os.urandom(32), crypto.new_key(), crypto.new_key()
    a = crypto.blind(crypto.hash_and_blind(["u", "v"], hkey, k1), k2, what="t")
    b = crypto.blind(crypto.hash_and_blind(["v", "w"], hkey, k2), k1, what="t")
    assert bytes(a[1]) == bytes(b[0]) and bytes(a[0]) != bytes(b[1])
    other = crypto.blind(crypto.hash_and_blind(["v"], os.urandom(32), k2), k1, what="t")
    assert bytes(other[0]) != bytes(a[1])  # another hash key: another point
    monkeypatch.setattr(crypto, "_MIN_PARALLEL", 1)  # threads for a small batch too
    many = [f"i{n}" for n in range(101)]
    threaded = crypto.hash_and_blind(many, hkey, k1, threads=3)
    assert np.array_equal(threaded, crypto.hash_and_blind(many, hkey, k1))
    assert np.array_equal(
        crypto.blind(threaded, k2, what="t", threads=3), crypto.blind(threaded, k2, what="t")
    )


def test_a_second_session_must_bring_the_same_ids_and_stay_under_the_limit() -> None:
    node = Node("lab", IDS["lab"], **{NODE_MAX_SESSIONS: 2})
    start = {p.ROLE: p.ROLE_PARTY, p.HUB: "hub"}
    node.ok(p.KIND_START, start)
    node.ok(p.KIND_START, {**start, p.SESSION: "s2"})  # a restart over the same set
    assert "limit" in node.refused(p.KIND_START, {**start, p.SESSION: "s3"})

    changing = {"ids": IDS["lab"]}
    node = Node("lab", [])
    node.app = psi_client({"lab": changing["ids"]})
    node.ok(p.KIND_START, start)
    changing["ids"] = IDS["lab"][:-1]  # the data changed between two sessions of a run
    node.app = psi_client({"lab": changing["ids"]})
    assert "another set of ids" in node.refused(p.KIND_START, {**start, p.SESSION: "s2"})


def test_tasks_outside_the_running_session_or_role_are_refused() -> None:
    node = _party()
    pts = _valid_points(2)
    assert "not running here" in node.refused(
        p.KIND_BLIND, {p.SESSION: "other", p.OFFSET: 0, p.TOTAL: 2}, {p.POINTS: pts}
    )
    assert "hub PSI task" in node.refused(
        p.KIND_HUB_MATCH, {p.PEER: "hub", p.OFFSET: 0, p.TOTAL: 2}, {p.POINTS: pts}
    )
    assert "must be an int" in node.refused(p.KIND_SEND, {p.OFFSET: -1, p.COUNT: 1})
    assert "must be an int" in node.refused(p.KIND_SEND, {p.OFFSET: 0, p.COUNT: 16})  # > size
    assert "must be an int" in node.refused(p.KIND_SEND, {p.OFFSET: True, p.COUNT: 1})
    hub = Node("hub", IDS["hub"])
    bad = {p.ROLE: p.ROLE_HUB, p.HUB: "hub"}
    assert "non-empty list" in hub.refused(p.KIND_START, {**bad, p.PEERS: []})
    assert "repeats" in hub.refused(p.KIND_START, {**bad, p.PEERS: ["lab", "hub"]})
    hub.ok(p.KIND_START, {**bad, p.PEERS: ["lab"]})
    assert "not a party" in hub.refused(
        p.KIND_HUB_DOUBLE, {p.PEER: "mallory", p.OFFSET: 0}, {p.POINTS: pts}
    )
    assert "before its blinding" in hub.refused(
        p.KIND_HUB_MATCH, {p.PEER: "lab", p.OFFSET: 0, p.TOTAL: 2}, {p.POINTS: pts}
    )
    assert "before every row" in hub.refused(p.KIND_HUB_FINISH, {})


def test_deliver_refuses_positions_out_of_range_or_repeated_and_then_forgets_the_key() -> None:
    node = _party()
    size = len(IDS["lab"])
    for bad in ([0, size], [-1], [3, 3]):
        fresh = _party()
        reason = fresh.refused(
            p.KIND_DELIVER, {p.OFFSET: 0, p.TOTAL: len(bad)},
            {p.POSITIONS: np.asarray(bad, np.int64)},
        )  # fmt: skip
        assert "SecurityError" in reason
    assert "int64" in node.refused(
        p.KIND_DELIVER, {p.OFFSET: 0, p.TOTAL: 1}, {p.POSITIONS: np.asarray([1], np.int32)}
    )
    node.ok(p.KIND_DELIVER, {p.OFFSET: 0, p.TOTAL: 2}, {p.POSITIONS: np.asarray([4, 1], np.int64)})
    result = psi_result(node.ctx)
    assert len(result.ids) == 2 and result.ids == sorted(result.ids)
    assert [IDS["lab"][r] for r in result.rows] == result.ids
    # the session is over: the key is gone, nothing more is blinded
    assert "not running here" in node.refused(
        p.KIND_BLIND, {p.OFFSET: 0, p.TOTAL: 2}, {p.POINTS: _valid_points(2)}
    )


def test_a_failed_task_leaves_the_node_state_as_it_was() -> None:
    node = _party()
    before = node.ctx.state.arrays["consortium.psi.session"]["key"].copy()
    pts = _valid_points(2)
    pts[1] = 0
    node.refused(p.KIND_BLIND, {p.OFFSET: 0, p.TOTAL: 2}, {p.POINTS: pts})
    # run_task hands back the reply; the engine then drops the state: here the handler
    # itself must not have marked the rows (records are replaced only on success)
    assert "seen.blind" not in node.ctx.state.arrays["consortium.psi.session"]
    assert bytes(before) == bytes(node.ctx.state.arrays["consortium.psi.session"]["key"])


def test_no_result_before_psi_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="no PSI result"):
        psi_result(Context(node_id="lab"))


def test_the_shared_secret_keys_the_hash() -> None:
    """Parties with the same psi-secret find their shared ids; with another secret (or none:
    what a server that guesses ids computes) the points match nothing, and the peer, whose
    result's tag differs from the hub's, refuses it."""
    sets = {"hub": IDS["hub"], "lab": IDS["lab"]}
    same = simulate_psi(sets, node_config=lambda i, n: {NODE_SECRET: "s3cret"})
    assert same.ids["lab"] == sorted(set(IDS["hub"]) & set(IDS["lab"]))
    assert same.summary is not None and same.summary.tagged
    for hub_secret in ({}, {NODE_SECRET: "other"}):

        def config(i: int, n: str, hub: dict[str, Any] = hub_secret) -> dict[str, Any]:
            return {NODE_SECRET: "s3cret"} if i else hub

        with pytest.raises(NodeError, match="tags do not match"):
            simulate_psi(sets, node_config=config)
    # a peer without a secret cannot check: it keeps the (empty) result
    other = simulate_psi(sets, node_config=lambda i, n: {} if i else {NODE_SECRET: "s3cret"})
    assert other.ids["lab"] == other.ids["hub"] == []


def test_bad_node_settings_are_named() -> None:
    with pytest.raises(ConfigError, match="psi-secret"):
        _start_with(**{NODE_SECRET: 42})
    with pytest.raises(ConfigError, match="psi-max-sessions"):
        _start_with(**{NODE_MAX_SESSIONS: 0})


def _start_with(**node_config: Any) -> None:
    node = Node("lab", IDS["lab"], **node_config)
    task = Message.create(
        run_id="r", dst="lab", round=0, kind=p.KIND_START,
        content=Content.of(config={p.SESSION: "s", p.ROLE: p.ROLE_PARTY, p.HUB: "hub"}),
    )  # fmt: skip
    node.app(task, node.ctx)


def test_a_hostile_point_from_a_peer_on_the_hub_is_refused() -> None:
    hub = Node("hub", IDS["hub"])
    hub.ok(p.KIND_START, {p.ROLE: p.ROLE_HUB, p.HUB: "hub", p.PEERS: ["lab"]})
    size = len(IDS["hub"])
    hub.ok(p.KIND_HUB_DOUBLE, {p.PEER: "lab", p.OFFSET: 0}, {p.POINTS: _valid_points(size)})
    bad = _valid_points(2)
    bad[0] = np.frombuffer(b"\x01" + bytes(31), np.uint8)  # the identity
    reason = hub.refused(
        p.KIND_HUB_MATCH, {p.PEER: "lab", p.OFFSET: 0, p.TOTAL: 2}, {p.POINTS: bad}
    )
    assert "row 0 is not a valid point" in reason
    with pytest.raises(SecurityError):
        crypto.check_points(np.zeros((2, 31), np.uint8), what="t")
