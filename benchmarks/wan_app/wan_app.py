"""The WAN benchmark's app: a two-hidden-layer MLP on digits, trained behind compression_mod.

Each node trains on its share of the training split (IID, by partition id);
the server evaluates centrally on the held-out quarter. Parameters travel as
float32 (the numpy MLP computes in float64; the reply is cast back), so the
uncompressed baseline is the usual float32 model.
"""

from __future__ import annotations

import functools

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from consortium.client import ClientApp, compression_mod
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.message import Message
from consortium.core.protocol import LOSS, NUM_EXAMPLES, NUM_PARTITIONS, PARTITION_ID
from consortium.ml import mlp


@functools.cache
def split(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, x_test, y_train, y_test): a stratified 75/25 split of the 1797 digits."""
    x, y = load_digits(return_X_y=True)
    parts = train_test_split(x / 16.0, y, test_size=0.25, stratify=y, random_state=seed)
    return parts[0], parts[1], parts[2], parts[3]


def layer_sizes(hidden: int) -> list[int]:
    return [64, hidden, hidden, 10]


def init(hidden: int, rng: np.random.Generator) -> Arrays:
    return Arrays(
        {k: v.astype(np.float32) for k, v in mlp.init_params(layer_sizes(hidden), rng).items()}
    )


client_app = ClientApp(mods=[compression_mod()])


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    assert msg.content is not None and msg.content.model is not None
    run = context.run_config
    x, _, y, _ = split(int(run["data-seed"]))
    part = int(context.node_config[PARTITION_ID]), int(context.node_config[NUM_PARTITIONS])
    rows = np.arange(part[0], len(y), part[1])
    result = mlp.train(
        msg.content.model,
        x[rows],
        y[rows],
        rng=context.rng(msg.metadata.round),
        lr=float(run["lr"]),
        batch_size=int(run["batch-size"]),
        epochs=int(run["local-epochs"]),
    )
    params = Arrays({k: v.astype(msg.content.model[k].dtype) for k, v in result.params.items()})
    return msg.reply(arrays=params, metrics={NUM_EXAMPLES: result.num_examples, LOSS: result.loss})
