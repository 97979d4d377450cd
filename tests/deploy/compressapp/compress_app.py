"""A toy app whose ClientApp compresses its updates as the run config says.

The model has a float32 matrix, a bfloat16 vector (compressed too) and an
int64 counter (sent as it is). Training draws from the node's generator, so
the run is deterministic; nodes are told apart by id only, so the app runs
unchanged on simulated nodes and on real ``consortium node`` processes.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from consortium import Arrays, ClientApp, Context, FedAvg, Message, ServerApp, ServerConfig
from consortium.client import compression_mod

SHAPE = (20, 15)


def train(msg: Message, ctx: Context) -> Message:
    """Seeded local steps towards noise drawn from the node's generator."""
    assert msg.content is not None and msg.content.model is not None
    rng = ctx.rng(msg.metadata.round)
    model = msg.content.model
    w = np.array(model["w"], dtype=np.float32, copy=True)
    b = np.array(model["b"], dtype=np.float32)
    for _ in range(5):
        w -= np.float32(0.1) * (w - rng.normal(size=w.shape).astype(np.float32))
    b = (b + rng.normal(size=b.shape).astype(np.float32)).astype(ml_dtypes.bfloat16)
    steps = model["steps"] + 5
    n = 10 + sum(map(ord, ctx.node_id)) % 7
    return msg.reply(arrays=Arrays({"w": w, "b": b, "steps": steps}), metrics={"num_examples": n})


client_app = ClientApp(mods=[compression_mod()])
client_app.train()(train)


def _init(rng: np.random.Generator) -> Arrays:
    return Arrays(
        {
            "w": rng.normal(size=SHAPE).astype(np.float32),
            "b": rng.normal(size=7).astype(ml_dtypes.bfloat16),
            "steps": np.zeros((), dtype=np.int64),
        }
    )


def _server(ctx: Context) -> ServerConfig:
    cfg = ctx.run_config
    strategy = FedAvg(
        init_fn=_init, fraction_evaluate=0.0, min_available_nodes=int(cfg["min-nodes"])
    )
    return ServerConfig(
        strategy,
        num_rounds=int(cfg["num-rounds"]),
        min_replies=int(cfg["min-replies"]),
        round_timeout=float(cfg["round-timeout"]),
        node_wait=60.0,
    )


server_app = ServerApp(_server)
