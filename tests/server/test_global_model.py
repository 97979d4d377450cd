"""The global model leaves memory during the fold once it is checkpointed, and comes back
exactly when a strategy, a retry or the end of the run needs it."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from consortium.client import ClientApp
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.history import History
from consortium.core.message import Message
from consortium.core.records import Metrics
from consortium.server import ServerApp, ServerConfig, run_server_app
from consortium.server.checkpoint import save_checkpoint
from consortium.server.context import CheckpointSettings
from consortium.server.global_model import GlobalModel
from consortium.simulation import SimulationGrid
from consortium.strategy import FedAdam, FedAvg, Strategy
from consortium.strategy.base import TrainReply

MODEL = Arrays({"w": np.arange(12, dtype="f4").reshape(3, 4), "b": np.array([0.5, -1.0])})


def test_a_model_with_no_checkpoint_stays_in_memory() -> None:
    model = GlobalModel(MODEL)
    assert not model.release() and model.in_memory and model.current() is MODEL


def test_a_released_model_comes_back_from_its_checkpoint(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, 3, MODEL, {}, History())
    waited: list[bool] = []
    model = GlobalModel(MODEL.copy())
    model.on_disk(path, lambda: waited.append(True))
    assert model.release() and not model.in_memory
    lazy = model.current()
    assert not waited  # nothing read yet
    assert lazy.equals(MODEL) and waited == [True]
    assert model.arrays.equals(MODEL) and model.in_memory
    skeleton = model.skeleton()
    assert skeleton.signature() == MODEL.signature()
    assert all(v.strides == (0,) * v.ndim for v in skeleton.values())  # no memory


def test_a_failed_checkpoint_write_surfaces_when_the_model_is_needed(tmp_path: Path) -> None:
    def failed() -> None:
        raise OSError(28, "No space left on device")

    model = GlobalModel(MODEL)
    model.on_disk(tmp_path / "missing.ckpt", failed)
    model.release()
    with pytest.raises(OSError, match="No space"):
        _ = model.arrays


# -- in the round loop ---------------------------------------------------------------
def _client() -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, ctx: Context) -> Message:
        assert msg.content is not None and msg.content.model is not None
        rng = ctx.rng(msg.metadata.round)
        update = Arrays((k, v + rng.normal(size=v.shape)) for k, v in msg.content.model.items())
        return msg.reply(arrays=update, metrics={"num_examples": int(rng.integers(5, 50))})

    return app


class Spy(FedAvg):
    """FedAvg that records whether the round's model was still in memory at the fold."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.lazy: list[bool] = []

    def aggregate_train(
        self, round: int, current: Arrays, replies: Iterable[TrainReply]
    ) -> tuple[Arrays, Metrics]:
        self.lazy.append(getattr(current, "_loader", None) is not None)
        return super().aggregate_train(round, current, replies)


def _run(strategy: Strategy, checkpoints: Path | None, **config: Any) -> Arrays:
    grid = SimulationGrid(_client(), [f"n{i}" for i in range(4)], seed=3)
    server_config = ServerConfig(strategy, num_rounds=4, **config)
    settings = CheckpointSettings(checkpoints) if checkpoints is not None else None
    result = run_server_app(ServerApp(lambda _: server_config), grid, seed=3, checkpoints=settings)
    return result.arrays


def test_the_fold_runs_without_the_model_in_memory_and_gives_the_same_result(
    tmp_path: Path,
) -> None:
    init = Arrays({"w": np.zeros(6), "b": np.zeros(2)})
    spy = Spy(initial_arrays=init, fraction_evaluate=0.0)
    released = _run(spy, tmp_path / "ck")
    assert spy.lazy == [True, True, True, True]  # round 1 too: the initial model is round 0
    kept = Spy(initial_arrays=init, fraction_evaluate=0.0)
    assert released.equals(_run(kept, None)) and kept.lazy == [False] * 4


def test_checkpoint_every_keeps_the_model_when_it_is_not_on_disk(tmp_path: Path) -> None:
    spy = Spy(initial_arrays=Arrays({"w": np.zeros(3)}), fraction_evaluate=0.0)
    _run(spy, tmp_path, checkpoint_every=2)
    assert spy.lazy == [True, False, True, False]  # after rounds 0 and 2 only


def test_a_server_optimizer_reads_the_model_back_bit_for_bit(tmp_path: Path) -> None:
    def adam() -> FedAdam:
        init = Arrays({"w": np.ones((3, 4)), "b": np.zeros(2)})
        return FedAdam(FedAvg(initial_arrays=init, fraction_evaluate=0.0), lr=0.1)

    assert _run(adam(), tmp_path).equals(_run(adam(), None))
