"""Where a run's events go: MLflow, the terminal, a plot, the log.

Every observer implements :class:`RunObserver`; :class:`Observers` fans events
out to several. Importing this package imports neither mlflow nor matplotlib:
the observers that need them import them when they first work.
"""

from consortium.tracking.base import Observers, RunObserver
from consortium.tracking.log import LogObserver
from consortium.tracking.mlflow_tracker import MLflowObserver
from consortium.tracking.plot import PlotObserver
from consortium.tracking.progress import ProgressObserver

__all__ = [
    "LogObserver",
    "MLflowObserver",
    "Observers",
    "PlotObserver",
    "ProgressObserver",
    "RunObserver",
]
