"""The provider's side: scale, oversample the rare class with SMOTE, fit, report AUC."""

from __future__ import annotations

import warnings

import numpy as np
from imblearn.over_sampling import SMOTE
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.preprocessing import StandardScaler

from consortium.client import ClientApp, FitResult, NumPyClient
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.records import Config
from consortium.ml import sklearn as sk
from fraud_app.data import Split, load


class ProviderClient(NumPyClient):
    def __init__(self, data: Split, run_config: Config, seed: int) -> None:
        # each provider standardises with its own training statistics
        self.scaler = StandardScaler().fit(data.x_train)
        self.data = data
        self.seed = seed
        self.smote = bool(run_config["smote"])
        self.model = LogisticRegression(
            C=float(run_config["C"]), max_iter=int(run_config["local-epochs"]), warm_start=True
        )
        sk.init_params(self.model, num_features=data.x_train.shape[1], classes=[0, 1])

    def get_parameters(self, config: Config) -> Arrays:
        return sk.get_params(self.model)

    def fit(self, arrays: Arrays, config: Config) -> FitResult:
        sk.set_params(self.model, arrays)
        x, y = self.scaler.transform(self.data.x_train), self.data.y_train
        if self.smote and 1 < y.sum() < len(y):
            k = int(min(5, y.sum() - 1))
            x, y = SMOTE(k_neighbors=k, random_state=self.seed).fit_resample(x, y)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.model.fit(x, y)
        prob = self.model.predict_proba(x)[:, 1]
        return FitResult(
            sk.get_params(self.model),
            len(self.data.y_train),  # weight by real rows, not synthetic ones
            {"loss": float(log_loss(y, prob, labels=[0, 1]))},
        )

    def evaluate(self, arrays: Arrays, config: Config) -> tuple[float, int, dict[str, float]]:
        sk.set_params(self.model, arrays)
        x, y = self.scaler.transform(self.data.x_test), self.data.y_test
        prob = self.model.predict_proba(x)[:, 1]
        auc = float(roc_auc_score(y, prob)) if 0 < y.sum() < len(y) else float("nan")
        metrics = {"auc": auc, "accuracy": float(np.mean((prob > 0.5) == y))}
        return float(log_loss(y, prob, labels=[0, 1])), len(y), metrics


def client_fn(context: Context) -> ProviderClient:
    return ProviderClient(
        load(context), context.run_config, seed=int(context.rng(0).integers(2**31))
    )


client_app = ClientApp(client_fn=client_fn)
