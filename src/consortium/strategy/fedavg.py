"""FedAvg (McMahan et al., 2017): the example-weighted mean of local models."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Literal

import numpy as np

from consortium.core.arrays import Arrays
from consortium.core.errors import RoundFailed, StrategyError
from consortium.core.protocol import STRATEGY_SETTING
from consortium.core.records import Config, Metrics
from consortium.strategy.aggregate import WeightedMean
from consortium.strategy.base import (
    EvaluateReply,
    Instruction,
    Strategy,
    TrainReply,
    check_min_available_nodes,
    sample_nodes,
    weighted_metrics,
)

#: round -> config sent to every sampled node that round (learning-rate schedules, ...)
ConfigFn = Callable[[int], Config]
#: (round, global arrays) -> metrics on server-held data, or None
CentralEvalFn = Callable[[int, Arrays], Metrics | None]
#: [(num_examples, metrics) per node] -> combined metrics
MetricsAggregation = Callable[[list[tuple[int, Metrics]]], Metrics]


class FedAvg(Strategy):
    """Federated averaging, weighted by each node's number of training examples.

    ``weighting="uniform"`` gives every node one vote instead (useful when a
    small silo's distribution matters as much as a large one's).

    Replies are folded as they arrive (:class:`WeightedMean`), so the server
    holds one running sum however many nodes take part.
    """

    def __init__(
        self,
        *,
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
        accumulate: Literal["float64", "input"] = "float64",
    ) -> None:
        for name, value in (
            ("fraction_train", fraction_train),
            ("fraction_evaluate", fraction_evaluate),
        ):
            if not 0.0 <= value <= 1.0:
                raise StrategyError(f"{name} must be within [0, 1], got {value}")
        if weighting not in ("examples", "uniform"):
            raise StrategyError(f"weighting must be 'examples' or 'uniform', got {weighting!r}")
        for name, count in (
            ("min_train_nodes", min_train_nodes),
            ("min_evaluate_nodes", min_evaluate_nodes),
        ):
            if count < 0:
                raise StrategyError(f"{name} must be >= 0, got {count}")
        self.fraction_train = fraction_train
        self.fraction_evaluate = fraction_evaluate
        self.min_train_nodes = min_train_nodes
        self.min_evaluate_nodes = min_evaluate_nodes
        self._min_available_nodes = check_min_available_nodes(min_available_nodes)
        self.initial_arrays = initial_arrays
        self.init_fn = init_fn
        self.train_config = train_config
        self.evaluate_config = evaluate_config
        self.central_evaluate = central_evaluate
        self.evaluate_metrics_aggregation = evaluate_metrics_aggregation or weighted_metrics
        self.weighting = weighting
        #: how replies are summed (:class:`WeightedMean`): "input" halves the server's
        #: memory for float32 models (1 x model instead of 2 x) at float32 rounding
        self.accumulate = accumulate

    @property
    def min_available_nodes(self) -> int:
        """The ``min_available_nodes`` given: nodes online before a round starts (>= 1)."""
        return self._min_available_nodes

    # -- hooks ------------------------------------------------------------------
    def initialize(self, rng: np.random.Generator) -> Arrays | None:
        if self.initial_arrays is not None:
            return self.initial_arrays
        if self.init_fn is not None:
            return self.init_fn(rng)
        return None

    def configure_train(
        self, round: int, arrays: Arrays, nodes: Sequence[str], rng: np.random.Generator
    ) -> list[Instruction]:
        chosen = sample_nodes(
            nodes, self.fraction_train, self.min_train_nodes, self.min_available_nodes, rng
        )
        config = _resolve(self.train_config, round)
        return [Instruction(node, arrays, config) for node in chosen]

    def aggregate_train(
        self, round: int, current: Arrays, replies: Iterable[TrainReply]
    ) -> tuple[Arrays, Metrics]:
        mean = WeightedMean(accumulate=self.accumulate)
        metrics: list[tuple[int, Metrics]] = []
        for reply in replies:
            weight = float(reply.num_examples) if self.weighting == "examples" else 1.0
            mean.add(reply.arrays, weight)
            metrics.append((reply.num_examples, reply.metrics))
            del reply  # folded: do not keep a model-sized update alive while the next arrives
        result = mean.result()
        if result is None:
            raise RoundFailed(f"round {round}: no update with a positive number of examples")
        return result, weighted_metrics(metrics)

    def configure_evaluate(
        self, round: int, arrays: Arrays, nodes: Sequence[str], rng: np.random.Generator
    ) -> list[Instruction]:
        if self.fraction_evaluate == 0.0:
            return []
        chosen = sample_nodes(
            nodes, self.fraction_evaluate, self.min_evaluate_nodes, self.min_available_nodes, rng
        )
        config = _resolve(self.evaluate_config, round)
        return [Instruction(node, arrays, config) for node in chosen]

    def aggregate_evaluate(self, round: int, replies: Iterable[EvaluateReply]) -> Metrics:
        return self.evaluate_metrics_aggregation([(r.num_examples, r.metrics) for r in replies])

    def evaluate(self, round: int, arrays: Arrays) -> Metrics | None:
        if self.central_evaluate is None:
            return None
        return self.central_evaluate(round, arrays)

    def settings(self) -> Config:
        return {
            STRATEGY_SETTING: type(self).__name__,
            "fraction_train": self.fraction_train,
            "fraction_evaluate": self.fraction_evaluate,
            "min_train_nodes": self.min_train_nodes,
            "min_available_nodes": self.min_available_nodes,
            "weighting": self.weighting,
        }


def _resolve(config: Config | ConfigFn | None, round: int) -> Config:
    if config is None:
        return {}
    if callable(config):
        return dict(config(round))
    return dict(config)
