"""The aggregation server: ServerApp (a main over the Grid, or a workflow config), workflows."""

from consortium.server.app import MainFn, ServerApp, ServerFn
from consortium.server.config import AsyncServerConfig, ServerConfig
from consortium.server.context import ModelExporter, RunStopped, ServerContext
from consortium.server.host import RunResult, run_server_app
from consortium.server.model_io import load_model, save_model
from consortium.server.workflow import FedBuffWorkflow, RoundWorkflow

__all__ = [
    "AsyncServerConfig",
    "FedBuffWorkflow",
    "MainFn",
    "ModelExporter",
    "RoundWorkflow",
    "RunResult",
    "RunStopped",
    "ServerApp",
    "ServerConfig",
    "ServerContext",
    "ServerFn",
    "load_model",
    "run_server_app",
    "save_model",
]
