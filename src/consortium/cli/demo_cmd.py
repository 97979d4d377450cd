"""``consortium demo``: four hospitals learn heart disease together, compared with going alone."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click
import numpy as np
from rich.table import Table

from consortium.cli.observers import build_observers, configure_logging
from consortium.cli.report import make_console, print_history, tracking_hint
from consortium.cli.simulate_cmd import default_run_dir
from consortium.core.records import Config
from consortium.datasets import heart_disease as hd
from consortium.examples import heart_disease as app
from consortium.server.host import RunResult
from consortium.simulation.engine import run_simulation
from consortium.tracking.base import RunObserver

SEEDS = (42, 43, 44, 45, 46)


def federate(
    run_config: Config,
    seed: int,
    *,
    run_dir: Path | None = None,
    observers: Sequence[RunObserver] = (),
) -> RunResult:
    """One heart-disease federation in simulation: node i is hospital i."""
    return run_simulation(
        app.server_app,
        app.client_app,
        node_ids=list(hd.CENTERS),
        node_config=app.node_config,
        run_config=run_config,
        seed=seed,
        run_dir=run_dir,
        observers=observers,
    )


def federated_scores(run_config: Config, seed: int) -> app.Scores:
    """Per-center test scores of the federated model."""
    centers = hd.load_all(split_seed=int(str(run_config["split-seed"])))
    return app.score(federate(run_config, seed).arrays, centers)


@click.command()
@click.option("--run-dir", type=click.Path(path_type=Path), help="Where to write the run.")
@click.option("--tracking/--no-tracking", default=True, show_default=True, help="MLflow tracking.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def demo(run_dir: Path | None, tracking: bool, progress: bool) -> None:
    """Four hospitals (UCI Heart Disease) train one model without sharing a row.

    Runs the federation (FedAvg, logistic regression, FLamby's protocol), then
    compares the federated model with each hospital training alone and with
    pooling all data in one place, as mean per-hospital test accuracy over
    seeds 42-46.
    """
    console = make_console()
    run_dir = run_dir or default_run_dir("heart-disease-demo")
    configure_logging(run_dir)
    centers = hd.load_all()
    console.print(
        "[bold]Consortium demo[/]: 4 hospitals, "
        + ", ".join(f"{c.title} ({c.num_train} train rows)" for c in centers)
    )
    observers = build_observers(run_dir, tracking=tracking, progress=progress, plot=tracking)
    tuned = app.TUNED_RUN_CONFIG
    main = federate(tuned, SEEDS[0], run_dir=run_dir, observers=observers)
    print_history(console, main.history, title=f"Federated rounds (seed {SEEDS[0]})")

    rows: list[tuple[str, list[app.Scores]]] = []
    for center in centers:
        rows.append(
            (
                f"Local {center.index} ({center.title})",
                [app.score(app.train_local(center, seed=s), centers) for s in SEEDS],
            )
        )
    rows.append(
        (
            "Pooled (all data in one place)",
            [app.score(app.train_pooled(seed=s), centers) for s in SEEDS],
        )
    )
    rows.append(
        ("FedAvg, FLamby setting", [federated_scores(app.FLAMBY_RUN_CONFIG, s) for s in SEEDS])
    )
    rows.append(("FedAvg, Consortium default", [federated_scores(tuned, s) for s in SEEDS]))

    table = Table(title="Mean per-hospital test accuracy, seeds 42-46")
    table.add_column("method")
    table.add_column("mean acc", justify="right")
    table.add_column("± sd", justify="right")
    for c in centers:
        table.add_column(c.name, justify="right")
    table.add_column("mean AUC", justify="right")
    for name, scores in rows:
        means = [s.mean_accuracy for s in scores]
        per_center = np.mean([s.accuracy for s in scores], axis=0)
        table.add_row(
            name,
            f"{np.mean(means):.3f}",
            f"{np.std(means):.3f}",
            *[f"{a:.3f}" for a in per_center],
            f"{np.mean([s.mean_auc for s in scores]):.3f}",
        )
    console.print(table)
    files = ", ".join(sorted(p.name for p in run_dir.iterdir() if p.is_file()))
    console.print(f"run directory: {run_dir} ({files})")
    hint = tracking_hint(observers)
    if hint:
        console.print(hint)
