"""Tests for consortium.ml.metrics, checked against scikit-learn."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

import consortium.ml
from consortium.ml import metrics

skm = pytest.importorskip("sklearn.metrics")


def _binary_cases() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(7)
    cases = []
    for n in (2, 5, 17, 200):
        y = rng.integers(0, 2, size=n)
        y[0], y[1] = 0, 1  # both classes present
        cases.append((y, rng.random(n)))
        cases.append((y, np.round(rng.random(n), 1)))  # many ties
        cases.append((y, np.full(n, 0.3)))  # everything tied
    return cases


@pytest.mark.parametrize(("y", "scores"), _binary_cases())
def test_roc_auc_matches_sklearn(y: np.ndarray, scores: np.ndarray) -> None:
    assert metrics.roc_auc(y, scores) == pytest.approx(skm.roc_auc_score(y, scores), abs=1e-12)


@pytest.mark.parametrize(("y", "scores"), _binary_cases())
def test_accuracy_and_log_loss_match_sklearn(y: np.ndarray, scores: np.ndarray) -> None:
    prob = 0.01 + 0.98 * scores  # away from 0/1 so no clipping convention matters
    assert metrics.accuracy(y, prob) == pytest.approx(skm.accuracy_score(y, prob > 0.5))
    assert metrics.accuracy(y, prob, threshold=0.2) == pytest.approx(
        skm.accuracy_score(y, prob > 0.2)
    )
    assert metrics.log_loss(y, prob) == pytest.approx(skm.log_loss(y, prob, labels=[0, 1]))


def test_binary_metrics_accept_column_vectors_and_bools() -> None:
    y = np.array([0, 1, 1, 0])
    p = np.array([0.2, 0.9, 0.4, 0.1])
    assert metrics.accuracy(y[:, None].astype(bool), p[:, None]) == 0.75
    assert metrics.roc_auc(y.astype(float), p) == 1.0


def test_roc_auc_is_nan_with_one_class() -> None:
    assert math.isnan(metrics.roc_auc([1, 1, 1], [0.1, 0.5, 0.9]))
    assert math.isnan(metrics.roc_auc([0, 0], [0.1, 0.5]))


def test_log_loss_clips_certain_mistakes() -> None:
    loss = metrics.log_loss([1, 0], [0.0, 1.0], eps=1e-12)
    assert loss == pytest.approx(-math.log(1e-12))


def test_empty_inputs_give_nan() -> None:
    assert math.isnan(metrics.accuracy([], []))
    assert math.isnan(metrics.log_loss([], []))
    assert math.isnan(metrics.multiclass_accuracy(np.array([], dtype=int), np.zeros((0, 3))))


def test_binary_metrics_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="shapes"):
        metrics.accuracy([0, 1], [0.5])
    with pytest.raises(ValueError, match="binary"):
        metrics.roc_auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        metrics.roc_auc([0, 1], [0.1, float("nan")])


def test_multiclass_accuracy_matches_sklearn() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 5, size=300)
    logits = rng.normal(size=(300, 5))
    expected = skm.accuracy_score(y, logits.argmax(axis=1))
    assert metrics.multiclass_accuracy(y, logits) == pytest.approx(expected)
    with pytest.raises(ValueError, match="shapes"):
        metrics.multiclass_accuracy(y, logits[:10])


def test_package_exports_and_stays_numpy_only() -> None:
    assert sorted(consortium.ml.__all__) == sorted(
        [
            "TrainResult",
            "accuracy",
            "log_loss",
            "logistic",
            "metrics",
            "mlp",
            "multiclass_accuracy",
            "roc_auc",
        ]
    )
    code = (
        "import sys, consortium.ml; "
        "heavy = [m for m in ('sklearn', 'torch', 'scipy') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
