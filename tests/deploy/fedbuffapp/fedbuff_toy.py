"""FedBuff in deployment: each node trains for its own ``delay`` seconds (a node config).

The update is a deterministic function of (model, node, task number), so a
run's final model can be replayed from its recorded update sequence.
"""

from __future__ import annotations

import time

import numpy as np

from consortium import Arrays, ClientApp, Context, Message, ServerApp
from consortium.server import AsyncServerConfig
from consortium.strategy.fedbuff import FedBuff

DIM = 16

client_app = ClientApp()


@client_app.train()
def train(msg: Message, ctx: Context) -> Message:
    assert msg.content is not None and msg.content.model is not None
    time.sleep(float(ctx.node_config.get("delay", 0.0)))  # this silo's speed
    rng = ctx.rng(msg.metadata.round)
    w = np.array(msg.content.model["w"], copy=True)
    for _ in range(3):
        w -= 0.2 * (w - rng.normal(loc=len(ctx.node_id), size=w.shape))
    n = 10 + sum(map(ord, ctx.node_id)) % 7
    return msg.reply(arrays=Arrays({"w": w}), metrics={"num_examples": n, "loss": float(w @ w)})


def strategy(cfg: dict[str, object]) -> FedBuff:
    return FedBuff(
        buffer_size=int(str(cfg["buffer-size"])),
        concurrency=int(str(cfg["concurrency"])),
        init_fn=lambda rng: Arrays({"w": rng.normal(size=DIM)}),
        min_available_nodes=int(str(cfg["min-nodes"])),
    )


def _server(ctx: Context) -> AsyncServerConfig:
    cfg = ctx.run_config
    return AsyncServerConfig(
        strategy(dict(cfg)), num_steps=int(cfg["num-steps"]), task_timeout=60.0, node_wait=60.0
    )


server_app = ServerApp(_server)
