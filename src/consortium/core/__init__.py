"""The vocabulary every other layer speaks: records, messages, errors, randomness."""

from consortium.core.arrays import Arrays
from consortium.core.context import Context, NodeState
from consortium.core.errors import (
    ConfigError,
    ConsortiumError,
    DatasetError,
    MissingDependencyError,
    NodeError,
    RoundFailed,
    StrategyError,
    UpdateRejected,
    WireFormatError,
)
from consortium.core.history import History, NodeResult, Outcome, RoundRecord, RunInfo
from consortium.core.message import Content, Error, Message, Metadata
from consortium.core.records import Config, Metrics
from consortium.core.rng import derive_rng

__all__ = [
    "Arrays",
    "Config",
    "ConfigError",
    "ConsortiumError",
    "Content",
    "Context",
    "DatasetError",
    "Error",
    "History",
    "Message",
    "Metadata",
    "Metrics",
    "MissingDependencyError",
    "NodeError",
    "NodeResult",
    "NodeState",
    "Outcome",
    "RoundFailed",
    "RoundRecord",
    "RunInfo",
    "StrategyError",
    "UpdateRejected",
    "WireFormatError",
    "derive_rng",
]
