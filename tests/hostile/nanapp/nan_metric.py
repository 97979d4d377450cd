"""An app whose node named by ``bad-node`` reports a NaN loss: its result is refused."""

from __future__ import annotations

import numpy as np

from consortium import Arrays, ClientApp, Context, FedAvg, Message, ServerApp, ServerConfig

client_app = ClientApp()


@client_app.train()
def train(msg: Message, ctx: Context) -> Message:
    assert msg.content is not None and msg.content.model is not None
    w = msg.content.model["w"] + ctx.rng(msg.metadata.round).normal(size=4)
    loss = float("nan") if ctx.node_id == ctx.run_config["bad-node"] else float(w @ w)
    return msg.reply(arrays=Arrays({"w": w}), metrics={"num_examples": 5, "loss": loss})


server_app = ServerApp(
    lambda ctx: ServerConfig(
        FedAvg(
            initial_arrays=Arrays({"w": np.zeros(4)}), fraction_evaluate=0.0, min_available_nodes=4
        ),
        num_rounds=int(ctx.run_config["num-rounds"]),
        round_timeout=120.0,
        min_replies=3,
    )
)
