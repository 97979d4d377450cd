"""The WAN benchmark's app: a two-hidden-layer MLP on digits, trained behind compression_mod.

Each node trains on its share of the training split (IID, by partition id);
the server evaluates centrally on the held-out quarter. Parameters are
float32 and the numpy MLP trains in the parameters' precision, so the
uncompressed baseline is the usual float32 model.

Each reply's metrics also say where the node's time went (for the benchmark's
split of a round): :data:`COMPUTE_S`, the handler's training, and
:data:`APP_S`, the mods and the handler together (the difference: the
compression mod decoding the task and encoding the update).
"""

from __future__ import annotations

import functools
import os
import time

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from consortium.client import ClientApp, compression_mod
from consortium.client.app import Handler
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.message import METRICS, Message
from consortium.core.protocol import LOSS, NUM_EXAMPLES, NUM_PARTITIONS, PARTITION_ID
from consortium.ml import mlp

#: reply metric: seconds the handler spent training
COMPUTE_S = "compute-s"
#: reply metric: seconds in the mods and the handler (compression included)
APP_S = "app-s"
#: reply metric: the BLAS thread count the app process was started with (0: none set),
#: so the benchmark can check that its setting reached the sandboxed process
BLAS_THREADS = "blas-threads"


@functools.cache
def split(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, x_test, y_train, y_test): a stratified 75/25 split of the 1797 digits,
    features scaled to [0, 1] in float32 (the model's precision)."""
    x, y = load_digits(return_X_y=True)
    scaled = (x / 16.0).astype(np.float32)
    parts = train_test_split(scaled, y, test_size=0.25, stratify=y, random_state=seed)
    return parts[0], parts[1], parts[2], parts[3]


def layer_sizes(hidden: int) -> list[int]:
    return [64, hidden, hidden, 10]


def init(hidden: int, rng: np.random.Generator) -> Arrays:
    return Arrays(
        {k: v.astype(np.float32) for k, v in mlp.init_params(layer_sizes(hidden), rng).items()}
    )


def timed(message: Message, context: Context, call_next: Handler) -> Message:
    """The outermost mod: stamps :data:`APP_S` on the reply."""
    started = time.perf_counter()
    reply = call_next(message, context)
    if reply.content is not None and METRICS in reply.content.metrics:
        reply.content.metrics[METRICS][APP_S] = time.perf_counter() - started
    return reply


client_app = ClientApp(mods=[timed, compression_mod()])


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    assert msg.content is not None and msg.content.model is not None
    run = context.run_config
    x, _, y, _ = split(int(run["data-seed"]))
    part = int(context.node_config[PARTITION_ID]), int(context.node_config[NUM_PARTITIONS])
    rows = np.arange(part[0], len(y), part[1])
    started = time.perf_counter()
    result = mlp.train(
        msg.content.model,
        x[rows],
        y[rows],
        rng=context.rng(msg.metadata.round),
        lr=float(run["lr"]),
        batch_size=int(run["batch-size"]),
        epochs=int(run["local-epochs"]),
    )
    metrics = {
        NUM_EXAMPLES: result.num_examples,
        LOSS: result.loss,
        COMPUTE_S: time.perf_counter() - started,
        BLAS_THREADS: int(os.environ.get("OPENBLAS_NUM_THREADS", "0")),
    }
    return msg.reply(arrays=result.params, metrics=metrics)  # float32, as the model came
