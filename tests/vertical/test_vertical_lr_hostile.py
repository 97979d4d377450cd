"""Vertical LR refuses what a hostile server or party could send: each step's checks.

The handlers are called directly with crafted tasks (the node's state kept
in one Context per party, as the engine keeps it); the server side is run over
a simulation grid whose cardiology node lies.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from consortium.client.app import ClientApp, Handler
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import ConfigError, RoundFailed, UpdateRejected
from consortium.core.history import RoundRecord
from consortium.core.message import CONFIG, Content, Message
from consortium.simulation.grid import SimulationGrid
from consortium.vertical import logistic_protocol as p
from consortium.vertical.logistic import VerticalLRParams, register_vertical_lr, run_vertical_lr

pytest.importorskip("phe")
pytest.importorskip("sklearn")

APP = Path(__file__).resolve().parents[2] / "examples" / "vertical_heart"
sys.path.insert(0, str(APP))
import vertical_heart as vh  # noqa: E402

CONFIG_: dict[str, Any] = {"vlr-iterations": 3, "vlr-key-bits": 512, "vlr-reveal-model": True}
SHARED = sorted(set(vh.party_data("hospital").ids) & set(vh.party_data("cardiology").ids))


def _app(*mods: Any) -> ClientApp:
    app = ClientApp(mods=list(mods))
    register_vertical_lr(app, vh.node_party, lambda context: SHARED)
    return app


class Parties:
    """The label holder and one passive party, their state kept between tasks."""

    def __init__(self) -> None:
        self.app = _app()
        self.ctx = {n: Context(node_id=n, node_config={"party": n}, run_config=dict(CONFIG_))
                    for n in ("hospital", "cardiology")}  # fmt: skip

    def ask(self, node: str, kind: str, arrays: dict[str, Any] | None = None,
            config: dict[str, Any] | None = None) -> Content:  # fmt: skip
        content = Content(arrays={p.PAYLOAD: Arrays(arrays or {})}, configs={CONFIG: config or {}})
        msg = Message.create(run_id="r", dst=node, round=1, kind=kind, content=content)
        reply = self.app(msg, self.ctx[node])
        assert reply.content is not None
        return reply.content

    def setup(self) -> np.ndarray:
        told = {p.PARTIES: ["hospital", "cardiology"]}
        passive = self.ask("cardiology", p.KIND_SETUP, config=told)
        self.peers = passive.arrays[p.PAYLOAD][p.PEER_KEY][None]  # the only passive: no mask
        active = self.ask("hospital", p.KIND_SETUP, config=told)
        self.key = active.arrays[p.PAYLOAD][p.KEY]
        self.signatures = {"cardiology": passive.configs[p.PAYLOAD][p.SIGNATURE],
                           "hospital": active.configs[p.PAYLOAD][p.SIGNATURE]}  # fmt: skip
        return self.key

    def signed(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """What the first forward task carries besides the peers: the keys' signatures."""
        config = {p.LABEL_HOLDER: "hospital", p.PEER_NODES: ["cardiology"],
                  p.KEY_SIGNATURE: self.signatures["hospital"],
                  p.PEER_SIGNATURES: [self.signatures["cardiology"]]}  # fmt: skip
        return {p.KEY: self.key}, config

    def forward(self, t: int, extra: dict[str, Any] | None = None, **config: Any) -> Content:
        signed, signatures = self.signed() if t == 1 else ({}, {})
        arrays = {p.PEERS: self.peers, **signed, **(extra or {})}
        task = {p.ITERATION: t, **signatures, **config}
        return self.ask("cardiology", p.KIND_FORWARD, arrays, task)

    def iteration(self, t: int, key: np.ndarray, plain: np.ndarray | None) -> dict[str, Any]:
        """One honest iteration; returns what each step sent."""
        flags = {p.ITERATION: t, p.TRAINING: True}
        fwd = self.forward(t, {} if plain is None else {p.PLAIN: plain})
        u = fwd.arrays[p.PAYLOAD]
        res = self.ask("hospital", p.KIND_RESIDUAL, {p.U_TRAIN: u[p.U_TRAIN][None],
                       p.U_TEST: u[p.U_TEST][None]}, flags)  # fmt: skip
        residuals = res.arrays[p.PAYLOAD][p.RESIDUALS]
        step = self.ask("cardiology", p.KIND_GRADIENT, {p.KEY: key, p.RESIDUALS: residuals},
                        {p.ITERATION: t})  # fmt: skip
        grad = step.arrays[p.PAYLOAD][p.GRADIENT]
        signed = [step.configs[p.PAYLOAD][p.GRADIENT_SIGNATURE]]
        dec = self.ask("hospital", p.KIND_DECRYPT, {p.GRADIENT: grad},
                       {p.ITERATION: t, p.COUNTS: [grad.shape[0]],
                        p.GRADIENT_SIGNATURES: signed})  # fmt: skip
        return {
            "u": u,
            "residuals": residuals,
            "gradient": grad,
            "plain": dec.arrays[p.PAYLOAD][p.PLAIN],
        }


