"""Sample-level DP-SGD inside each silo with Opacus, federated with plain FedAvg.

Cross-silo federations have few sites (here 4 hospitals), so server-side DP
over sites (noise ``σC/m`` on the mean of ``m`` updates) costs a lot of
accuracy. What hospitals usually want is to protect each *patient*: every
hospital trains with DP-SGD (Abadi et al., 2016) — per-example gradients
clipped to ``max-grad-norm`` and Gaussian noise added to each batch's sum — and
keeps its own accountant across rounds. Whatever leaves the hospital (each
round's model) is then a post-processing of a DP-SGD run, and the hospital's
ε covers every round it took part in.

Each node stores its DP-SGD history (steps, sampling rate, noise) in its
:class:`~consortium.core.context.NodeState`, so the ε it reports as the train
metric ``dp_sgd_epsilon`` composes all its rounds. Opacus draws its noise from
torch's generator unless ``secure_mode=True`` (which needs ``torchcsprng``);
a hospital that needs a cryptographic noise source should turn that on.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.accountants import RDPAccountant
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from consortium.client import ClientApp
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.message import Message
from consortium.core.protocol import LOSS, NUM_EXAMPLES, PARTITION_ID
from consortium.core.records import Metrics
from consortium.datasets import heart_disease as hd
from consortium.ml.torch import load_arrays, state_dict_to_arrays
from consortium.server import ServerApp, ServerConfig
from consortium.strategy import FedAvg

NUM_FEATURES = len(hd.FEATURE_NAMES)
#: the NodeState metrics record holding this node's DP-SGD history
HISTORY = "dp_sgd"


def model() -> nn.Module:
    return nn.Linear(NUM_FEATURES, 1)


def epsilon(history: Metrics, delta: float) -> float:
    """ε of all DP-SGD steps this node ran so far (Opacus's RDP accountant)."""
    accountant = RDPAccountant()
    accountant.history = [
        (history["noise_multiplier"], history["sample_rate"], int(history["steps"]))
    ]
    return float(accountant.get_epsilon(delta))


client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    assert msg.content is not None and msg.content.model is not None
    run: dict[str, Any] = dict(context.run_config)
    data = hd.load_center(int(context.node_config[PARTITION_ID]))
    torch.manual_seed(int(context.rng(msg.metadata.round).integers(2**31)))
    net = model()
    load_arrays(net, msg.content.model)
    dataset = TensorDataset(
        torch.tensor(data.x_train, dtype=torch.float32),
        torch.tensor(data.y_train, dtype=torch.float32).unsqueeze(1),
    )
    optimizer = torch.optim.SGD(net.parameters(), lr=float(run["lr"]))
    engine = PrivacyEngine(accountant="rdp")
    private, optimizer, loader = engine.make_private(
        module=net,
        optimizer=optimizer,
        data_loader=DataLoader(dataset, batch_size=int(run["batch-size"])),
        noise_multiplier=float(run["noise-multiplier"]),
        max_grad_norm=float(run["max-grad-norm"]),
        poisson_sampling=True,  # the sampling the accountant assumes
    )
    loss_fn, losses = nn.BCEWithLogitsLoss(), []
    for _ in range(int(run["local-epochs"])):
        for x, y in loader:
            if len(x) == 0:  # Poisson sampling can draw an empty batch
                continue
            optimizer.zero_grad()
            loss = loss_fn(private(x), y)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    sample_rate = 1 / len(loader)
    before = context.state.metrics.get(HISTORY, {})
    history: Metrics = {
        "steps": float(before.get("steps", 0)) + len(loader) * int(run["local-epochs"]),
        "sample_rate": sample_rate,
        "noise_multiplier": float(run["noise-multiplier"]),
    }
    context.state.metrics[HISTORY] = history
    metrics: Metrics = {
        NUM_EXAMPLES: data.num_train,
        LOSS: float(np.mean(losses)) if losses else 0.0,
        "dp_sgd_epsilon": epsilon(history, float(run["delta"])),
    }
    return msg.reply(arrays=state_dict_to_arrays(net), metrics=metrics)


def server_fn(context: Context) -> ServerConfig:
    centers = hd.load_all()
    x_test = np.concatenate([c.x_test for c in centers])
    y_test = np.concatenate([c.y_test for c in centers])

    def central(rnd: int, arrays: Arrays) -> Metrics:
        logits = x_test @ arrays["weight"][0] + arrays["bias"][0]
        return {"accuracy": float(np.mean((logits > 0) == (y_test == 1)))}

    def init(rng: np.random.Generator) -> Arrays:
        return Arrays(
            {
                "weight": rng.normal(0, 0.01, (1, NUM_FEATURES)).astype(np.float32),
                "bias": np.zeros(1, dtype=np.float32),
            }
        )

    strategy = FedAvg(init_fn=init, fraction_evaluate=0.0, central_evaluate=central)
    return ServerConfig(strategy, num_rounds=int(context.run_config["num-rounds"]))


server_app = ServerApp(server_fn)

__all__ = ["client_app", "server_app"]
