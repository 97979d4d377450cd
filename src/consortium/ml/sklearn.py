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

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from consortium.core.arrays import Arrays

__all__ = ["get_params", "init_params", "set_params"]

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
