"""Aggregation strategies: pure functions of replies, no I/O."""

from consortium.strategy.aggregate import WeightedMean
from consortium.strategy.base import (
    EvaluateReply,
    Instruction,
    Strategy,
    TrainReply,
    mean_metrics,
    sample_nodes,
    weighted_metrics,
)
from consortium.strategy.fedavg import FedAvg

__all__ = [
    "EvaluateReply",
    "FedAvg",
    "Instruction",
    "Strategy",
    "TrainReply",
    "WeightedMean",
    "mean_metrics",
    "sample_nodes",
    "weighted_metrics",
]
