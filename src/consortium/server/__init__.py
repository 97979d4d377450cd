"""The aggregation server: the ServerApp contract and the default round loop."""

from consortium.server.app import ModelExporter, ServerApp, ServerConfig
from consortium.server.async_loop import AsyncLoop, AsyncServerConfig
from consortium.server.loop import RoundLoop, RunResult
from consortium.server.model_io import load_model, save_model

__all__ = [
    "AsyncLoop",
    "AsyncServerConfig",
    "ModelExporter",
    "RoundLoop",
    "RunResult",
    "ServerApp",
    "ServerConfig",
    "load_model",
    "save_model",
]
