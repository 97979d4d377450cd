"""Split learning refuses what a hostile party or server could send: every step's checks.

The server side runs over a simulation grid whose party lies (a mod rewrites
its replies); the node side is called directly with crafted tasks (each
party's state kept in one Context, as the engine keeps it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from consortium.client.app import ClientApp, Handler
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import RoundFailed, UpdateRejected
from consortium.core.message import CONFIG, Content, Message
from consortium.simulation.grid import SimulationGrid
from consortium.vertical import split_protocol as sp
from consortium.vertical.split import SplitParams, register_split_learning, run_split_learning

from .test_split_learning import RUN_CONFIG, shared, vh
from .test_vertical_lr import RunLog

pytest.importorskip("torch")

CONFIG_: dict[str, Any] = {**RUN_CONFIG, "split-epochs": 1}
Rewrite = Callable[[np.ndarray], np.ndarray]


def _liar(node: str, kind: str, tick: int, rewrite: Callable[[Content], Content]) -> Any:
    """A mod: ``node``'s reply to the ``kind`` task of ``tick`` goes out rewritten."""

    def mod(msg: Message, context: Context, call_next: Handler) -> Message:
        reply = call_next(msg, context)
        if context.node_id != node or msg.metadata.kind != kind or msg.metadata.round != tick:
            return reply
        assert reply.content is not None
        return msg.reply(rewrite(reply.content))

    return mod


def _arrays(field: str, change: Rewrite) -> Callable[[Content], Content]:
    def rewrite(content: Content) -> Content:
        arrays = Arrays(content.arrays[sp.PAYLOAD])
        arrays[field] = change(arrays[field])
        return Content(arrays={sp.PAYLOAD: arrays}, configs=content.configs,
                       metrics=content.metrics)  # fmt: skip

    return rewrite


def _nan(a: np.ndarray) -> np.ndarray:
    out = np.array(a, copy=True)
    out.flat[3] = np.nan
    return out


def _retick(content: Content) -> Content:
    """The reply claims the previous tick (a replayed or stale answer)."""
    config = {**content.config, sp.TICK: int(content.config[sp.TICK]) - 1}  # type: ignore[arg-type]
    return Content(arrays=content.arrays, configs={CONFIG: config}, metrics=content.metrics)


@pytest.mark.parametrize(
    ("node", "kind", "tick", "rewrite", "match"),
    [
        ("cardiology", sp.KIND_FORWARD, 2, _arrays(sp.ACTIVATIONS, lambda a: a[:-1]),
         r"cardiology's activations must have shape \(32, 4\)"),
        ("clinical-lab", sp.KIND_FORWARD, 1, _arrays(sp.ACTIVATIONS, _nan),
         "clinical-lab's activations holds NaN"),
        ("cardiology", sp.KIND_FORWARD, 1, _arrays(sp.ACTIVATIONS, lambda a: a.astype(np.float64)),
         "cardiology's activations must be a float32"),
        ("cardiology", sp.KIND_FORWARD, 3, _retick, "'split-tick' must be 3, got 2"),
        ("hospital", sp.KIND_TOP, 2, _arrays(sp.GRADIENTS, _nan), "hospital's gradients holds NaN"),
        ("hospital", sp.KIND_TOP, 1, _arrays(sp.GRADIENTS, lambda g: g[:1]),
         r"hospital's gradients must have shape \(2, 32, 4\)"),
    ],
)  # fmt: skip
def test_the_server_stops_at_a_bad_reply_naming_the_party(
    node: str, kind: str, tick: int, rewrite: Callable[[Content], Content], match: str
) -> None:
    app = ClientApp(mods=[_liar(node, kind, tick, rewrite)])
    register_split_learning(app, vh.node_party, lambda context: shared())
    grid = SimulationGrid(app, list(vh.PARTIES), node_config=lambda i, n: {"party": n},
                          run_config=CONFIG_, seed=1)  # fmt: skip
    with pytest.raises(RoundFailed, match=match):
        run_split_learning(grid, RunLog(), SplitParams.from_config(CONFIG_), list(vh.PARTIES))


