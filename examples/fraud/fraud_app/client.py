"""The provider's side: scale with the federated scaler, SMOTE the training rows, fit, report.

SMOTE runs inside the silo, on its training rows only, after scaling (its
nearest neighbours are meaningless on raw dollars next to shares); the
silo's test rows and the server's held-out rows are never resampled.
"""

from __future__ import annotations

import warnings

import numpy as np
from imblearn.over_sampling import SMOTE
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import log_loss, roc_auc_score

from consortium.client import ClientApp, FitResult, NumPyClient
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.message import Message
from consortium.core.records import Config
from consortium.ml import sklearn as sk
from fraud_app.data import Split, load
from fraud_app.model import classifier, pipeline, scaler_from_config

#: the message kind the server sends first: "your column moments, please"
MOMENTS = "feature-moments"


def oversample(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """SMOTE up to balanced classes (needs 2+ positives; otherwise the rows as they are)."""
    positives = int(y.sum())
    if not 1 < positives < len(y):
        return x, y
    smote = SMOTE(k_neighbors=min(5, positives - 1), random_state=seed)
    return smote.fit_resample(x, y)  # type: ignore[no-any-return]


class ProviderClient(NumPyClient):
    def __init__(self, data: Split, run_config: Config, seed: int) -> None:
        self.data = data
        self.seed = seed
        self.smote = bool(run_config["smote"])

    def get_parameters(self, config: Config) -> Arrays:
        return sk.get_params(classifier(None, self.data.x_train.shape[1]))

    def fit(self, arrays: Arrays, config: Config) -> FitResult:
        num_features = self.data.x_train.shape[1]
        scaler = scaler_from_config(config, num_features)
        epochs, c = int(config["local-epochs"]), float(config["C"])
        model = classifier(arrays, num_features, C=c, max_iter=epochs)
        x, y = scaler.transform(self.data.x_train), self.data.y_train
        if self.smote:
            x, y = oversample(x, y, self.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(x, y)
        prob = model.predict_proba(x)[:, 1]
        return FitResult(
            sk.get_params(model),
            len(self.data.y_train),  # weight by real rows, not synthetic ones
            {
                "loss": float(log_loss(y, prob, labels=[0, 1])),
                "local_epochs": epochs,  # what this round's config asked for
            },
        )

    def evaluate(self, arrays: Arrays, config: Config) -> tuple[float, int, dict[str, float]]:
        x, y = self.data.x_test, self.data.y_test  # raw rows, never resampled
        prob = pipeline(scaler_from_config(config, x.shape[1]), arrays).predict_proba(x)[:, 1]
        auc = float(roc_auc_score(y, prob)) if 0 < y.sum() < len(y) else float("nan")
        metrics = {"auc": auc, "accuracy": float(np.mean((prob > 0.5) == y))}
        return float(log_loss(y, prob, labels=[0, 1])), len(y), metrics


def client_fn(context: Context) -> ProviderClient:
    return ProviderClient(
        load(context), context.run_config, seed=int(context.rng(0).integers(2**31))
    )


client_app = ClientApp(client_fn=client_fn)


@client_app.handler(MOMENTS)
def moments(message: Message, context: Context) -> Message:
    """This silo's share of the federated scaler: row count, column means and m2 (no rows)."""
    return message.reply(arrays=sk.column_moments(load(context).x_train))
