"""The model both sides build: the federated scaler, then logistic regression, as one Pipeline.

The scaler's statistics travel in every task's config (``scaler-*`` keys), so
a silo scales its rows exactly as the server's saved pipeline will.
"""

from __future__ import annotations

from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from consortium.core.arrays import Arrays
from consortium.core.errors import ConfigError
from consortium.core.records import Config
from consortium.ml import sklearn as sk

CLASSES = (0, 1)
SCALER_MEAN, SCALER_VAR, SCALER_ROWS = "scaler-mean", "scaler-var", "scaler-rows"


def scaler_config(scaler: StandardScaler) -> Config:
    """The scaler's statistics as config values (lists of floats)."""
    return {
        SCALER_MEAN: [float(v) for v in scaler.mean_],
        SCALER_VAR: [float(v) for v in scaler.var_],
        SCALER_ROWS: int(scaler.n_samples_seen_),
    }


def scaler_from_config(config: Config, num_features: int) -> StandardScaler:
    """The scaler the server sent; a clear error if it is missing or the wrong width."""
    try:
        mean, var, rows = config[SCALER_MEAN], config[SCALER_VAR], config[SCALER_ROWS]
    except KeyError as exc:
        raise ConfigError(f"task config lacks {exc.args[0]!r}: run fraud_app.server") from exc
    if not isinstance(mean, list) or not isinstance(var, list) or len(mean) != num_features:
        raise ConfigError(
            f"task config {SCALER_MEAN!r} must list {num_features} floats (one per feature "
            "of this silo's data): do the silos and the server read the same columns?"
        )
    return sk.fitted_scaler(mean, var, int(rows))


def classifier(
    arrays: Arrays | None, num_features: int, *, C: float = 1.0, max_iter: int = 100
) -> LogisticRegression:
    """Logistic regression holding ``arrays`` (zeros when None), warm-started from them."""
    model = LogisticRegression(C=C, max_iter=max_iter, warm_start=True)
    sk.init_params(model, num_features=num_features, classes=CLASSES)
    if arrays is not None:
        sk.set_params(model, arrays)
    return model


def pipeline(scaler: StandardScaler, arrays: Arrays) -> Pipeline:
    """What ``predict_proba(raw_claims)`` is called on: the scaler, then the model."""
    return Pipeline([("scaler", scaler), ("model", classifier(arrays, len(scaler.mean_)))])
