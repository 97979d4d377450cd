"""Adapter between scikit-learn linear classifiers and Arrays.

Works with estimators that keep their model in ``coef_`` / ``intercept_``
(``LogisticRegression``, ``SGDClassifier``, ``LinearSVC``, ...). Parameters
travel as ``Arrays({"coef": (k, d), "intercept": (k,)})`` with ``k = 1`` for
binary problems and ``k = n_classes`` otherwise.

A fresh estimator has no ``coef_`` until its first ``fit``; :func:`init_params`
gives it zeros so a node can evaluate or send it before training, and so a
``warm_start=True`` estimator continues from parameters set with
:func:`set_params`. Nothing here imports scikit-learn: the estimator object
the caller passes is all it needs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from consortium.core.arrays import Arrays

__all__ = [
    "column_moments",
    "fitted_scaler",
    "get_params",
    "init_params",
    "merge_moments",
    "set_params",
]

_NAMES = ("coef", "intercept")


def _require_initialized(model: Any) -> None:
    try:
        params = (model.coef_, model.intercept_)
    except AttributeError:  # scikit-learn sets fitted attributes only once fitted
        params = (None, None)
    if params[0] is None or params[1] is None:
        raise ValueError(
            f"{type(model).__name__} has no coef_/intercept_ yet: call "
            "consortium.ml.sklearn.init_params(model, num_features=..., classes=...) or fit it"
        )


def get_params(model: Any) -> Arrays:
    """A copy of the estimator's ``coef_`` and ``intercept_`` as Arrays."""
    _require_initialized(model)
    return Arrays(
        {
            "coef": np.array(model.coef_, copy=True),
            "intercept": np.array(np.atleast_1d(model.intercept_), copy=True),
        }
    )


def set_params(model: Any, arrays: Mapping[str, Any]) -> None:
    """Copy ``arrays`` into the estimator's ``coef_`` and ``intercept_``.

    The estimator must already have parameters (from :func:`init_params` or a
    fit) so the shapes and classes are known; a shape mismatch raises
    ``ValueError`` naming the array and both shapes.
    """
    _require_initialized(model)
    missing = [name for name in _NAMES if name not in arrays]
    extra = [name for name in arrays if name not in _NAMES]
    if missing or extra:
        raise ValueError(
            f"scikit-learn params need exactly {list(_NAMES)}; "
            f"missing {missing}, unexpected {extra}"
        )
    current = {"coef": np.asarray(model.coef_), "intercept": np.atleast_1d(model.intercept_)}
    new = {}
    for name in _NAMES:
        value = np.asarray(arrays[name])
        expected = current[name].shape
        if value.shape != expected:
            raise ValueError(
                f"array {name!r} has shape {value.shape}, but {type(model).__name__} "
                f"expects {expected}"
            )
        new[name] = np.array(value, dtype=current[name].dtype, copy=True)
    model.coef_ = new["coef"]
    model.intercept_ = new["intercept"]


def init_params(model: Any, *, num_features: int, classes: Sequence[Any]) -> None:
    """Give a fresh estimator zero ``coef_``/``intercept_`` plus ``classes_``.

    ``classes`` are every label the federation may see (the estimator stores
    them sorted, as ``fit`` would). After this the estimator can ``predict``,
    and a ``warm_start=True`` one continues from whatever :func:`set_params`
    loads.
    """
    if isinstance(num_features, bool) or int(num_features) != num_features or num_features < 1:
        raise ValueError(f"num_features must be a positive integer, got {num_features!r}")
    labels = np.unique(np.asarray(classes))
    if labels.size != len(classes):
        raise ValueError(f"classes must be distinct, got {list(classes)!r}")
    if labels.size < 2:
        raise ValueError(f"a classifier needs at least two classes, got {list(classes)!r}")
    rows = 1 if labels.size == 2 else int(labels.size)
    model.classes_ = labels
    model.coef_ = np.zeros((rows, int(num_features)))
    model.intercept_ = np.zeros(rows)
    model.n_features_in_ = int(num_features)


_MOMENTS = ("count", "mean", "m2")


