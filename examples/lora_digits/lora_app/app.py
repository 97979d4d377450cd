"""Client and server of the LoRA transfer example.

Every party rebuilds the pretrained base (:mod:`lora_app.pretrain`); the server's
global model is only what the run config's ``mode`` trains (:mod:`lora_app.modes`),
and it evaluates each round's model centrally on held-out digits 5–9.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from torch import nn

from consortium.client import ClientApp
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import ConfigError
from consortium.core.message import Message
from consortium.core.protocol import LOSS, NUM_EXAMPLES, NUM_PARTITIONS, PARTITION_ID
from consortium.core.records import Metrics
from consortium.datasets.partition import dirichlet
from consortium.server import ServerApp, ServerConfig
from consortium.strategy import FedAvg

from . import modes
from .pretrain import TARGET_CLASSES, accuracy, base_digest, one_thread, split

#: the train-config key carrying the server's digest of the pretrained base
BASE_DIGEST = "base-sha256"


def _model(run: dict[str, Any]) -> nn.Module:
    return modes.build(str(run["mode"]), int(run["rank"]), int(run["lora-alpha"]))


@functools.cache
def _partitions(num: int, alpha: float, seed: int) -> list[np.ndarray]:
    _, _, y_train, _ = split(TARGET_CLASSES, seed)
    return dirichlet(y_train, num, alpha, np.random.default_rng(seed), min_partition_size=10)


def node_data(context: Context) -> tuple[np.ndarray, np.ndarray]:
    """This hospital's non-IID share of the target task's training rows (digits 5–9)."""
    run = context.run_config
    seed = int(run["data-seed"])
    parts = _partitions(int(context.node_config[NUM_PARTITIONS]), float(run["alpha"]), seed)
    x_train, _, y_train, _ = split(TARGET_CLASSES, seed)
    idx = parts[int(context.node_config[PARTITION_ID])]
    return x_train[idx], y_train[idx]


client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    with one_thread():
        return _train(msg, context)


def _train(msg: Message, context: Context) -> Message:
    assert msg.content is not None and msg.content.model is not None
    run: dict[str, Any] = dict(context.run_config)
    config = msg.content.config or {}
    if config.get(BASE_DIGEST) != base_digest():
        raise ConfigError(
            f"{BASE_DIGEST}: this node's pretrained base is {base_digest()[:12]}…, the "
            f"server's is {str(config.get(BASE_DIGEST))[:12]}…; adapters need the same base"
        )
    mode = str(run["mode"])
    net = _model(run)
    modes.load(mode, net, msg.content.model)
    x, y = node_data(context)
    generator = torch.Generator().manual_seed(int(context.rng(msg.metadata.round).integers(2**31)))
    # Adam: LoRA's B starts at zero and plain SGD moves the adapters slowly
    optimizer = torch.optim.Adam(
        [p for p in net.parameters() if p.requires_grad], lr=float(run["lr"])
    )
    xs, ys, losses = torch.from_numpy(x), torch.from_numpy(y), []
    net.train()
    for _ in range(int(run["local-epochs"])):
        for batch in torch.randperm(len(xs), generator=generator).split(int(run["batch-size"])):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(net(xs[batch]), ys[batch])
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    metrics: Metrics = {NUM_EXAMPLES: len(x), LOSS: float(np.mean(losses))}
    return msg.reply(arrays=modes.travelling(mode, net), metrics=metrics)


def server_fn(context: Context) -> ServerConfig:
    run: dict[str, Any] = dict(context.run_config)
    modes.check_mode(str(run["mode"]))
    _, x_test, _, y_test = split(TARGET_CLASSES, int(run["data-seed"]))

    def init(rng: np.random.Generator) -> Arrays:
        torch.manual_seed(int(rng.integers(2**31)))  # LoRA's A (B starts at zero)
        return modes.travelling(str(run["mode"]), _model(run))

    def central(rnd: int, arrays: Arrays) -> Metrics:
        net = _model(run)
        modes.load(str(run["mode"]), net, arrays)
        net.eval()
        with one_thread():
            return {"accuracy": accuracy(net, x_test, y_test)}

    strategy = FedAvg(
        init_fn=init,
        fraction_evaluate=0.0,
        central_evaluate=central,
        train_config={BASE_DIGEST: base_digest()},
    )
    return ServerConfig(strategy, num_rounds=int(run["num-rounds"]))


server_app = ServerApp(server_fn)

__all__ = ["client_app", "server_app"]
