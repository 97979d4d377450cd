"""A toy app whose ClientApp runs behind two mods, for simulation and deployment tests.

``client_app`` reports each node's update norm (``update_norm_mod``, outermost:
it sees the clipped update) and clips the update to :data:`MAX_NORM`
(``clip_update_mod``); ``plain_client_app`` is the same training without mods.
Nodes are told apart by their id only, so the app runs unchanged on simulated
nodes and on real ``consortium node`` processes.
"""

from __future__ import annotations

import numpy as np

from consortium import Arrays, ClientApp, Context, FedAvg, Message, ServerApp, ServerConfig
from consortium.client import clip_update_mod, update_norm_mod

DIM = 16
#: the clipping bound; the local steps below move a node about 2-3 away, so it bites
MAX_NORM = 1.0


def train(msg: Message, ctx: Context) -> Message:
    """Seeded local steps towards noise drawn from the node's generator."""
    assert msg.content is not None and msg.content.model is not None
    rng = ctx.rng(msg.metadata.round)
    w = np.array(msg.content.model["w"], copy=True)
    for _ in range(5):
        w -= 0.1 * (w - rng.normal(size=w.shape))
    n = 10 + sum(map(ord, ctx.node_id)) % 7
    return msg.reply(arrays=Arrays({"w": w}), metrics={"num_examples": n, "loss": float(w @ w)})


client_app = ClientApp(mods=[update_norm_mod(), clip_update_mod(MAX_NORM)])
client_app.train()(train)

plain_client_app = ClientApp()
plain_client_app.train()(train)


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
