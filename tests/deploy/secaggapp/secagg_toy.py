"""A SecAgg+ app whose nodes send known updates, for deployment tests.

Node ``n`` moves the model by :func:`update_of` ``(n)`` and reports
:func:`examples_of` ``(n)`` examples, so a test knows the weighted mean any set
of survivors must give. A node whose node config sets ``train-delay`` sleeps
that many seconds before it trains (after it has shared its keys), so a test
can kill it mid-protocol. No simulation fallback: the keys are signed with the
deployed nodes' certificates.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from consortium import Arrays, ClientApp, Context, FedAvg, Message, ServerApp, ServerConfig
from consortium.core.grid import Grid
from consortium.privacy.secagg import SecAggParams, node_identity, secaggplus_mod
from consortium.server.context import ServerContext
from consortium.server.workflow.secagg import SecAggPlusWorkflow

DIM = 12
#: coarse enough that the rounding shows, fine enough for a tight check: step 2^-19
PARAMS = SecAggParams(clip=1.0, quantization_bits=20, modulus_bits=40, max_weight=100)


def update_of(node_id: str) -> np.ndarray:
    return np.random.default_rng(list(node_id.encode())).uniform(-1, 1, DIM)


def examples_of(node_id: str) -> int:
    return 10 + len(node_id)


def train(msg: Message, ctx: Context) -> Message:
    assert msg.content is not None and msg.content.model is not None
    delay = ctx.node_config.get("train-delay", 0)
    assert isinstance(delay, int | float)
    time.sleep(float(delay))
    w = msg.content.model["w"] + update_of(ctx.node_id)
    return msg.reply(arrays=Arrays({"w": w}), metrics={"num_examples": examples_of(ctx.node_id)})


identity = node_identity()
client_app = ClientApp(mods=[secaggplus_mod(identity.sign, identity.verify)])
client_app.train()(train)

server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: ServerContext) -> None:
    cfg = context.run_config
    strategy = FedAvg(
        initial_arrays=Arrays({"w": np.zeros(DIM)}),
        fraction_evaluate=0.0,
        min_available_nodes=int(cfg["min-nodes"]),
    )
    config = ServerConfig(
        strategy, num_rounds=int(cfg["num-rounds"]), evaluate_every=0, node_wait=60.0
    )
    timeouts = {"stage_timeout": float(cfg["stage-timeout"]),
                "train_timeout": float(cfg["train-timeout"])}  # fmt: skip
    SecAggPlusWorkflow(config, dataclasses.replace(PARAMS, **timeouts))(grid, context)
