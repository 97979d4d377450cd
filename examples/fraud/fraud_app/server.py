"""The coordinator's side: a federated scaler first, then FedAvg with a per-round
training config and a central evaluation on held-out providers each round.

``main`` is a short program over the grid (docs/server-apps.md):

1. ask every node for its column moments (row count, means, sums of squared
   deviations; never rows) and pool them into one ``StandardScaler``;
2. run the built-in round loop (``ServerConfig``) with FedAvg, whose
   ``train_config`` callback sends each round's ``local-epochs`` and ``C``
   (plus the scaler) and whose ``central_evaluate`` scores the held-out
   providers with exactly the pipeline that is saved;
3. save ``model.joblib``: a ``Pipeline(scaler, LogisticRegression)`` to call
   ``predict_proba`` on raw claims aggregates.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import joblib
import numpy as np
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.preprocessing import StandardScaler

from consortium.core.arrays import Arrays
from consortium.core.errors import ConfigError, RoundFailed
from consortium.core.grid import Grid
from consortium.core.message import Content, Message
from consortium.core.records import Config, Metrics
from consortium.ml import sklearn as sk
from consortium.server import ServerApp, ServerConfig, ServerContext
from consortium.server.workflow import run_config, task_message
from consortium.strategy import FedAvg
from fraud_app.client import MOMENTS
from fraud_app.data import Table, holdout
from fraud_app.model import pipeline, scaler_config

#: seconds to wait for the nodes' moments (and for min-nodes to come online)
WAIT = 300.0


def federated_scaler(grid: Grid, context: ServerContext, nodes: list[str]) -> StandardScaler:
    """One scaler for all: the pooled mean and variance of every silo's training rows."""
    tasks = [
        task_message(context, node, 0, MOMENTS, Content.of(Arrays(), {}), WAIT) for node in nodes
    ]
    return sk.fitted_scaler(*_moments(grid.send_and_receive(tasks, timeout=WAIT), len(nodes)))


def _moments(replies: Iterator[Message], expected: int) -> tuple[np.ndarray, np.ndarray, int]:
    parts = []
    for reply in replies:
        if reply.error is not None or reply.content is None or reply.content.model is None:
            reason = reply.error.reason if reply.error is not None else "no arrays"
            raise RoundFailed(f"node {reply.metadata.src} sent no feature moments: {reason}")
        parts.append(reply.content.model)
    if len(parts) != expected:
        raise RoundFailed(f"{expected - len(parts)} of {expected} nodes sent no feature moments")
    rows, mean, var = sk.merge_moments(parts)
    return mean, var, rows


def train_config(run: Config, scaler: StandardScaler, round: int) -> Config:
    """Round ``round``'s training config: more local epochs as the model settles."""
    epochs = int(run["local-epochs"]) + int(run["local-epochs-step"]) * (round - 1)
    return {"local-epochs": epochs, "C": float(run["C"]), **scaler_config(scaler)}


def central_evaluate(
    scaler: StandardScaler, data: Table, round: int, arrays: Arrays
) -> Metrics | None:
    """AUC and log loss of the saved pipeline on raw held-out providers."""
    if len(data.y) == 0 or not 0 < data.y.sum() < len(data.y):
        return None
    prob = pipeline(scaler, arrays).predict_proba(data.x)[:, 1]
    return {
        "auc": float(roc_auc_score(data.y, prob)),
        "loss": float(log_loss(data.y, prob, labels=[0, 1])),
    }


def export_pipeline(scaler: StandardScaler, arrays: Arrays, run_dir: Path) -> list[Path]:
    """``model.joblib``: the federated scaler and the final logistic regression, one Pipeline."""
    path = run_dir / "model.joblib"
    joblib.dump(pipeline(scaler, arrays), path)
    return [path]


app = ServerApp()


@app.main()
def main(grid: Grid, context: ServerContext) -> None:
    run = context.run_config
    nodes = grid.wait_for_nodes(int(run["min-nodes"]), timeout=WAIT)
    if len(nodes) < int(run["min-nodes"]):
        raise RoundFailed(f"only {len(nodes)} of min-nodes={run['min-nodes']} nodes are online")
    scaler = federated_scaler(grid, context, nodes)
    held_out = holdout(run, len(nodes))
    if held_out.x.shape[1] != len(scaler.mean_):
        raise ConfigError(
            f"the held-out data has {held_out.x.shape[1]} features, the silos "
            f"{len(scaler.mean_)}: data-csv and the silos' data-file must share columns"
        )
    num_features = len(scaler.mean_)
    strategy = FedAvg(
        initial_arrays=Arrays({"coef": np.zeros((1, num_features)), "intercept": np.zeros(1)}),
        fraction_evaluate=1.0,
        min_available_nodes=int(run["min-nodes"]),
        train_config=functools.partial(train_config, run, scaler),
        evaluate_config=scaler_config(scaler),
        central_evaluate=functools.partial(central_evaluate, scaler, held_out),
    )
    config = ServerConfig(
        strategy,
        num_rounds=int(run["num-rounds"]),
        exporter=functools.partial(export_pipeline, scaler),
    )
    run_config(config, grid, context)


server_app = app
