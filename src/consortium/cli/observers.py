"""The observers a CLI run attaches: log file, progress, MLflow, plot."""

from __future__ import annotations

import logging
from pathlib import Path

from rich.console import Console

from consortium.tracking.base import RunObserver
from consortium.tracking.log import LogObserver
from consortium.tracking.progress import ProgressObserver


def configure_logging(run_dir: Path, *, verbose: bool = False, filename: str = "run.log") -> None:
    """Everything to ``run_dir/<filename>``; warnings (node failures) also to stderr."""
    run_dir.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger("consortium")
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for h in list(root.handlers):
        root.removeHandler(h)
    file_handler = logging.FileHandler(run_dir / filename, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root.addHandler(file_handler)
    console = logging.StreamHandler()
    console.setLevel(logging.INFO if verbose else logging.WARNING)
    console.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root.addHandler(console)
    root.propagate = False
    # MLflow announces its own database migrations at INFO; keep the terminal for the run
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def build_observers(
    run_dir: Path,
    *,
    tracking: bool,
    progress: bool,
    plot: bool,
    console: Console | None = None,
) -> list[RunObserver]:
    # the round loop already logs each node failure with its traceback when it happens
    observers: list[RunObserver] = [LogObserver(max_node_warnings=0)]
    if progress:
        observers.append(ProgressObserver(console=console))
    if plot:  # before MLflow, so metrics.png exists when MLflow collects artifacts
        from consortium.tracking.plot import PlotObserver

        observers.append(PlotObserver())
    if tracking:
        from consortium.tracking.mlflow_tracker import MLflowObserver

        observers.append(MLflowObserver())
    return observers
