"""A node app for the Grid contract tests: model + 1, or a failure when configured."""

from __future__ import annotations

import time

from consortium.client import ClientApp
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.message import Message

client_app = ClientApp()


@client_app.train()
def train(msg: Message, ctx: Context) -> Message:
    assert msg.content is not None and msg.content.model is not None
    config = msg.content.config
    if ctx.node_id in str(config.get("fail", "")).split(","):
        raise RuntimeError(f"node {ctx.node_id} was told to fail")
    time.sleep(float(config.get(f"delay-{ctx.node_id}", 0.0)))
    return msg.reply(arrays=Arrays({"w": msg.content.model["w"] + 1}), metrics={"num_examples": 3})
