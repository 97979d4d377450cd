"""Aggregation strategies: pure functions of replies, no I/O (see docs/strategies.md)."""

from consortium.strategy.aggregate import DifferenceSum, WeightedMean
from consortium.strategy.base import (
    EvaluateReply,
    Instruction,
    Strategy,
    StrategyWrapper,
    TrainReply,
    mean_metrics,
    sample_nodes,
    weighted_metrics,
)
from consortium.strategy.clipping import ClippedUpdates, clip_update
from consortium.strategy.cyclic import Cyclic
from consortium.strategy.fedavg import FedAvg
from consortium.strategy.fedbuff import AsyncStrategy, AsyncUpdate, FedBuff, polynomial_staleness
from consortium.strategy.fednova import LOCAL_STEPS_KEY, FedNova
from consortium.strategy.fedopt import (
    FedAdagrad,
    FedAdam,
    FedAvgM,
    FedOpt,
    FedYogi,
    ServerAdagrad,
    ServerAdam,
    ServerMomentum,
    ServerOptimizer,
    ServerYogi,
)
from consortium.strategy.fedprox import PROX_MU_KEY, FedProx
from consortium.strategy.qfedavg import INITIAL_LOSS_KEY, QFedAvg
from consortium.strategy.robust import (
    Bulyan,
    CoordinateMedian,
    Krum,
    MultiKrum,
    RobustFedAvg,
    RobustRule,
    TrimmedMean,
)
from consortium.strategy.scaffold import Scaffold

__all__ = [
    "INITIAL_LOSS_KEY",
    "LOCAL_STEPS_KEY",
    "PROX_MU_KEY",
    "AsyncStrategy",
    "AsyncUpdate",
    "Bulyan",
    "ClippedUpdates",
    "CoordinateMedian",
    "Cyclic",
    "DifferenceSum",
    "EvaluateReply",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedBuff",
    "FedNova",
    "FedOpt",
    "FedProx",
    "FedYogi",
    "Instruction",
    "Krum",
    "MultiKrum",
    "QFedAvg",
    "RobustFedAvg",
    "RobustRule",
    "Scaffold",
    "ServerAdagrad",
    "ServerAdam",
    "ServerMomentum",
    "ServerOptimizer",
    "ServerYogi",
    "Strategy",
    "StrategyWrapper",
    "TrainReply",
    "TrimmedMean",
    "WeightedMean",
    "clip_update",
    "mean_metrics",
    "polynomial_staleness",
    "sample_nodes",
    "weighted_metrics",
]
