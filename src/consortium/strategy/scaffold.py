"""SCAFFOLD (Karimireddy et al., 2020, "SCAFFOLD: Stochastic Controlled Averaging
for Federated Learning", ICML), server side, with the option-II control variates.

Each round the server sends the global model ``x`` and its control variate
``c`` (the Instruction record :data:`CONTROL_RECORD`). Node ``i`` keeps its own
``c_i`` (zeros at first) in its node state, takes ``K`` SGD steps of size
``eta_l`` along the corrected gradient ``g(y) - c_i + c``, sets
``c_i+ = c_i - c + (x - y_i) / (K eta_l)`` and replies with ``y_i`` and
``delta_c_i = c_i+ - c_i`` (the reply record :data:`DELTA_RECORD`); see
:mod:`consortium.client.scaffold`. The server then applies (algorithm 1, lines
16-17 of the paper)::

    x <- x + eta_g * mean_i(y_i - x)
    c <- c + |S| / N * mean_i(delta_c_i)

over the ``|S|`` nodes that replied out of ``N`` nodes in the federation.

The paper's mean is unweighted (``weighting="uniform"``). FLamby's
``Scaffold``, whose Fed-Heart-Disease numbers we reproduce, weights both means
by the nodes' training examples, which is the default here as in
:class:`~consortium.strategy.fedavg.FedAvg`. With every node taking part each
round, the two means sharing one weighting make this exactly FLamby's update:
FLamby keeps ``c_i - c`` on the node and adds ``(x_new - y_i) / (K eta_l)`` to
it each round, which is what ``c_i+ - c+`` works out to here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import numpy as np

from consortium.core.arrays import Arrays
from consortium.core.errors import RoundFailed, StrategyError
from consortium.core.protocol import SCAFFOLD_CONTROL_RECORD, SCAFFOLD_DELTA_RECORD
from consortium.core.records import Config, Metrics
from consortium.strategy.aggregate import WeightedMean
from consortium.strategy.base import Instruction, TrainReply, weighted_metrics
from consortium.strategy.fedavg import CentralEvalFn, ConfigFn, FedAvg, MetricsAggregation

#: Instruction record carrying the server control variate ``c`` (:mod:`consortium.core.protocol`).
CONTROL_RECORD = SCAFFOLD_CONTROL_RECORD
#: Reply record carrying a node's control-variate update ``c_i+ - c_i``.
DELTA_RECORD = SCAFFOLD_DELTA_RECORD

log = logging.getLogger("consortium.strategy")


class Scaffold(FedAvg):
    """SCAFFOLD's server: averages models and control-variate updates.

    ``server_lr`` is the paper's global step size ``eta_g``; ``num_nodes`` is
    ``N``, the size of the federation (by default, the nodes available in the
    round). Node selection, configs and evaluation are FedAvg's. Control
    variates are kept in float64, whatever the model's dtype. Replies without a
    well-formed :data:`DELTA_RECORD` are left out of both averages (a node
    running a plain FedAvg handler cannot shift ``c``), with a warning.
    """

    def __init__(
        self,
        *,
        server_lr: float = 1.0,
        num_nodes: int | None = None,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_nodes: int = 1,
        min_evaluate_nodes: int = 1,
        min_available_nodes: int = 1,
        initial_arrays: Arrays | None = None,
        init_fn: Callable[[np.random.Generator], Arrays] | None = None,
        train_config: Config | ConfigFn | None = None,
        evaluate_config: Config | ConfigFn | None = None,
        central_evaluate: CentralEvalFn | None = None,
        evaluate_metrics_aggregation: MetricsAggregation | None = None,
        weighting: Literal["examples", "uniform"] = "examples",
    ) -> None:
        super().__init__(
            fraction_train=fraction_train,
            fraction_evaluate=fraction_evaluate,
            min_train_nodes=min_train_nodes,
            min_evaluate_nodes=min_evaluate_nodes,
            min_available_nodes=min_available_nodes,
            initial_arrays=initial_arrays,
            init_fn=init_fn,
            train_config=train_config,
            evaluate_config=evaluate_config,
            central_evaluate=central_evaluate,
            evaluate_metrics_aggregation=evaluate_metrics_aggregation,
            weighting=weighting,
        )
        if not (np.isfinite(server_lr) and server_lr > 0.0):
            raise StrategyError(f"server_lr must be a positive number, got {server_lr!r}")
        if num_nodes is not None and num_nodes < 1:
            raise StrategyError(f"num_nodes must be >= 1, got {num_nodes}")
        self.server_lr = float(server_lr)
        self.num_nodes = num_nodes
        self.control: Arrays | None = None
        self._federation_size = num_nodes or 0

    # -- hooks ------------------------------------------------------------------
    def configure_train(
        self, round: int, arrays: Arrays, nodes: Sequence[str], rng: np.random.Generator
    ) -> list[Instruction]:
        if self.control is None:
            self.control = _zeros_like(arrays)
        elif not _same_layout(self.control, arrays):
            raise StrategyError(
                "the SCAFFOLD control variate does not match the global model: "
                f"{self.control.signature()} vs {arrays.signature()}"
            )
        self._federation_size = self.num_nodes or len(nodes)
        control = self.control
        return [
            Instruction(i.node_id, i.arrays, i.config, {**i.records, CONTROL_RECORD: control})
            for i in super().configure_train(round, arrays, nodes, rng)
        ]

    def aggregate_train(
        self, round: int, current: Arrays, replies: Iterable[TrainReply]
    ) -> tuple[Arrays, Metrics]:
        if self.control is None:
            raise StrategyError("aggregate_train was called before configure_train")
        models, deltas = WeightedMean(), WeightedMean()
        metrics: list[tuple[int, Metrics]] = []
        for reply in replies:
            delta = reply.records.get(DELTA_RECORD)
            if delta is None or not _same_layout(delta, current):
                log.warning(
                    "round %d: node %s sent no valid %r record; its update is left out",
                    round,
                    reply.node_id,
                    DELTA_RECORD,
                )
                continue
            weight = float(reply.num_examples) if self.weighting == "examples" else 1.0
            models.add(reply.arrays, weight)
            deltas.add(delta, weight)
            metrics.append((reply.num_examples, reply.metrics))
            del reply, delta  # folded: let the update go before the next one arrives
        mean_model, mean_delta = models.result(), deltas.result()
        if mean_model is None or mean_delta is None:
            raise RoundFailed(
                f"round {round}: no SCAFFOLD update (model and {DELTA_RECORD!r}) with a "
                "positive weight"
            )
        # never update in place: the old arrays may still be referenced by sent messages
        new = Arrays()
        for name, x in current.items():
            x64 = np.asarray(x, dtype=np.float64)
            step = np.asarray(mean_model[name], dtype=np.float64) - x64
            new[name] = (x64 + self.server_lr * step).astype(x.dtype, copy=False)
        share = models.count / max(self._federation_size, models.count)
        self.control = Arrays(
            (name, c + share * np.asarray(mean_delta[name], dtype=np.float64))
            for name, c in self.control.items()
        )
        return new, weighted_metrics(metrics)

    def settings(self) -> Config:
        return {
            **super().settings(),
            "server_lr": self.server_lr,
            "num_nodes": self.num_nodes or 0,
        }

    def state_dict(self) -> dict[str, Any]:
        """The server control variate ``c`` (a copy), or nothing before the first round."""
        return {} if self.control is None else {"control": self.control.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unknown = set(state) - {"control"}
        if unknown:
            raise StrategyError(f"Scaffold cannot restore unknown state {sorted(unknown)}")
        control = state.get("control")
        if control is not None and not isinstance(control, Arrays):
            raise StrategyError(f"Scaffold state 'control' must be Arrays, got {type(control)}")
        self.control = None if control is None else control.copy()


def _zeros_like(arrays: Arrays) -> Arrays:
    return Arrays((name, np.zeros(value.shape)) for name, value in arrays.items())


def _same_layout(a: Arrays, b: Arrays) -> bool:
    """Same names in the same order with the same shapes (dtypes may differ)."""
    return [(n, v.shape) for n, v in a.items()] == [(n, v.shape) for n, v in b.items()]