@pytest.fixture
def parties() -> Parties:
    return Parties()


def test_the_label_holder_refuses_bad_partial_logits(parties: Parties) -> None:
    parties.setup()
    u = parties.forward(1).arrays[p.PAYLOAD]
    good_train, good_test = u[p.U_TRAIN][None], u[p.U_TEST][None]
    for bad, match in ((good_train[:, :-1], "shape"), (good_train.astype(np.float64), "uint64"),
                       (good_train[0], "1-8 passive")):  # fmt: skip
        with pytest.raises(UpdateRejected, match=match):
            parties.ask("hospital", p.KIND_RESIDUAL, {p.U_TRAIN: bad, p.U_TEST: good_test},
                        {p.ITERATION: 1})  # fmt: skip
    with pytest.raises(UpdateRejected, match="1-8 passive"):
        parties.ask("hospital", p.KIND_RESIDUAL, {p.U_TEST: good_test}, {p.ITERATION: 1})
    with pytest.raises(UpdateRejected, match="must be 1"):  # a replayed or skipped iteration
        parties.ask("hospital", p.KIND_RESIDUAL, {p.U_TRAIN: good_train, p.U_TEST: good_test},
                    {p.ITERATION: 2})  # fmt: skip


def test_the_passive_party_refuses_peer_keys_without_its_own_or_changed(parties: Parties) -> None:
    key = parties.setup()
    stranger = np.arange(32, dtype=np.uint8)[None]
    for peers, match in ((stranger, "this party's key once"),
                         (np.vstack([parties.peers, parties.peers]), "this party's key once"),
                         (parties.peers[:, :16], "shape"),
                         (parties.peers.astype(np.int64), "uint8")):  # fmt: skip
        with pytest.raises(UpdateRejected, match=match):
            parties.forward(1, {p.PEERS: peers})
    first = parties.iteration(1, key, None)
    changed = np.vstack([parties.peers, stranger])
    with pytest.raises(UpdateRejected, match="keys changed"):  # pinned at the first forward
        parties.forward(2, {p.PLAIN: first["plain"], p.PEERS: changed})


def test_the_passive_party_refuses_bad_ciphertexts_and_keys(parties: Parties) -> None:
    key = parties.setup()
    first = parties.iteration(1, key, None)
    residuals = first["residuals"]
    parties.forward(2, {p.PLAIN: first["plain"]}, **{p.TRAINING: True})
    ask = {p.ITERATION: 2}
    with pytest.raises(UpdateRejected, match="shape"):
        parties.ask("cardiology", p.KIND_GRADIENT, {p.KEY: key, p.RESIDUALS: residuals[1:]}, ask)
    too_big = np.full_like(residuals, 0xFF)
    with pytest.raises(UpdateRejected, match="out of range"):
        parties.ask("cardiology", p.KIND_GRADIENT, {p.KEY: key, p.RESIDUALS: too_big}, ask)
    other = key.copy()
    other[-1] ^= 0x02  # still odd, same size: another modulus
    with pytest.raises(UpdateRejected, match="key changed"):
        parties.ask("cardiology", p.KIND_GRADIENT, {p.KEY: other, p.RESIDUALS: residuals}, ask)
    with pytest.raises(UpdateRejected, match="512-8192 bits"):
        parties.ask("cardiology", p.KIND_GRADIENT, {p.KEY: key[:16], p.RESIDUALS: residuals}, ask)


