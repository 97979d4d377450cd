"""run_simulation keeps the objects that exist before the run out of full GC passes, and
raises the young generation's threshold for the run only."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import numpy as np
import pytest

from consortium.client import ClientApp
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import RoundFailed
from consortium.core.message import Message
from consortium.server import ServerApp, ServerConfig
from consortium.simulation import run_simulation
from consortium.simulation.engine import RUN_YOUNG_THRESHOLD
from consortium.strategy import FedAvg


def _run(seen: list[int], thresholds: list[tuple[int, int, int]] | None = None) -> None:
    app = ClientApp()

    @app.train()
    def train(msg: Message, ctx: Context) -> Message:
        seen.append(gc.get_freeze_count())
        if thresholds is not None:
            thresholds.append(gc.get_threshold())
        assert msg.content is not None and msg.content.model is not None
        return msg.reply(arrays=msg.content.model.copy(), metrics={"num_examples": 1})

    initial = Arrays({"w": np.zeros(3)})
    server = ServerApp(lambda ctx: ServerConfig(FedAvg(initial_arrays=initial), num_rounds=1))
    run_simulation(server, app, num_nodes=2)


@pytest.fixture
def restored_thresholds() -> Iterator[tuple[int, int, int]]:
    before = gc.get_threshold()
    yield before
    gc.set_threshold(*before)


def test_the_heap_is_frozen_during_the_run_and_unfrozen_after() -> None:
    assert gc.get_freeze_count() == 0
    seen: list[int] = []
    _run(seen)
    assert len(seen) == 2 and all(count > 0 for count in seen)
    assert gc.get_freeze_count() == 0


def test_a_freeze_made_by_someone_else_is_left_as_it_was(
    restored_thresholds: tuple[int, int, int],
) -> None:
    """... and so is the collector's threshold: whoever froze (the caller, or a run going on
    in another thread) owns both, and puts them back."""
    gc.set_threshold(700, 10, 10)
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        seen: list[int] = []
        during: list[tuple[int, int, int]] = []
        _run(seen, during)
        assert during == [(700, 10, 10)] * 2
        # nothing more frozen by the run, nothing unfrozen (frozen objects may still be
        # freed when their last reference goes, so the count can only fall a little)
        assert len(seen) == 2 and frozen * 0.99 < min(seen) and max(seen) <= frozen
        assert frozen * 0.99 < gc.get_freeze_count() <= frozen
    finally:
        gc.unfreeze()


def test_the_young_threshold_is_raised_for_the_run_and_put_back(
    restored_thresholds: tuple[int, int, int],
) -> None:
    gc.set_threshold(700, 11, 12)
    during: list[tuple[int, int, int]] = []
    _run([], during)
    assert during == [(RUN_YOUNG_THRESHOLD, 11, 12)] * 2
    assert gc.get_threshold() == (700, 11, 12)


def test_a_higher_threshold_is_kept_and_a_failed_run_puts_it_back(
    restored_thresholds: tuple[int, int, int],
) -> None:
    gc.set_threshold(RUN_YOUNG_THRESHOLD * 3, 10, 10)
    during: list[tuple[int, int, int]] = []
    _run([], during)
    assert during == [(RUN_YOUNG_THRESHOLD * 3, 10, 10)] * 2
    gc.set_threshold(700, 10, 10)
    # no initial model, and a node that cannot answer the query for one: the run fails
    server = ServerApp(lambda ctx: ServerConfig(FedAvg(), num_rounds=1))
    with pytest.raises(RoundFailed):
        run_simulation(server, ClientApp(), num_nodes=1)
    assert gc.get_threshold() == (700, 10, 10)
