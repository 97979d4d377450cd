"""Client side: the ClientApp a silo runs and the NumPyClient adapter."""

from consortium.client.app import ClientApp, ClientFn, Handler
from consortium.client.numpy_client import EvaluateResult, FitResult, NumPyClient
from consortium.client.personal import Ditto, LocalLayers, PersonalTrainFn, ditto_correction

__all__ = [
    "ClientApp",
    "ClientFn",
    "Ditto",
    "EvaluateResult",
    "FitResult",
    "Handler",
    "LocalLayers",
    "NumPyClient",
    "PersonalTrainFn",
    "ditto_correction",
]
