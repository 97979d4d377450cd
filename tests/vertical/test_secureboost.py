"""Vertical gradient boosting (SecureBoost-style) over a real simulation grid.

The three-party heart split of examples/vertical_heart, rows aligned directly
(the PSI has its own tests): the held-out accuracy is within 0.02 of LightGBM
trained with the same hyper-parameters on the joined rows; nothing the server
receives carries labels or gradients in the clear; hostile replies and tasks
are refused.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from consortium.client.app import ClientApp, Handler
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import ConfigError, RoundFailed, UpdateRejected
from consortium.core.message import CONFIG, Content, Message
from consortium.simulation.grid import SimulationGrid
from consortium.vertical import boost_protocol as p
from consortium.vertical.boost import BoostParams, register_vertical_boost, run_vertical_boost
from consortium.vertical.logistic_party import local_view

from . import recording
from .recording import Recording

pytest.importorskip("phe")
pytest.importorskip("lightgbm")

APP = Path(__file__).resolve().parents[2] / "examples" / "vertical_heart"
sys.path.insert(0, str(APP))
import vertical_heart as vh  # noqa: E402

NODES = list(vh.PARTIES)
RUN_CONFIG: dict[str, Any] = {"vsb-trees": 10, "vsb-key-bits": 512, "vsb-bins": 16}
SHARED = sorted(set.intersection(*(set(vh.party_data(n).ids) for n in NODES)))


class RunLog(recording.RunLog):
    run_id = "vsb-test"


def _app(*mods: Any) -> ClientApp:
    app = ClientApp(mods=list(mods))
    register_vertical_boost(app, vh.node_party, lambda context: SHARED)
    return app


def _grid(app: ClientApp, nodes: Sequence[str] = NODES, **config: Any) -> SimulationGrid:
    return SimulationGrid(app, list(nodes), node_config=lambda i, n: {"party": n},
                          run_config={**RUN_CONFIG, **config})  # fmt: skip


@pytest.fixture(scope="module")
def trained() -> tuple[Any, RunLog, Recording]:
    log = RunLog()
    grid = Recording(_grid(_app()))
    result = run_vertical_boost(grid, log, BoostParams.from_config(RUN_CONFIG), NODES)
    return result, log, grid


def test_within_002_of_lightgbm_on_the_three_party_split(trained: Any) -> None:
    result, log, _ = trained
    central = vh.central_boost_baseline(RUN_CONFIG)
    assert central["shared"] == len(SHARED) == 377
    assert abs(result.metrics["test_accuracy"] - central["test_accuracy"]) <= 0.02
    assert abs(result.metrics["accuracy"] - central["train_accuracy"]) <= 0.02
    assert result.metrics["test_accuracy"] > 0.7  # far above the majority class
    # one record per tree: the loss falls, bytes are counted for every party
    assert [r.round for r in log.rounds] == list(range(1, 11))
    assert log.rounds[-1].train_metrics["loss"] < log.rounds[0].train_metrics["loss"] - 0.1
    assert {n.node_id for n in log.rounds[0].nodes} == set(NODES)
    assert result.bytes_exchanged >= sum(r.train_metrics["bytes"] for r in log.rounds) > 0


def test_trees_record_which_party_owns_each_split(trained: Any) -> None:
    result, _, _ = trained
    assert len(result.owners) == 10 and all(len(tree) == 7 for tree in result.owners)
    owners = {o for tree in result.owners for o in tree}
    assert owners <= {"", *NODES}
    assert {"hospital", "cardiology"} <= owners  # both sides' columns are used
    assert all(tree[0] for tree in result.owners)  # every root is split


def test_the_server_receives_no_labels_or_gradients_in_the_clear(trained: Any) -> None:
    _, _, grid = trained
    params = BoostParams.from_config(RUN_CONFIG)
    view = local_view(vh.party_data("hospital"), SHARED, params.split_view)
    assert view.y_train is not None and view.y_test is not None
    rate = view.y_train.mean()
    g0 = rate - view.y_train  # the first tree's gradients: the labels, shifted
    checked = 0
    for message in [*grid.received, *grid.sent]:
        assert message.content is not None
        raw = bytes(message.to_bytes())
        for y in (view.y_train, view.y_test):
            for dtype in (np.int64, np.int32, np.uint8, np.float64, np.float32, np.bool_):
                assert y.astype(dtype).tobytes() not in raw
        assert g0.tobytes() not in raw and g0.astype(np.float32).tobytes() not in raw
        for record in message.content.arrays.values():
            for array in record.values():
                for y in (view.y_train, view.y_test):
                    if array.dtype.kind in "fiu" and array.shape[-1:] == y.shape:
                        checked += 1
                        for row in array.reshape(-1, y.shape[0]):
                            assert not np.array_equal(row != 0, y == 1)
                            assert not np.array_equal(row != 0, y == 0)
    assert checked > 0  # the node assignments and partitions were looked at
    grads = [m for m in grid.received if m.metadata.kind == p.KIND_GRADIENTS]
    first = grads[0].content.arrays[p.PAYLOAD][p.GRAD]  # type: ignore[union-attr]
    assert first.shape == (len(view.y_train), 2, 128)  # ciphertexts (512-bit key), not numbers


def test_two_parties_train_too() -> None:
    nodes = ["hospital", "clinical-lab"]
    config = {**RUN_CONFIG, "vsb-trees": 2, "vsb-depth": 2}
    result = run_vertical_boost(_grid(_app(), nodes, **config), RunLog(),
                                BoostParams.from_config(config), nodes)  # fmt: skip
    assert len(result.owners) == 2 and 0.6 < result.metrics["test_accuracy"] <= 1.0


def _lying(kind: str, field: str, value: Any) -> Any:
    """A mod that makes the cardiology node answer ``kind`` with ``field`` replaced."""

    def mod(msg: Message, context: Context, call_next: Handler) -> Message:
        reply = call_next(msg, context)
        if context.node_id == "cardiology" and msg.metadata.kind == kind:
            assert reply.content is not None
            arrays = reply.content.arrays[p.PAYLOAD]
            arrays[field] = value(arrays[field])
        return reply

    return mod


def _flip_outside(a: np.ndarray) -> np.ndarray:
    out = a.copy()
    out[:, :] = 1  # every row "goes left": most are not in the node
    return out


def _forging(msg: Message, context: Context, call_next: Handler) -> Message:
    """A mod: the cardiology node sends valid ciphertexts of something else — each
    hessian sum cubed, so three times the sum, outside the node for a heavy left child."""
    reply = call_next(msg, context)
    if context.node_id == "cardiology" and msg.metadata.kind == p.KIND_HISTOGRAM:
        assert reply.content is not None
        n = int.from_bytes(context.state.arrays[p.PAYLOAD]["key"].tobytes(), "big")
        hist = reply.content.arrays[p.PAYLOAD][p.HIST].copy()
        for i in range(hist.shape[0]):
            c = int.from_bytes(hist[i, 1].tobytes(), "big")
            hist[i, 1] = np.frombuffer(pow(c, 3, n * n).to_bytes(hist.shape[2], "big"), np.uint8)
        reply.content.arrays[p.PAYLOAD][p.HIST] = hist
    return reply


@pytest.mark.parametrize(
    ("kind", "field", "value", "match"),
    [
        (p.KIND_HISTOGRAM, p.HIST, lambda a: a[:-1], "cardiology's hist must be uint8"),
        (p.KIND_PARTITION, p.LEFT, _flip_outside, "cardiology sends rows left that are not"),
        (p.KIND_PARTITION, p.LEFT_TEST, lambda a: a.astype(np.int64), "must be a uint8"),
    ],
)
def test_a_hostile_reply_is_refused(kind: str, field: str, value: Any, match: str) -> None:
    nodes = ["hospital", "cardiology"]
    config = {**RUN_CONFIG, "vsb-trees": 1}
    grid = _grid(_app(_lying(kind, field, value)), nodes, **config)
    with pytest.raises(RoundFailed, match=match):
        run_vertical_boost(grid, RunLog(), BoostParams.from_config(config), nodes)


def test_valid_ciphertexts_of_forged_sums_are_refused() -> None:
    nodes = ["hospital", "cardiology"]
    config = {**RUN_CONFIG, "vsb-trees": 1}
    grid = _grid(_app(_forging), nodes, **config)
    with pytest.raises(RoundFailed, match="passive party 1's 'hist' holds sums outside its node"):
        run_vertical_boost(grid, RunLog(), BoostParams.from_config(config), nodes)


class Parties:
    """The label holder and one passive party called directly, their state kept."""

    def __init__(self) -> None:
        self.app = _app()
        self.ctx = {n: Context(node_id=n, node_config={"party": n}, run_config=dict(RUN_CONFIG))
                    for n in ("hospital", "cardiology")}  # fmt: skip

    def ask(self, node: str, kind: str, arrays: dict[str, Any] | None = None,
            config: dict[str, Any] | None = None) -> Arrays:  # fmt: skip
        content = Content(arrays={p.PAYLOAD: Arrays(arrays or {})}, configs={CONFIG: config or {}})
        msg = Message.create(run_id="r", dst=node, round=1, kind=kind, content=content)
        reply = self.app(msg, self.ctx[node])
        assert reply.content is not None
        self.said = reply.content.configs.get(p.PAYLOAD, {})  # the reply's own config
        return reply.content.arrays.get(p.PAYLOAD, Arrays())

    def start(self) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        told = {p.PARTY_LIST: ["hospital", "cardiology"]}
        self.ask("cardiology", p.KIND_SETUP, config=told)
        key = self.ask("hospital", p.KIND_SETUP, config=told)[p.KEY]
        key_signature = self.said[p.SIGNATURE]
        grad = self.ask("hospital", p.KIND_GRADIENTS, config={p.TREE: 1, p.TRAINING: True})[p.GRAD]
        #: what a tree's first histogram task carries: the label holder's signatures
        self.signed = {p.HOLDER_NODE: "hospital", p.KEY_SIGNATURE: key_signature,
                       p.GRAD_SIGNATURE: self.said[p.GRAD_SIGNATURE],
                       p.ASSIGN_SIGNATURE: self.said[p.ASSIGN_SIGNATURE]}  # fmt: skip
        rows = grad.shape[0]
        tests = len(SHARED) - rows
        assign = {p.ASSIGN: np.zeros(rows, np.int64), p.ASSIGN_TEST: np.zeros(tests, np.int64)}
        return key, grad, assign


def test_the_passive_party_checks_every_task() -> None:
    parties = Parties()
    key, grad, assign = parties.start()
    at = {p.TREE: 1, p.LEVEL: 0, **parties.signed}
    bad_assign = {**assign, p.ASSIGN: assign[p.ASSIGN] + 1}  # node 1 at level 0: no such node
    for arrays, match in (
        ({p.KEY: key, **assign}, "needs"),
        ({p.KEY: key, p.GRAD: grad[1:], **assign}, "shape"),
        ({p.KEY: key, p.GRAD: np.full_like(grad, 0xFF), **assign}, "out of range"),
        ({p.KEY: key[:16], p.GRAD: grad, **assign}, "512-8192 bits"),
        ({p.KEY: key, p.GRAD: grad, **bad_assign}, "outside"),
    ):
        with pytest.raises(UpdateRejected, match=match):
            parties.ask("cardiology", p.KIND_HISTOGRAM, arrays, at)
    parties.ctx["cardiology"].run_config["vsb-key-bits"] = 1024  # the run asks for more
    with pytest.raises(UpdateRejected, match="512 bits, the run says 1024"):
        parties.ask("cardiology", p.KIND_HISTOGRAM, {p.KEY: key, p.GRAD: grad, **assign}, at)
    parties.ctx["cardiology"].run_config["vsb-key-bits"] = 512
    with pytest.raises(UpdateRejected, match="out of order"):  # level 1 before level 0
        parties.ask("cardiology", p.KIND_HISTOGRAM, {**assign}, {p.TREE: 1, p.LEVEL: 1})
    with pytest.raises(UpdateRejected, match="out of order"):  # a partition before any histogram
        parties.ask("cardiology", p.KIND_PARTITION, {p.SPLITS: np.zeros((1, 2), np.int64)}, at)
    hist = parties.ask("cardiology", p.KIND_HISTOGRAM, {p.KEY: key, p.GRAD: grad, **assign}, at)
    candidates = hist[p.HIST].shape[0]
    with pytest.raises(UpdateRejected, match="outside"):
        parties.ask("cardiology", p.KIND_PARTITION,
                    {p.SPLITS: np.asarray([[0, candidates]], np.int64)}, at)  # fmt: skip
    with pytest.raises(UpdateRejected, match="1-1"):  # two splits of the only node
        parties.ask("cardiology", p.KIND_PARTITION,
                    {p.SPLITS: np.asarray([[0, 0], [0, 1]], np.int64)}, at)  # fmt: skip
    other = key.copy()
    other[-1] ^= 0x02
    with pytest.raises(UpdateRejected, match="out of order"):  # the same tree again
        parties.ask("cardiology", p.KIND_HISTOGRAM, {p.KEY: other, p.GRAD: grad, **assign}, at)
    left = parties.ask("cardiology", p.KIND_PARTITION,
                       {p.SPLITS: np.asarray([[0, 0]], np.int64)}, at)  # fmt: skip
    assert left[p.LEFT].shape == (1, grad.shape[0]) and left[p.LEFT].dtype == np.uint8
    with pytest.raises(UpdateRejected, match="out of order"):  # each partition once
        parties.ask("cardiology", p.KIND_PARTITION, {p.SPLITS: np.asarray([[0, 0]], np.int64)}, at)


def test_the_label_holder_checks_every_task() -> None:
    parties = Parties()
    key, grad, assign = parties.start()
    at = {p.TREE: 1, p.LEVEL: 0, **parties.signed}
    hist = parties.ask("cardiology", p.KIND_HISTOGRAM, {p.KEY: key, p.GRAD: grad, **assign}, at)
    h = hist[p.HIST]
    empty = {p.LEFT: np.zeros((0, grad.shape[0]), np.uint8),
             p.LEFT_TEST: np.zeros((0, assign[p.ASSIGN_TEST].size), np.uint8)}  # fmt: skip
    count = [h.shape[0]]
    n = int.from_bytes(key.tobytes(), "big")
    forged = h.copy()  # a valid encryption (r = 1) of a sum no node of these rows can have
    forged[0, 0] = np.frombuffer(((1 + n * 2**100) % (n * n)).to_bytes(128, "big"), np.uint8)
    with pytest.raises(UpdateRejected, match="out of order"):  # gradients twice for one tree
        parties.ask("hospital", p.KIND_GRADIENTS, config={p.TREE: 1, p.TRAINING: True})
    with pytest.raises(UpdateRejected, match="out of order"):  # a level skipped
        parties.ask("hospital", p.KIND_SPLIT, {**empty, p.HIST: h},
                    {p.TREE: 1, p.LEVEL: 1, p.COUNTS: count})  # fmt: skip
    for arrays, counts, match in (
        ({**empty, p.HIST: h[1:]}, count, "shape"),
        ({**empty, p.HIST: h}, [count[0] + 1], "shape"),
        ({**empty, p.HIST: h}, [-1], "counts of candidates"),
        ({**empty, p.HIST: forged}, count, "outside its node"),
        ({**empty, p.LEFT: np.zeros((1, grad.shape[0]), np.uint8), p.HIST: h}, count, "shape"),
    ):
        with pytest.raises(UpdateRejected, match=match):
            parties.ask("hospital", p.KIND_SPLIT, arrays, {**at, p.COUNTS: counts})
    decided = parties.ask("hospital", p.KIND_SPLIT, {**empty, p.HIST: h}, {**at, p.COUNTS: count})
    assert decided[p.DECISIONS].shape == (1, 2) and decided[p.DECISIONS][0, 0] >= 0
    with pytest.raises(UpdateRejected, match="out of order"):  # each level decided once
        parties.ask("hospital", p.KIND_SPLIT, {**empty, p.HIST: h}, {**at, p.COUNTS: count})


def test_run_config_is_checked_by_name() -> None:
    for key, value in (("vsb-trees", 0), ("vsb-depth", 9), ("vsb-key-bits", 256),
                       ("vsb-lr", "fast"), ("vsb-bins", 1), ("vsb-trees", 2.5)):  # fmt: skip
        with pytest.raises(ConfigError, match=key):
            BoostParams.from_config({key: value})
