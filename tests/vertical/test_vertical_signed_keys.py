"""Vertical LR and SecureBoost refuse keys the server put in place of the parties' own.

Each party signs the key it owns (vertical LR: the label holder's Paillier key, each
passive party's pairwise-mask key; SecureBoost: the label holder's Paillier key and
each tree's encrypted gradients) with its node identity, over the run, its node and
the parties the setup task named; a receiving party checks the signature against the
party it expects the key from before it uses it. Here a hostile server (a Grid
wrapper around the simulation) swaps keys on the way and the receiving party refuses,
naming the party and what failed; the deployed twin of these is
``test_vertical_signed_keys_deployed.py``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from consortium.client.app import ClientApp
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import RoundFailed, UpdateRejected
from consortium.core.grid import Grid, GridWrapper
from consortium.core.history import RoundRecord
from consortium.core.identity import MASK_KEY
from consortium.core.message import CONFIG, Content, Message
from consortium.simulation.grid import SimulationGrid
from consortium.vertical import boost_protocol as b
from consortium.vertical import logistic_protocol as p
from consortium.vertical.boost import BoostParams, register_vertical_boost, run_vertical_boost
from consortium.vertical.logistic import VerticalLRParams, register_vertical_lr, run_vertical_lr
from consortium.vertical.logistic_masks import new_key
from consortium.vertical.logistic_paillier import KeyPair
from consortium.vertical.signed_keys import SIMULATION_IDENTITY, statement

pytest.importorskip("phe")
pytest.importorskip("nacl")

APP = Path(__file__).resolve().parents[2] / "examples" / "vertical_heart"
sys.path.insert(0, str(APP))
import vertical_heart as vh  # noqa: E402

NODES = ["hospital", "cardiology", "clinical-lab"]
SHARED = sorted(set.intersection(*(set(vh.party_data(n).ids) for n in NODES)))
LR: dict[str, Any] = {"vlr-iterations": 2, "vlr-key-bits": 512}
SB: dict[str, Any] = {"vsb-trees": 2, "vsb-depth": 2, "vsb-key-bits": 512}

Tamper = Callable[[Message], Message]


class RunLog:
    run_id = "signed-keys"

    def report(self, record: RoundRecord) -> None:
        pass


class HostileServer(GridWrapper):
    """A Grid that changes the tasks the server program sends before they leave."""

    def __init__(self, inner: Grid, tamper: Tamper) -> None:
        super().__init__(inner)
        self.tamper = tamper

    def send_and_receive(
        self, messages: Sequence[Message], *, timeout: float | None
    ) -> Iterator[Message]:
        return self.inner.send_and_receive([self.tamper(m) for m in messages], timeout=timeout)

    def push(self, messages: Sequence[Message]) -> None:
        self.inner.push([self.tamper(m) for m in messages])


def changed(message: Message, arrays: dict[str, Any], config: dict[str, Any]) -> Message:
    """``message`` with payload arrays and task config entries replaced."""
    content = message.content
    assert content is not None
    payload = Arrays({**content.arrays.get(p.PAYLOAD, Arrays()), **arrays})
    if b.PAYLOAD in content.arrays:
        payload = Arrays({**content.arrays[b.PAYLOAD], **arrays})
    key = b.PAYLOAD if b.PAYLOAD in content.arrays else p.PAYLOAD
    new = Content({**content.arrays, key: payload}, {**content.configs,
                  CONFIG: {**content.config, **config}})  # fmt: skip
    return Message(message.metadata, content=new)


def _lr(tamper: Tamper) -> None:
    app = ClientApp()
    register_vertical_lr(app, vh.node_party, lambda context: SHARED)
    grid = SimulationGrid(app, NODES, node_config=lambda i, n: {"party": n}, run_config=LR)
    run_vertical_lr(HostileServer(grid, tamper), RunLog(), VerticalLRParams.from_config(LR), NODES)


def _sb(tamper: Tamper) -> None:
    app = ClientApp()
    register_vertical_boost(app, vh.node_party, lambda context: SHARED)
    grid = SimulationGrid(app, NODES, node_config=lambda i, n: {"party": n}, run_config=SB)
    run_vertical_boost(HostileServer(grid, tamper), RunLog(), BoostParams.from_config(SB), NODES)


def _first_forward_to(node: str, message: Message) -> bool:
    meta = message.metadata
    return meta.kind == p.KIND_FORWARD and meta.dst == node and meta.round == 1


def test_the_honest_relay_trains() -> None:
    """The wrapper itself changes nothing when it tampers with nothing."""
    _lr(lambda m: m)
    _sb(lambda m: m)


def test_a_server_that_swaps_a_peers_mask_key_is_refused_by_the_passive_party() -> None:
    """The attack docs/vertical.md described: the server gives cardiology its own key in
    place of clinical-lab's, to remove cardiology's masks and read its logits."""
    _, server_key = new_key()

    def swap(message: Message) -> Message:
        if not _first_forward_to("cardiology", message):
            return message
        assert message.content is not None
        peers = message.content.arrays[p.PAYLOAD][p.PEERS].copy()
        peers[1] = server_key  # passive order: cardiology, clinical-lab
        return changed(message, {p.PEERS: peers}, {})

    with pytest.raises(RoundFailed, match="party cardiology failed") as caught:
        _lr(swap)
    assert "party 'clinical-lab''s pairwise-mask key: not signed by 'clinical-lab'" in str(
        caught.value
    )


def test_a_mask_key_signed_by_another_node_is_refused() -> None:
    """The server's key, with a signature by the label holder over the very statement
    cardiology rebuilds for clinical-lab: signed, but not by the node it claims."""
    _, server_key = new_key()

    def swap(message: Message) -> Message:
        if not _first_forward_to("cardiology", message):
            return message
        assert message.content is not None
        peers = message.content.arrays[p.PAYLOAD][p.PEERS].copy()
        peers[1] = server_key
        forged = statement(purpose=MASK_KEY, run_id=message.metadata.run_id,
                           node_id="clinical-lab", parties=NODES,
                           key=server_key.tobytes())  # fmt: skip
        signatures = list(message.content.config[p.PEER_SIGNATURES])  # type: ignore[arg-type]
        signatures[1] = SIMULATION_IDENTITY.sign("hospital", forged).hex()
        return changed(message, {p.PEERS: peers}, {p.PEER_SIGNATURES: signatures})

    with pytest.raises(RoundFailed, match="not signed by 'clinical-lab'"):
        _lr(swap)


@pytest.mark.parametrize("how", ["replaced", "unsigned"])
def test_a_server_that_swaps_the_label_holders_key_is_refused(how: str) -> None:
    """vertical LR: the server's own Paillier key in place of the label holder's, with the
    label holder's signature kept, or with none."""
    server_key = KeyPair.generate(512).public.to_wire()

    def swap(message: Message) -> Message:
        if not _first_forward_to("clinical-lab", message):
            return message
        if how == "unsigned":
            return changed(message, {}, {p.KEY_SIGNATURE: ""})
        return changed(message, {p.KEY: server_key}, {})

    match = "not signed by 'hospital'" if how == "replaced" else "comes unsigned"
    with pytest.raises(
        RoundFailed, match=f"party clinical-lab failed.*Paillier public key.*{match}"
    ):
        _lr(swap)


