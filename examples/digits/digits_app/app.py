"""Client and server of the digits example."""

from __future__ import annotations

import functools

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from consortium.client import ClientApp
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.message import Message
from consortium.core.protocol import LOSS, NUM_EXAMPLES, NUM_PARTITIONS, PARTITION_ID
from consortium.core.records import Metrics
from consortium.datasets.partition import dirichlet
from consortium.ml import mlp
from consortium.server import ServerApp, ServerConfig
from consortium.strategy import FedAvg


@functools.cache
def _split(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    x = x / 16.0  # pixel intensities 0..16
    return tuple(train_test_split(x, y, test_size=0.25, stratify=y, random_state=seed))  # type: ignore[return-value]


@functools.cache
def _partitions(num: int, alpha: float, seed: int) -> list[np.ndarray]:
    _, _, y_train, _ = _split(seed)
    return dirichlet(y_train, num, alpha, np.random.default_rng(seed), min_partition_size=5)


def node_data(context: Context) -> tuple[np.ndarray, np.ndarray]:
    run = context.run_config
    seed = int(run["data-seed"])
    parts = _partitions(int(context.node_config[NUM_PARTITIONS]), float(run["alpha"]), seed)
    x_train, _, y_train, _ = _split(seed)
    idx = parts[int(context.node_config[PARTITION_ID])]
    return x_train[idx], y_train[idx]


client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    assert msg.content is not None and msg.content.model is not None
    x, y = node_data(context)
    run = context.run_config
    result = mlp.train(
        msg.content.model,
        x,
        y,
        rng=context.rng(msg.metadata.round),
        lr=float(run["lr"]),
        batch_size=int(run["batch-size"]),
        epochs=int(run["local-epochs"]),
    )
    return msg.reply(
        arrays=result.params, metrics={NUM_EXAMPLES: result.num_examples, LOSS: result.loss}
    )


def server_fn(context: Context) -> ServerConfig:
    run = context.run_config
    _, x_test, _, y_test = _split(int(run["data-seed"]))
    sizes = [64, int(run["hidden"]), 10]

    def central(rnd: int, arrays: Arrays) -> Metrics:
        m = mlp.evaluate(arrays, x_test, y_test)
        return {"loss": m["loss"], "accuracy": m["accuracy"]}

    strategy = FedAvg(
        init_fn=lambda rng: mlp.init_params(sizes, rng),
        fraction_evaluate=0.0,
        central_evaluate=central,
    )
    return ServerConfig(strategy, num_rounds=int(run["num-rounds"]))


server_app = ServerApp(server_fn)

__all__ = ["client_app", "server_app"]
