"""Client side: the ClientApp a silo runs, its mods, the task runner, the NumPyClient adapter."""

from consortium.client.app import ClientApp, ClientFn, Handler, Mod
from consortium.client.compression import compression_mod
from consortium.client.compression_codecs import CompressionSpec
from consortium.client.mods import clip_update_mod, update_norm_mod
from consortium.client.numpy_client import EvaluateResult, FitResult, NumPyClient
from consortium.client.personal import Ditto, LocalLayers, PersonalTrainFn, ditto_correction
from consortium.client.scaffold import (
    LocalTrainFn,
    ScaffoldUpdate,
    control_variate,
    is_scaffold_task,
    scaffold_train,
)
from consortium.client.task import TaskResult, failure_reply, run_task

__all__ = [
    "ClientApp",
    "ClientFn",
    "CompressionSpec",
    "Ditto",
    "EvaluateResult",
    "FitResult",
    "Handler",
    "LocalLayers",
    "LocalTrainFn",
    "Mod",
    "NumPyClient",
    "PersonalTrainFn",
    "ScaffoldUpdate",
    "TaskResult",
    "clip_update_mod",
    "compression_mod",
    "control_variate",
    "ditto_correction",
    "failure_reply",
    "is_scaffold_task",
    "run_task",
    "scaffold_train",
    "update_norm_mod",
]