def test_the_label_holder_decrypts_once_per_iteration_and_a_bounded_count(
    parties: Parties,
) -> None:
    key = parties.setup()
    first = parties.iteration(1, key, None)
    grad = first["gradient"]
    with pytest.raises(UpdateRejected, match="decrypted already"):  # a decryption oracle
        parties.ask("hospital", p.KIND_DECRYPT, {p.GRADIENT: grad},
                    {p.ITERATION: 1, p.COUNTS: [grad.shape[0]]})  # fmt: skip
    fresh = Parties()
    key = fresh.setup()
    flags = {p.ITERATION: 1, p.TRAINING: True}
    u = fresh.forward(1).arrays[p.PAYLOAD]
    fresh.ask("hospital", p.KIND_RESIDUAL, {p.U_TRAIN: u[p.U_TRAIN][None],
              p.U_TEST: u[p.U_TEST][None]}, flags)  # fmt: skip
    for counts in ([2000], [0], ["5"], 5):
        with pytest.raises(UpdateRejected, match="positive counts"):
            fresh.ask("hospital", p.KIND_DECRYPT, {p.GRADIENT: grad},
                      {p.ITERATION: 1, p.COUNTS: counts})  # fmt: skip


def test_a_tampered_decryption_does_not_unmask(parties: Parties) -> None:
    key = parties.setup()
    first = parties.iteration(1, key, None)
    plain = first["plain"].copy()
    plain[0, 1] ^= 0x01  # a high bit of the masked gradient: far outside any honest sum
    with pytest.raises(UpdateRejected, match="does not unmask"):
        parties.forward(2, {p.PLAIN: plain})
    with pytest.raises(UpdateRejected, match="missing"):
        parties.forward(2)
    # the refused tasks left the state alone: the honest one still goes through
    parties.forward(2, {p.PLAIN: first["plain"]})


def test_tasks_for_the_other_role_are_refused(parties: Parties) -> None:
    parties.setup()
    with pytest.raises(UpdateRejected, match="for the passive party"):
        parties.ask("hospital", p.KIND_FORWARD, {}, {p.ITERATION: 1})
    with pytest.raises(UpdateRejected, match="for the active party"):
        parties.ask("cardiology", p.KIND_DECRYPT, {}, {p.ITERATION: 0})
    with pytest.raises(UpdateRejected, match="not finished"):
        parties.ask("hospital", p.KIND_FINISH)


def _lying(kind: str, field: str, value: Any) -> Any:
    """A mod that makes the cardiology node answer ``kind`` with ``field`` replaced."""

    def mod(msg: Message, context: Context, call_next: Handler) -> Message:
        reply = call_next(msg, context)
        if context.node_id == "cardiology" and msg.metadata.kind == kind:
            assert reply.content is not None
            reply.content.arrays[p.PAYLOAD][field] = value(reply.content.arrays[p.PAYLOAD][field])
        return reply

    return mod


def _floats(a: np.ndarray) -> np.ndarray:
    out = a.astype(np.float64)
    out[0] = np.nan
    return out


@pytest.mark.parametrize(
    ("kind", "field", "value", "match"),
    [
        (p.KIND_FORWARD, p.U_TRAIN, _floats, "cardiology's u_train must be a uint64"),
        (p.KIND_FORWARD, p.U_TEST, lambda a: a[:-1], "cardiology's u_test must have shape"),
        (p.KIND_GRADIENT, p.GRADIENT, lambda a: a[:-1], "cardiology's gradient must be uint8"),
    ],
)
def test_the_server_stops_at_a_lying_party_and_names_it(
    kind: str, field: str, value: Any, match: str
) -> None:
    nodes = ["hospital", "cardiology"]
    grid = SimulationGrid(_app(_lying(kind, field, value)), nodes,
                          node_config=lambda i, n: {"party": n}, run_config=CONFIG_)  # fmt: skip

    class Log:
        run_id = "r"

        def report(self, record: RoundRecord) -> None:
            pass

    with pytest.raises(RoundFailed, match=match):
        run_vertical_lr(grid, Log(), VerticalLRParams.from_config(CONFIG_), nodes)


def test_run_config_is_checked_by_name() -> None:
    for key, value in (("vlr-iterations", 0), ("vlr-key-bits", 256), ("vlr-lr", "fast"),
                       ("vlr-reveal-model", "yes"), ("vlr-iterations", 2.5)):  # fmt: skip
        with pytest.raises(ConfigError, match=key):
            VerticalLRParams.from_config({key: value})
