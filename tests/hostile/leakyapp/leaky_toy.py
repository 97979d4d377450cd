"""The slow toy of the deployment tests (tests/deploy/slowapp), except that the node named
by ``leaky-node`` raises an exception quoting a patient record: text that must stay on it."""

from __future__ import annotations

import time

import numpy as np

from consortium import Arrays, ClientApp, Context, FedAvg, Message, ServerApp, ServerConfig

DIM = 16
#: what the exception says: private data that must not leave the silo
SECRET = "patient 4711"

client_app = ClientApp()


@client_app.train()
def train(msg: Message, ctx: Context) -> Message:
    assert msg.content is not None and msg.content.model is not None
    if ctx.node_id == ctx.run_config["leaky-node"]:
        raise ValueError(f"{SECRET} has a blood pressure of 190/120")
    time.sleep(float(ctx.run_config.get("delay", 0.0)))
    rng = ctx.rng(msg.metadata.round)
    w = np.array(msg.content.model["w"], copy=True)
    for _ in range(5):
        w -= 0.1 * (w - rng.normal(size=w.shape))
    n = 10 + sum(map(ord, ctx.node_id)) % 7
    return msg.reply(arrays=Arrays({"w": w}), metrics={"num_examples": n, "loss": float(w @ w)})


def _server(ctx: Context) -> ServerConfig:
    cfg = ctx.run_config
    strategy = FedAvg(
        init_fn=lambda rng: Arrays({"w": rng.normal(size=DIM)}),
        fraction_evaluate=0.0,
        min_available_nodes=int(cfg["min-nodes"]),
    )
    return ServerConfig(
        strategy,
        num_rounds=int(cfg["num-rounds"]),
        min_replies=int(cfg["min-replies"]),
        round_timeout=float(cfg["round-timeout"]),
        node_wait=60.0,
    )


server_app = ServerApp(_server)