def test_a_server_that_leaves_a_passive_party_out_is_refused() -> None:
    """A server that tells each passive party it is the only one (so nobody masks) must
    show each a label-holder signature over that smaller party list: it has none."""

    def split(message: Message) -> Message:
        meta = message.metadata
        if meta.kind == p.KIND_SETUP and meta.dst in ("cardiology", "clinical-lab"):
            return changed(message, {}, {p.PARTIES: ["hospital", meta.dst]})
        if meta.kind == p.KIND_FORWARD and meta.round == 1:
            assert message.content is not None
            config, arrays = message.content.config, message.content.arrays[p.PAYLOAD]
            mine = NODES.index(meta.dst) - 1
            signatures = config[p.PEER_SIGNATURES]
            assert isinstance(signatures, list)
            alone = {p.PEER_NODES: [meta.dst], p.PEER_SIGNATURES: [signatures[mine]]}
            return changed(message, {p.PEERS: arrays[p.PEERS][mine : mine + 1]}, alone)
        return message

    with pytest.raises(RoundFailed, match="Paillier public key: not signed by 'hospital'.*"
                       r"parties \['hospital', 'cardiology'\]"):  # fmt: skip
        _lr(split)


def test_a_passive_party_left_out_of_the_peer_list_is_refused() -> None:
    def drop(message: Message) -> Message:
        if not _first_forward_to("cardiology", message):
            return message
        return changed(message, {}, {p.PEER_NODES: ["cardiology"]})

    with pytest.raises(RoundFailed, match="must be every passive party of the run"):
        _lr(drop)


