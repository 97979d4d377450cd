"""The overhead benchmark's app: a two-convolution CNN on the 8x8 digits, trained with SGD.

Each hospital (node config ``center``, as ``consortium local`` gives it; any
other name hashes to a share) trains ``local-epochs`` epochs on its quarter
of the training split, then scores the model it trained on the held-out
quarter. The handler's body -- loading the global model into the network,
training, scoring and exporting the weights -- is timed with
``time.perf_counter`` and reported as the metric ``own-seconds``: the node's
own work, which ``benchmarks/overhead.py`` subtracts from each round's wall
time to find what the framework costs. One torch thread per node: four nodes
share the machine's cores.
"""

from __future__ import annotations

import functools
import time
import zlib
from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from consortium.client import ClientApp
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.message import Message
from consortium.core.protocol import LOSS, NUM_EXAMPLES
from consortium.server import ServerApp, ServerConfig
from consortium.strategy import FedAvg

#: the hospitals of ``consortium local``, in the order of their shares
HOSPITALS = ("cleveland", "hungarian", "switzerland", "va")
#: the metric each node reports: seconds of its own work in the handler
OWN_SECONDS = "own-seconds"


@functools.cache
def split(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, x_test, y_train, y_test): a stratified 75/25 split, images 1x8x8 in [0, 1]."""
    x, y = load_digits(return_X_y=True)
    images = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    parts = train_test_split(images, y, test_size=0.25, stratify=y, random_state=seed)
    return parts[0], parts[1], parts[2].astype(np.int64), parts[3].astype(np.int64)


def network(channels: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(channels, 2 * channels, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2 * channels * 64, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def share(center: str) -> int:
    if center in HOSPITALS:
        return HOSPITALS.index(center)
    return zlib.crc32(center.encode()) % len(HOSPITALS)


def _load(net: nn.Module, arrays: Arrays) -> None:
    net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()})


def _export(net: nn.Module) -> Arrays:
    return Arrays({k: v.detach().numpy().copy() for k, v in net.state_dict().items()})


client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    started = time.perf_counter()
    assert msg.content is not None and msg.content.model is not None
    run: dict[str, Any] = dict(context.run_config)
    torch.set_num_threads(1)
    x, x_test, y, y_test = split(int(run["data-seed"]))
    rows = np.arange(share(str(context.node_config.get("center", ""))), len(y), len(HOSPITALS))
    net = network(int(run["channels"]))
    _load(net, msg.content.model)
    seed = int(context.rng(msg.metadata.round).integers(2**31))
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(net.parameters(), lr=float(run["lr"]), momentum=0.9)
    xs, ys, losses = torch.from_numpy(x[rows]), torch.from_numpy(y[rows]), []
    net.train()
    for _ in range(int(run["local-epochs"])):
        for batch in torch.randperm(len(xs), generator=generator).split(int(run["batch-size"])):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(net(xs[batch]), ys[batch])
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    net.eval()
    with torch.no_grad():
        predicted = net(torch.from_numpy(x_test)).argmax(1).numpy()
    arrays = _export(net)
    metrics = {
        NUM_EXAMPLES: len(rows),
        LOSS: float(np.mean(losses)),
        "accuracy": float(np.mean(predicted == y_test)),
        OWN_SECONDS: time.perf_counter() - started,
    }
    return msg.reply(arrays=arrays, metrics=metrics)


def server_fn(context: Context) -> ServerConfig:
    run: dict[str, Any] = dict(context.run_config)

    def init(rng: np.random.Generator) -> Arrays:
        torch.manual_seed(int(rng.integers(2**31)))
        return _export(network(int(run["channels"])))

    strategy = FedAvg(init_fn=init, fraction_evaluate=0.0, min_available_nodes=len(HOSPITALS))
    return ServerConfig(strategy, num_rounds=int(run["num-rounds"]))


server_app = ServerApp(server_fn)
