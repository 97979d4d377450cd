"""Consortium: cross-silo federated learning.

The names below are the public API; everything else lives in subpackages
(``consortium.strategy``, ``consortium.ml``, ``consortium.datasets``, ...).
"""

from consortium._version import __version__
from consortium.client import ClientApp, EvaluateResult, FitResult, NumPyClient
from consortium.control import ControlClient
from consortium.core import (
    Arrays,
    Config,
    ConsortiumError,
    Content,
    Context,
    Message,
    Metrics,
    derive_rng,
)
from consortium.server import ServerApp, ServerConfig
from consortium.simulation import run_simulation
from consortium.strategy import FedAvg, Strategy

__all__ = [
    "Arrays",
    "ClientApp",
    "Config",
    "ConsortiumError",
    "Content",
    "Context",
    "ControlClient",
    "EvaluateResult",
    "FedAvg",
    "FitResult",
    "Message",
    "Metrics",
    "NumPyClient",
    "ServerApp",
    "ServerConfig",
    "Strategy",
    "__version__",
    "derive_rng",
    "run_simulation",
]
