"""Consortium: cross-silo federated learning.

The names below are the public API; everything else lives in subpackages
(``consortium.strategy``, ``consortium.ml``, ``consortium.datasets``, ...).
Each name is imported from its subpackage when first used (PEP 562), so a
process that needs only part of the package (a node's app process, a
simulation worker) does not load the rest: ``import consortium.client`` costs
~33 MB instead of the whole package's ~50 MB.
"""

import typing

from consortium._lazy import lazy_exports as _lazy_exports
from consortium._version import __version__

#: each public name and the module that defines it (or a package that imports it eagerly)
_HOMES = {
    "Arrays": "consortium.core.arrays",
    "ClientApp": "consortium.client",
    "Config": "consortium.core.records",
    "ConsortiumError": "consortium.core.errors",
    "Content": "consortium.core.message",
    "Context": "consortium.core.context",
    "ControlClient": "consortium.control",
    "EvaluateResult": "consortium.client",
    "FedAvg": "consortium.strategy",
    "FitResult": "consortium.client",
    "Message": "consortium.core.message",
    "Metrics": "consortium.core.records",
    "NumPyClient": "consortium.client",
    "ServerApp": "consortium.server",
    "ServerConfig": "consortium.server",
    "Strategy": "consortium.strategy",
    "derive_rng": "consortium.core.rng",
    "run_simulation": "consortium.simulation.engine",
}

if typing.TYPE_CHECKING:
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

__getattr__, __dir__ = _lazy_exports(__name__, _HOMES, globals())