class Parties:
    """The label holder and one passive party, their state kept between tasks."""

    def __init__(self) -> None:
        self.app = register_split_learning(ClientApp(), vh.node_party, lambda context: shared())
        self.ctx = {n: Context(node_id=n, node_config={"party": n}, run_config=dict(CONFIG_))
                    for n in ("hospital", "cardiology")}  # fmt: skip

    def ask(self, node: str, kind: str, tick: int, **arrays: Any) -> Content:
        content = Content(arrays={sp.PAYLOAD: Arrays(arrays)}, configs={CONFIG: {sp.TICK: tick}})
        if kind == sp.KIND_SETUP:
            content.configs[CONFIG] = {sp.PARTIES: 2}
        msg = Message.create(run_id="r", dst=node, round=tick, kind=kind, content=content)
        reply = self.app(msg, self.ctx[node])
        if reply.error is not None:
            raise UpdateRejected(reply.error.reason)
        assert reply.content is not None
        return reply.content

    def setup(self) -> None:
        for node in self.ctx:
            self.ask(node, sp.KIND_SETUP, 0)


def _refused(call: Callable[[], object], match: str) -> None:
    with pytest.raises(UpdateRejected, match=match):
        call()


def test_a_passive_party_refuses_ticks_out_of_order_and_bad_gradients() -> None:
    p = Parties()
    _refused(lambda: p.ask("cardiology", sp.KIND_FORWARD, 1), "not set up")
    p.setup()
    _refused(lambda: p.ask("cardiology", sp.KIND_FORWARD, 2), "'split-tick' must be 1, got 2")
    _refused(lambda: p.ask("cardiology", sp.KIND_FORWARD, 1, gradient=np.zeros((32, 4),
             np.float32)), "follows no training step")  # fmt: skip
    acts = p.ask("cardiology", sp.KIND_FORWARD, 1).arrays[sp.PAYLOAD][sp.ACTIVATIONS]
    assert acts.shape == (32, 4) and acts.dtype == np.float32
    _refused(lambda: p.ask("cardiology", sp.KIND_FORWARD, 1), "'split-tick' must be 2, got 1")
    _refused(
        lambda: p.ask("cardiology", sp.KIND_FORWARD, 2), "gradient of tick 1 must be a float32"
    )
    for bad, match in ((np.zeros((31, 4), np.float32), r"shape \(32, 4\)"),
                       (np.full((32, 4), np.inf, np.float32), "NaN or infinity"),
                       (np.zeros((32, 4), np.float64), "float32")):  # fmt: skip
        _refused(lambda bad=bad: p.ask("cardiology", sp.KIND_FORWARD, 2, gradient=bad), match)
    # every refusal left the state as it was: the honest next tick goes through
    ok = p.ask("cardiology", sp.KIND_FORWARD, 2, gradient=np.ones((32, 4), np.float32))
    assert ok.config[sp.TICK] == 2
    _refused(lambda: p.ask("cardiology", sp.KIND_TOP, 3), "for the active party")


def test_the_label_holder_refuses_bad_activations() -> None:
    p = Parties()
    p.setup()
    good = np.ones((1, 32, 4), np.float32)
    for bad, match in ((np.ones((2, 32, 4), np.float32), r"shape \(1, 32, 4\)"),
                       (np.full((1, 32, 4), np.nan, np.float32), "NaN or infinity"),
                       (np.ones((1, 32, 4), np.float16), "float32")):  # fmt: skip
        _refused(lambda bad=bad: p.ask("hospital", sp.KIND_TOP, 1, activations=bad), match)
    _refused(lambda: p.ask("hospital", sp.KIND_TOP, 2, activations=good), "must be 1, got 2")
    grads = p.ask("hospital", sp.KIND_TOP, 1, activations=good).arrays[sp.PAYLOAD][sp.GRADIENTS]
    assert grads.shape == (1, 32, 4) and np.isfinite(grads).all()
    _refused(lambda: p.ask("hospital", sp.KIND_FORWARD, 2), "for the passive party")
    _refused(lambda: p.ask("hospital", sp.KIND_FINISH, 2), "not finished")


def test_setup_refuses_a_bad_party_count() -> None:
    p = Parties()
    for count in (1, 65, "3", True):
        msg = Message.create(run_id="r", dst="hospital", round=0, kind=sp.KIND_SETUP,
                             content=Content(configs={CONFIG: {sp.PARTIES: count}}))  # fmt: skip
        _refused(lambda msg=msg: p.app(msg, p.ctx["hospital"]), sp.PARTIES)