def column_moments(x: Any) -> Arrays:
    """One silo's share of a federated scaler: ``count`` (1,), ``mean`` (d,), ``m2`` (d,).

    ``m2`` is the sum of squared deviations from the silo's own mean, so the
    pooled variance needs no raw sums of squares.
    """
    data = np.asarray(x, dtype=np.float64)
    if data.ndim != 2 or data.shape[0] < 1 or data.shape[1] < 1:
        raise ValueError(f"x must be a non-empty 2-D array (rows x features), got {data.shape}")
    if not np.isfinite(data).all():
        raise ValueError("x holds NaN or infinite values: clean the data before scaling")
    mean = data.mean(axis=0)
    return Arrays(
        {
            "count": np.array([data.shape[0]], dtype=np.int64),
            "mean": mean,
            "m2": ((data - mean) ** 2).sum(axis=0),
        }
    )


def merge_moments(parts: Iterable[Mapping[str, Any]]) -> tuple[int, np.ndarray, np.ndarray]:
    """Pool silos' :func:`column_moments` into ``(rows, mean, variance)`` of all their rows.

    The variance is the population one (``ddof=0``), as ``StandardScaler`` uses.
    """
    total = 0
    mean: np.ndarray | None = None
    m2: np.ndarray | None = None
    for index, part in enumerate(parts):
        missing = [name for name in _MOMENTS if name not in part]
        if missing:
            raise ValueError(f"moments part {index} lacks {missing} (has {sorted(part)})")
        count = int(np.asarray(part["count"]).reshape(-1)[0])
        p_mean = np.asarray(part["mean"], dtype=np.float64)
        p_m2 = np.asarray(part["m2"], dtype=np.float64)
        if count < 1 or p_mean.ndim != 1 or p_m2.shape != p_mean.shape:
            raise ValueError(
                f"moments part {index}: count must be >= 1 and mean/m2 equal 1-D shapes, "
                f"got count={count}, mean {p_mean.shape}, m2 {p_m2.shape}"
            )
        if mean is None or m2 is None:
            total, mean, m2 = count, p_mean.copy(), p_m2.copy()
            continue
        if p_mean.shape != mean.shape:
            raise ValueError(
                f"moments part {index} has {p_mean.shape[0]} features, "
                f"the first had {mean.shape[0]}"
            )
        pooled = total + count
        delta = p_mean - mean
        mean = mean + delta * (count / pooled)
        m2 = m2 + p_m2 + delta**2 * (total * count / pooled)
        total = pooled
    if mean is None or m2 is None:
        raise ValueError("no moments to merge: every silo must send its column_moments")
    return total, mean, m2 / total


def fitted_scaler(mean: Any, var: Any, num_rows: int) -> Any:
    """A fitted ``sklearn.preprocessing.StandardScaler`` with the given statistics.

    Constant columns (variance 0) get scale 1, as ``StandardScaler.fit`` gives them.
    """
    from sklearn.preprocessing import StandardScaler

    if isinstance(num_rows, bool) or int(num_rows) != num_rows or num_rows < 1:
        raise ValueError(f"num_rows must be a positive integer, got {num_rows!r}")
    mean_ = np.array(mean, dtype=np.float64)
    var_ = np.array(var, dtype=np.float64)
    if mean_.ndim != 1 or var_.shape != mean_.shape or mean_.size < 1:
        raise ValueError(f"mean and var must be equal 1-D shapes, got {mean_.shape}, {var_.shape}")
    if (var_ < 0).any() or not (np.isfinite(mean_).all() and np.isfinite(var_).all()):
        raise ValueError("var must be finite and >= 0, mean finite")
    # the bound StandardScaler.fit uses to call a column constant (rounding, not data)
    eps = np.finfo(np.float64).eps
    constant = var_ <= num_rows * eps * var_ + (num_rows * mean_ * eps) ** 2
    scale = np.where(constant, 1.0, np.sqrt(var_))
    scaler = StandardScaler()
    scaler.mean_ = mean_
    scaler.var_ = var_
    scaler.scale_ = scale
    scaler.n_samples_seen_ = int(num_rows)
    scaler.n_features_in_ = int(mean_.size)
    return scaler
