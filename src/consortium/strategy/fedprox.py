"""FedProx (Li et al., 2020, "Federated Optimization in Heterogeneous Networks").

The server side of FedProx is FedAvg; the difference lives on the nodes, which
minimise ``F_k(w) + mu/2 ||w - w_global||^2`` instead of ``F_k(w)``. The
strategy therefore only adds ``"prox-mu": mu`` to every train config. A client
app reads it from its train config and hands it to its trainer, e.g.
``logistic.train(..., prox_mu=config["prox-mu"])`` or ``mlp.train``; the
heart-disease app does so already (it merges the message config over its
run config).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from consortium.core.arrays import Arrays
from consortium.core.errors import StrategyError
from consortium.core.protocol import PROX_MU_KEY
from consortium.core.records import Config
from consortium.strategy.base import Instruction
from consortium.strategy.fedavg import FedAvg

__all__ = ["PROX_MU_KEY", "FedProx"]


class FedProx(FedAvg):
    """FedAvg that asks every node for the proximal term ``mu/2 ||w - w_global||^2``.

    ``mu = 0`` is FedAvg. Every other keyword is FedAvg's (sampling, configs,
    evaluation, weighting). A ``train_config`` may not set ``"prox-mu"`` itself.
    """

    def __init__(self, mu: float, **fedavg_kwargs: Any) -> None:
        if isinstance(mu, bool) or not isinstance(mu, (int, float)) or not math.isfinite(mu):
            raise StrategyError(f"FedProx mu must be a finite number, got {mu!r}")
        if mu < 0:
            raise StrategyError(f"FedProx mu must be >= 0, got {mu}")
        super().__init__(**fedavg_kwargs)
        self.mu = float(mu)

    def configure_train(
        self, round: int, arrays: Arrays, nodes: Sequence[str], rng: np.random.Generator
    ) -> list[Instruction]:
        instructions = super().configure_train(round, arrays, nodes, rng)
        return [dataclasses.replace(i, config=self._with_mu(i.config)) for i in instructions]

    def _with_mu(self, config: Config) -> Config:
        if PROX_MU_KEY in config and config[PROX_MU_KEY] != self.mu:
            raise StrategyError(
                f"the train config sets {PROX_MU_KEY!r}={config[PROX_MU_KEY]!r}, but this FedProx "
                f"has mu={self.mu}: set mu on the strategy only"
            )
        return {**config, PROX_MU_KEY: self.mu}

    def settings(self) -> Config:
        return {**super().settings(), "prox_mu": self.mu}
