"""What a deployed run records besides the state store: its log, its plot, MLflow.

The same observers as ``consortium simulate``: one parent MLflow run per run
with a child per hospital, params and per-round metrics, the model and plot
as artifacts; a ``run.log`` and ``metrics.png`` in the run's folder. The log
is written by the server; the plot and MLflow by a process of the run's own
(:mod:`~consortium.server.tracking_process`), so that the server does not
carry MLflow's and matplotlib's memory. The
store is ``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else a SQLite
store beside the state database (``WORKDIR/mlflow.db``, artifacts in
``WORKDIR/mlartifacts``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

from consortium.core.errors import ConfigError
from consortium.server.tracking_process import ChildConfig, TrackingProcess
from consortium.tracking.base import RunObserver
from consortium.tracking.log import LogObserver

log = logging.getLogger("consortium.server")

#: the variable MLflow itself reads, honoured when --tracking-uri is not given
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
#: the files of a run's folder logged as MLflow artifacts: the server's plot and log and
#: the app's final model, and nothing else the app wrote in work/ (an MLflow reader must
#: not get, say, per-node updates a strategy saved there)
RUN_ARTIFACTS = ("metrics.png", "run.log", "work/model.npz")


@dataclass(frozen=True, slots=True)
class Tracking:
    """Where deployed runs are tracked (None: MLflow off) and whether they are plotted."""

    tracking_uri: str | None
    artifact_location: str | None = None
    plot: bool = True

    @classmethod
    def configure(cls, workdir: Path, tracking_uri: str | None, *, enabled: bool) -> Tracking:
        """``--tracking-uri``/``--no-tracking`` of ``consortium server``."""
        uri = tracking_uri or os.environ.get(TRACKING_URI_ENV) or None
        if not enabled:
            return cls(None, plot=_have("matplotlib"))
        if not _have("mlflow"):
            if uri is not None:
                raise ConfigError(
                    f"tracking to {uri} needs MLflow: pip install 'consortium[tracking]'"
                )
            log.info("MLflow is not installed: deployed runs are not tracked in MLflow")
            return cls(None, plot=_have("matplotlib"))
        if uri is None:
            workdir = workdir.resolve()
            return cls(f"sqlite:///{workdir / 'mlflow.db'}", (workdir / "mlartifacts").as_uri())
        return cls(uri)

    def child_config(self) -> ChildConfig:
        """What the run's tracking process (:mod:`~consortium.server.tracking_process`) does."""
        return ChildConfig(self.tracking_uri, self.artifact_location, self.plot, RUN_ARTIFACTS)

    def observers(self, run_id: str, run_dir: Path) -> tuple[list[RunObserver], Callable[[], None]]:
        """The run's observers, and what to call once it ended (closes its log file)."""
        logger = logging.getLogger(f"consortium.run.{run_id}")
        handler = logging.FileHandler(run_dir / "run.log", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        observers: list[RunObserver] = [LogObserver(logger, max_node_warnings=0)]
        child: TrackingProcess | None = None
        if self.plot or self.tracking_uri is not None:
            # in a process of its own: MLflow and matplotlib would cost the server ~150 MB
            child = TrackingProcess(self.child_config())
            observers.append(child)

        def close() -> None:
            if child is not None:  # a run that ended without its end event: not left behind
                child.close()
            logger.removeHandler(handler)
            handler.close()

        return observers, close


def _have(module: str) -> bool:
    return find_spec(module) is not None
