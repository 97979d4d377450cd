"""Cyclic weight transfer (Chang et al., 2018, "Distributed deep learning networks
among institutions for medical imaging", JAMIA 25(8)), as FLamby's ``Cyclic``.

One model travels from node to node: each round exactly one node trains it
(its usual local steps) and the model it returns is the new global model.
Nodes are visited in a random order that is drawn afresh at the start of every
cycle (every pass over the nodes), or in sorted order with
``deterministic_cycle=True``. This is FLamby's ``Cyclic.perform_round``: a
round is one node's local training, so 15 rounds over 4 hospitals are 3 full
cycles and 3 nodes of a fourth.

The order is drawn from the round's generator that the server loop injects,
so the same run seed gives the same visiting order; the current cycle is the
strategy's state (``state_dict``) so a resumed server carries on where it
stopped. A node that disappears mid-cycle is skipped; a node that appears
joins at the next cycle.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from consortium.core.arrays import Arrays
from consortium.core.errors import RoundFailed, StrategyError
from consortium.core.protocol import STRATEGY_SETTING
from consortium.core.records import Config, Metrics
from consortium.strategy.base import Instruction, TrainReply, weighted_metrics
from consortium.strategy.fedavg import (
    CentralEvalFn,
    ConfigFn,
    FedAvg,
    MetricsAggregation,
    _resolve,
)


class Cyclic(FedAvg):
    """Sequential training: each round one node, in a reshuffled cyclic order.

    Initialisation, train/evaluate configs and (federated or central)
    evaluation work as in :class:`~consortium.strategy.fedavg.FedAvg`.
    """

    def __init__(
        self,
        *,
        deterministic_cycle: bool = False,
        fraction_evaluate: float = 1.0,
        min_evaluate_nodes: int = 1,
        min_available_nodes: int = 1,
        initial_arrays: Arrays | None = None,
        init_fn: Callable[[np.random.Generator], Arrays] | None = None,
        train_config: Config | ConfigFn | None = None,
        evaluate_config: Config | ConfigFn | None = None,
        central_evaluate: CentralEvalFn | None = None,
        evaluate_metrics_aggregation: MetricsAggregation | None = None,
    ) -> None:
        super().__init__(
            fraction_evaluate=fraction_evaluate,
            min_evaluate_nodes=min_evaluate_nodes,
            min_available_nodes=min_available_nodes,
            initial_arrays=initial_arrays,
            init_fn=init_fn,
            train_config=train_config,
            evaluate_config=evaluate_config,
            central_evaluate=central_evaluate,
            evaluate_metrics_aggregation=evaluate_metrics_aggregation,
        )
        self.deterministic_cycle = bool(deterministic_cycle)
        self._order: list[str] = []
        self._position = 0

    @property
    def cycle(self) -> list[str]:
        """The visiting order of the current cycle (empty before the first round)."""
        return list(self._order)

    def configure_train(
        self, round: int, arrays: Arrays, nodes: Sequence[str], rng: np.random.Generator
    ) -> list[Instruction]:
        available = sorted(nodes)
        if not available or len(available) < self.min_available_nodes:
            raise StrategyError(
                f"{len(available)} nodes available, Cyclic needs at least "
                f"{self.min_available_nodes}"
            )
        present = set(available)
        while True:
            while self._position < len(self._order) and self._order[self._position] not in present:
                self._position += 1  # that node left during the cycle
            if self._position < len(self._order):
                break
            self._order = self._new_cycle(available, rng)
            self._position = 0
        node = self._order[self._position]
        self._position += 1
        return [Instruction(node, arrays, _resolve(self.train_config, round))]

    def _new_cycle(self, available: list[str], rng: np.random.Generator) -> list[str]:
        if self.deterministic_cycle:
            return list(available)
        return [available[i] for i in rng.permutation(len(available)).tolist()]

    def aggregate_train(
        self, round: int, current: Arrays, replies: Iterable[TrainReply]
    ) -> tuple[Arrays, Metrics]:
        received = list(replies)  # one reply at most: only one node was asked
        if not received:
            raise RoundFailed(f"round {round}: the node whose turn it was sent no model")
        if len(received) > 1:
            names = ", ".join(r.node_id for r in received)
            raise StrategyError(f"round {round}: Cyclic expects one reply, got {names}")
        reply = received[0]
        return reply.arrays, weighted_metrics([(reply.num_examples, reply.metrics)])

    def settings(self) -> Config:
        return {
            STRATEGY_SETTING: type(self).__name__,
            "deterministic_cycle": self.deterministic_cycle,
            "fraction_evaluate": self.fraction_evaluate,
            "min_available_nodes": self.min_available_nodes,
        }

    def state_dict(self) -> dict[str, Any]:
        """The current cycle's order and how far along it the next round starts."""
        return {"order": list(self._order), "position": self._position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unknown = set(state) - {"order", "position"}
        if unknown:
            raise StrategyError(f"Cyclic cannot restore unknown state {sorted(unknown)}")
        order = state.get("order", [])
        position = state.get("position", 0)
        if not isinstance(order, list) or not all(isinstance(n, str) for n in order):
            raise StrategyError(f"Cyclic state 'order' must be a list of node ids, got {order!r}")
        if isinstance(position, bool) or not isinstance(position, int):
            raise StrategyError(f"Cyclic state 'position' must be an integer, got {position!r}")
        if not 0 <= position <= len(order):
            raise StrategyError(f"Cyclic state 'position' {position} is outside [0, {len(order)}]")
        self._order = list(order)
        self._position = position
