"""The first model a run starts from is let go once later models replaced it: a round
workflow holds one global model at a time (and lets go of it during the fold when it is
checkpointed), FedBuff the versions its tasks in flight were sent. A local variable of
the workflow kept the first model alive to the run's end: one model-sized buffer more
for the whole run (found in the server app's process with tracemalloc: 381 MB of a
100M-parameter run)."""

from __future__ import annotations

import gc
import weakref

import numpy as np

from consortium.client import ClientApp
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.history import History, RoundRecord, RunInfo
from consortium.core.message import Message
from consortium.server import AsyncServerConfig, ServerApp, ServerConfig
from consortium.simulation import run_simulation
from consortium.strategy import FedAvg
from consortium.strategy.fedbuff import FedBuff

client = ClientApp()


@client.train()
def train(msg: Message, context: Context) -> Message:
    assert msg.content is not None and msg.content.model is not None
    w = msg.content.model["w"]
    return msg.reply(arrays=Arrays({"w": w + 1.0}), metrics={"num_examples": 1})


class FirstModel:
    """Makes the first model, keeps a weak reference to its array, and records at each
    round's end (and the run's end) whether it is still alive."""

    def __init__(self) -> None:
        self.ref: weakref.ref[np.ndarray] | None = None
        self.alive: dict[str, bool] = {}

    def init(self, rng: np.random.Generator) -> Arrays:
        w = np.zeros(1000, dtype=np.float32)
        self.ref = weakref.ref(w)
        return Arrays({"w": w})

    def _look(self, when: str) -> None:
        gc.collect()
        assert self.ref is not None
        self.alive[when] = self.ref() is not None

    def on_run_start(self, info: RunInfo) -> None:
        pass

    def on_round_end(self, record: RoundRecord) -> None:
        self._look(f"round {record.round}")

    def on_run_end(self, history: History, *, failed: bool) -> None:
        self._look("end")


def test_a_round_workflow_lets_go_of_the_first_model_once_round_2_replaced_it() -> None:
    first = FirstModel()
    strategy = FedAvg(init_fn=first.init, fraction_evaluate=0.0, min_train_nodes=2,
                      min_available_nodes=2)  # fmt: skip
    app = ServerApp(lambda ctx: ServerConfig(strategy, num_rounds=3, evaluate_every=0))
    result = run_simulation(app, client, num_nodes=2, seed=1, observers=[first])
    assert float(result.arrays["w"][0]) == 3.0
    assert first.alive["round 1"] is True  # round 1 started from it, and it is still ending
    assert first.alive["round 2"] is False  # replaced by round 1's result: gone
    assert first.alive["end"] is False


def test_fedbuff_lets_go_of_the_first_model_once_no_task_of_it_is_in_flight() -> None:
    first = FirstModel()
    strategy = FedBuff(buffer_size=2, concurrency=2, init_fn=first.init)
    app = ServerApp(lambda ctx: AsyncServerConfig(strategy, num_steps=4))
    run_simulation(app, client, node_ids=["a", "b"], seed=1, observers=[first])
    assert first.alive["round 1"] is True  # the step's tasks were sent from it
    assert first.alive["round 4"] is False  # no task of it is in flight any more
