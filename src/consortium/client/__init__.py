"""Client side: the ClientApp a silo runs and the NumPyClient adapter."""

from consortium.client.app import ClientApp, ClientFn, Handler
from consortium.client.numpy_client import EvaluateResult, FitResult, NumPyClient
from consortium.client.personal import Ditto, LocalLayers, PersonalTrainFn, ditto_correction
from consortium.client.scaffold import (
    LocalTrainFn,
    ScaffoldUpdate,
    control_variate,
    is_scaffold_task,
    scaffold_train,
)

__all__ = [
    "ClientApp",
    "ClientFn",
    "Ditto",
    "EvaluateResult",
    "FitResult",
    "Handler",
    "LocalLayers",
    "LocalTrainFn",
    "NumPyClient",
    "PersonalTrainFn",
    "ScaffoldUpdate",
    "control_variate",
    "ditto_correction",
    "is_scaffold_task",
    "scaffold_train",
]