def test_a_party_runs_its_setup_once_per_run() -> None:
    """The label holder signs one party list per run: a second setup could sign another."""
    app = ClientApp()
    register_vertical_lr(app, vh.node_party, lambda context: SHARED)
    ctx = Context(node_id="hospital", node_config={"party": "hospital"}, run_config=dict(LR))
    task = Content(configs={CONFIG: {p.PARTIES: NODES}})
    app(Message.create(run_id="r", dst="hospital", round=0, kind=p.KIND_SETUP, content=task), ctx)
    again = Content(configs={CONFIG: {p.PARTIES: NODES[:2]}})
    with pytest.raises(UpdateRejected, match="setup ran already"):
        app(Message.create(run_id="r", dst="hospital", round=0, kind=p.KIND_SETUP,
                           content=again), ctx)  # fmt: skip
    for parties in (["hospital"], ["cardiology", "clinical-lab"], ["hospital", "hospital"]):
        fresh = Context(node_id="hospital", node_config={"party": "hospital"}, run_config=LR)
        content = Content(configs={CONFIG: {p.PARTIES: parties}})
        with pytest.raises(UpdateRejected, match="vlr-parties"):
            app(Message.create(run_id="r", dst="hospital", round=0, kind=p.KIND_SETUP,
                               content=content), fresh)  # fmt: skip


def _first_histogram(message: Message, tree: int) -> bool:
    meta, content = message.metadata, message.content
    return (
        meta.kind == b.KIND_HISTOGRAM
        and meta.round == tree
        and content is not None
        and content.config.get(b.LEVEL) == 0
    )


def test_secureboost_refuses_a_key_the_label_holder_did_not_sign() -> None:
    """The attack docs/vertical.md described: the server's key (and [[g]], [[h]] under it)
    in place of the label holder's, to decrypt the histograms."""
    server = KeyPair.generate(512)
    width = server.public.ciphertext_bytes

    def swap(message: Message) -> Message:
        if not _first_histogram(message, 1) or message.metadata.dst != "cardiology":
            return message
        assert message.content is not None
        rows = message.content.arrays[b.PAYLOAD][b.GRAD].shape[0]
        indicator = [1 if i == 0 else 0 for i in range(2 * rows)]  # row 0's bins, in the clear
        grad = np.frombuffer(b"".join(c.to_bytes(width, "big")
                                      for c in server.encrypt(indicator)), np.uint8)  # fmt: skip
        return changed(message, {b.KEY: server.public.to_wire(),
                                 b.GRAD: grad.reshape(rows, 2, width)}, {})  # fmt: skip

    with pytest.raises(RoundFailed, match=r"party cardiology failed.*party 'hospital''s Paillier "
                       r"public key: not signed by 'hospital'"):  # fmt: skip
        _sb(swap)


@pytest.mark.parametrize("how", ["rows-swapped", "last-trees"])
def test_secureboost_refuses_gradients_the_label_holder_did_not_sign(how: str) -> None:
    """Gradients of the server's choosing under the label holder's genuine key: two rows'
    ciphertexts swapped, or the first tree's gradients (and signature) replayed."""
    kept: dict[str, Any] = {}

    def swap(message: Message) -> Message:
        if message.metadata.dst != "clinical-lab":
            return message
        if _first_histogram(message, 1):
            assert message.content is not None
            kept["grad"] = message.content.arrays[b.PAYLOAD][b.GRAD]
            kept["signature"] = message.content.config[b.GRAD_SIGNATURE]
            if how == "rows-swapped":
                grad = kept["grad"][[1, 0, *range(2, kept["grad"].shape[0])]]
                return changed(message, {b.GRAD: grad}, {})
        if how == "last-trees" and _first_histogram(message, 2):
            return changed(message, {b.GRAD: kept["grad"]}, {b.GRAD_SIGNATURE: kept["signature"]})
        return message

    tree = 1 if how == "rows-swapped" else 2
    with pytest.raises(RoundFailed, match=f"party clinical-lab failed.*encrypted gradients "
                       f"\\(tree {tree}\\): not signed by 'hospital'"):  # fmt: skip
        _sb(swap)
