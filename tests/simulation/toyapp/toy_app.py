"""A small app used by the simulation tests (imported by reference in worker processes)."""

from __future__ import annotations

import numpy as np

from consortium.client import ClientApp
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.message import Message
from consortium.server import ServerApp, ServerConfig
from consortium.strategy import FedAvg

DIM = 8

client_app = ClientApp()


@client_app.train()
def train(msg: Message, ctx: Context) -> Message:
    """Noisy local steps drawn from the node's seeded generator; counts rounds in state."""
    assert msg.content is not None and msg.content.model is not None
    rng = ctx.rng(msg.metadata.round)
    w = msg.content.model["w"].copy()
    for _ in range(5):
        w -= 0.1 * (w - rng.normal(size=w.shape)) + rng.normal(scale=1e-3, size=w.shape)
    seen = int(ctx.state.metrics.get("toy", {}).get("rounds", 0)) + 1
    ctx.state.metrics["toy"] = {"rounds": seen}
    n = 10 + int(ctx.node_config["partition-id"])
    return msg.reply(arrays=Arrays({"w": w}), metrics={"num_examples": n, "rounds_seen": seen})


server_app = ServerApp(
    lambda ctx: ServerConfig(
        FedAvg(init_fn=lambda rng: Arrays({"w": rng.normal(size=DIM)}), fraction_evaluate=0.0),
        num_rounds=int(ctx.run_config.get("num-rounds", 3)),
    )
)


def make_arrays(value: float) -> Arrays:
    return Arrays({"w": np.full(DIM, value)})
