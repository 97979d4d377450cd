"""A model of N float32 parameters; nodes add a small deterministic change; FedAvg.

The app does no learning on purpose: each round is the server encoding and
sending the model, every node decoding it, touching every parameter once and
sending it back, and the server folding the replies. Replies and the central
"evaluation" report the process's CPU seconds and peak RSS so far, from which
the benchmark derives CPU per round and exact (not sampled) peaks.
"""

from __future__ import annotations

import resource
import time
from typing import Any

import numpy as np

from consortium.client import ClientApp
from consortium.core.arrays import Arrays
from consortium.core.buffers import pool_stats
from consortium.core.context import Context
from consortium.core.message import Message
from consortium.server import ServerApp, ServerConfig
from consortium.strategy import FedAvg


def split_sizes(params: int, num_arrays: int) -> list[int]:
    """``params`` parameters cut into ``num_arrays`` tensors (the first ones larger)."""
    num_arrays = max(1, min(num_arrays, params))
    base, extra = divmod(params, num_arrays)
    return [base + (1 if i < extra else 0) for i in range(num_arrays)]


def init_model(params: int, num_arrays: int) -> Arrays:
    """A deterministic model: cheap to build (no random generator over N values)."""
    return Arrays(
        (f"layer{i}", np.full(size, 0.5 + i, dtype=np.float32))
        for i, size in enumerate(split_sizes(params, num_arrays))
    )


def node_delta(context: Context, round_: int) -> np.float32:
    """The change a node adds: depends on the node's partition (or name) and the round."""
    pid = context.node_config.get("partition-id")
    key = int(str(pid)) if pid is not None else sum(context.node_id.encode()) % 97
    return np.float32(0.001 * (key + 1) * round_)


def process_stats() -> dict[str, float]:
    """This process's CPU seconds (all threads) and peak RSS in MiB so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "cpu_s": time.process_time(),
        "sys_s": usage.ru_stime,
        "maxrss_mb": usage.ru_maxrss / 1024,
        "pool_high_water_mb": pool_stats()["high_water_mb"],
    }


client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    assert msg.content is not None and msg.content.model is not None
    delta = node_delta(context, msg.metadata.round)
    out = Arrays()
    for name, value in msg.content.model.items():
        if value.flags.writeable:
            np.add(value, delta, out=value)  # in place over the received buffer: no copy
            out[name] = value
        else:
            out[name] = value + delta
    return msg.reply(arrays=out, metrics={"num_examples": 100, **process_stats()})


def server_fn(context: Context) -> ServerConfig:
    run = context.run_config
    params, num_arrays = int(str(run["params"])), int(str(run["num-arrays"]))
    nodes = int(str(run["min-nodes"]))
    accumulate = str(run.get("accumulate", "input"))  # see consortium.toml
    extra: dict[str, Any] = {"accumulate": accumulate}
    strategy = FedAvg(
        init_fn=lambda rng: init_model(params, num_arrays),
        fraction_evaluate=0.0,
        min_train_nodes=nodes,
        min_available_nodes=nodes,
        # called once per round, after the new global model exists: the round's end
        central_evaluate=lambda rnd, arrays: {**process_stats(), "time": time.time()},
        **extra,
    )
    return ServerConfig(strategy, num_rounds=int(str(run["num-rounds"])), evaluate_every=0)


server_app = ServerApp(server_fn)

__all__ = ["client_app", "server_app"]
