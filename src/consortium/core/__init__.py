"""The vocabulary every other layer speaks: records, messages, errors, randomness.

Each name is imported from its module when first used (PEP 562, as the top-level package
does): ``consortium.core.errors`` alone, which every command of the CLI needs, does not
load numpy.
"""

import typing

from consortium._lazy import lazy_exports as _lazy_exports

#: each public name and the module it is defined in
_HOMES = {
    "Arrays": "consortium.core.arrays",
    "Config": "consortium.core.records",
    "ConfigError": "consortium.core.errors",
    "ConsortiumError": "consortium.core.errors",
    "Content": "consortium.core.message",
    "Context": "consortium.core.context",
    "DatasetError": "consortium.core.errors",
    "Error": "consortium.core.message",
    "History": "consortium.core.history",
    "Message": "consortium.core.message",
    "Metadata": "consortium.core.message",
    "Metrics": "consortium.core.records",
    "MissingDependencyError": "consortium.core.errors",
    "NodeError": "consortium.core.errors",
    "NodeResult": "consortium.core.history",
    "NodeState": "consortium.core.context",
    "Outcome": "consortium.core.history",
    "RoundFailed": "consortium.core.errors",
    "RoundRecord": "consortium.core.history",
    "RunInfo": "consortium.core.history",
    "StrategyError": "consortium.core.errors",
    "UpdateRejected": "consortium.core.errors",
    "WireFormatError": "consortium.core.errors",
    "derive_rng": "consortium.core.rng",
}

if typing.TYPE_CHECKING:
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

__getattr__, __dir__ = _lazy_exports(__name__, _HOMES, globals())
