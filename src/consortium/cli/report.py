"""Tables printed at the end of a run."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from consortium.core.history import History
from consortium.core.protocol import NUM_EXAMPLES
from consortium.tracking.base import RunObserver
from consortium.tracking.mlflow_tracker import MLflowObserver


def make_console() -> Console:
    """A console that does not squeeze tables into 80 columns when output is piped."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 130))
    return console


def print_history(console: Console, history: History, *, title: str = "Rounds") -> None:
    """One row per round, one column per global metric, plus node failures."""
    keys: list[str] = []
    for record in history.rounds:
        for key in record.global_metrics():
            if key not in keys and not key.endswith(NUM_EXAMPLES):
                keys.append(key)
    table = Table(title=title)
    table.add_column("round", justify="right")
    for key in keys:
        table.add_column(key, justify="right")
    table.add_column("failed nodes", justify="right")
    table.add_column("seconds", justify="right")
    for record in history.rounds:
        metrics = record.global_metrics()
        cells = [f"{metrics[k]:.4f}" if k in metrics else "" for k in keys]
        table.add_row(
            str(record.round), *cells, str(len(record.failures())), f"{record.seconds:.2f}"
        )
    console.print(table)


def tracking_hint(observers: Sequence[RunObserver]) -> str | None:
    for o in observers:
        if isinstance(o, MLflowObserver) and o.tracking_uri:
            return f"see the run in MLflow: mlflow ui --backend-store-uri {o.tracking_uri}"
    return None
