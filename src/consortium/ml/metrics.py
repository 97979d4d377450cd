"""Classification metrics in plain numpy, for nodes that do not install scikit-learn.

Binary metrics take labels in {0, 1} (ints, floats or bools) and a score or
probability per example; arrays of shape ``(n,)`` or ``(n, 1)`` are accepted.
Empty inputs give ``nan``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["accuracy", "log_loss", "multiclass_accuracy", "roc_auc"]


def _binary_pair(
    y_true: ArrayLike, values: ArrayLike, what: str
) -> tuple[NDArray[Any], NDArray[Any]]:
    y = np.asarray(y_true)
    v = np.asarray(values, dtype=np.float64)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if v.ndim == 2 and v.shape[1] == 1:
        v = v[:, 0]
    if y.ndim != 1 or v.ndim != 1 or y.shape[0] != v.shape[0]:
        raise ValueError(
            f"y_true and {what} must be 1-D arrays of one length, got shapes "
            f"{np.shape(y_true)} and {np.shape(values)}"
        )
    if y.dtype != np.bool_ and not np.all((y == 0) | (y == 1)):
        raise ValueError("y_true must hold binary labels 0 and 1")
    return y.astype(np.bool_), v


def accuracy(y_true: ArrayLike, prob: ArrayLike, threshold: float = 0.5) -> float:
    """Fraction of examples whose predicted class (``prob > threshold``) is right."""
    y, p = _binary_pair(y_true, prob, "prob")
    if y.size == 0:
        return float("nan")
    return float(np.mean((p > threshold) == y))


def roc_auc(y_true: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve (Mann–Whitney U with average ranks for ties).

    ``nan`` when only one class is present.
    """
    y, s = _binary_pair(y_true, scores, "scores")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    n_pos = int(np.count_nonzero(y))
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    # 1-based average rank of each distinct value: ranks before it plus the mean of its block
    ends = np.cumsum(counts)
    avg_rank = ends - (counts - 1) / 2.0
    rank_sum = float(avg_rank[inverse.reshape(-1)][y].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def log_loss(y_true: ArrayLike, prob: ArrayLike, eps: float = 1e-12) -> float:
    """Mean binary cross-entropy, with probabilities clipped to ``[eps, 1 - eps]``."""
    y, p = _binary_pair(y_true, prob, "prob")
    if y.size == 0:
        return float("nan")
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(np.where(y, np.log(p), np.log1p(-p))))


def multiclass_accuracy(y_true: ArrayLike, logits_or_probs: ArrayLike) -> float:
    """Fraction of rows whose arg-max column equals the integer label."""
    y = np.asarray(y_true)
    scores = np.asarray(logits_or_probs)
    if y.ndim != 1 or scores.ndim != 2 or scores.shape[0] != y.shape[0]:
        raise ValueError(
            "y_true must be 1-D and logits_or_probs 2-D with one row per label, got shapes "
            f"{y.shape} and {scores.shape}"
        )
    if y.size == 0:
        return float("nan")
    return float(np.mean(np.argmax(scores, axis=1) == y))
