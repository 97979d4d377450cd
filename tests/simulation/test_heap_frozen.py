"""run_simulation keeps the objects that exist before the run out of full GC passes."""

from __future__ import annotations

import gc

import numpy as np

from consortium.client import ClientApp
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.message import Message
from consortium.server import ServerApp, ServerConfig
from consortium.simulation import run_simulation
from consortium.strategy import FedAvg


def _run(seen: list[int]) -> None:
    app = ClientApp()

    @app.train()
    def train(msg: Message, ctx: Context) -> Message:
        seen.append(gc.get_freeze_count())
        assert msg.content is not None and msg.content.model is not None
        return msg.reply(arrays=msg.content.model.copy(), metrics={"num_examples": 1})

    initial = Arrays({"w": np.zeros(3)})
    server = ServerApp(lambda ctx: ServerConfig(FedAvg(initial_arrays=initial), num_rounds=1))
    run_simulation(server, app, num_nodes=2)


def test_the_heap_is_frozen_during_the_run_and_unfrozen_after() -> None:
    assert gc.get_freeze_count() == 0
    seen: list[int] = []
    _run(seen)
    assert len(seen) == 2 and all(count > 0 for count in seen)
    assert gc.get_freeze_count() == 0


def test_a_freeze_made_by_someone_else_is_left_as_it_was() -> None:
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        seen: list[int] = []
        _run(seen)
        # nothing more frozen by the run, nothing unfrozen (frozen objects may still be
        # freed when their last reference goes, so the count can only fall a little)
        assert len(seen) == 2 and frozen * 0.99 < min(seen) and max(seen) <= frozen
        assert frozen * 0.99 < gc.get_freeze_count() <= frozen
    finally:
        gc.unfreeze()
