"""The coordinator's side: FedAvg over the providers, final model also saved with joblib."""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
from sklearn.linear_model import LogisticRegression

from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.datasets.fraud import make_provider_fraud
from consortium.ml import sklearn as sk
from consortium.server import ServerApp, ServerConfig
from consortium.strategy import FedAvg


def export_joblib(arrays: Arrays, run_dir: Path) -> list[Path]:
    """A ready-to-use scikit-learn estimator beside model.npz."""
    model = LogisticRegression()
    sk.init_params(model, num_features=arrays["coef"].shape[1], classes=[0, 1])
    sk.set_params(model, arrays)
    path = run_dir / "model.joblib"
    joblib.dump(model, path)
    return [path]


def server_fn(context: Context) -> ServerConfig:
    num_features = make_provider_fraud(num_providers=1, rows_per_provider=10)[0].x.shape[1]
    initial = Arrays({"coef": np.zeros((1, num_features)), "intercept": np.zeros(1)})
    strategy = FedAvg(initial_arrays=initial, fraction_evaluate=1.0)
    return ServerConfig(
        strategy, num_rounds=int(context.run_config["num-rounds"]), exporter=export_joblib
    )


server_app = ServerApp(server_fn)
