"""Client side: the ClientApp a silo runs and the NumPyClient adapter."""

from consortium.client.app import ClientApp, ClientFn, Handler
from consortium.client.numpy_client import EvaluateResult, FitResult, NumPyClient

__all__ = ["ClientApp", "ClientFn", "EvaluateResult", "FitResult", "Handler", "NumPyClient"]
