"""The federated StandardScaler helpers of consortium.ml.sklearn: exact against pooled data."""

from __future__ import annotations

import numpy as np
import pytest

from consortium.ml import sklearn as adapter

preprocessing = pytest.importorskip("sklearn.preprocessing")


def _silos() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    # amounts far from zero with a small spread: raw sums of squares would cancel
    return [
        rng.normal(1e6 + 10 * i, 1.0 + i, size=(rows, 4)) for i, rows in enumerate((5, 1, 40, 17))
    ]


def test_merged_moments_equal_the_pooled_statistics() -> None:
    silos = _silos()
    rows, mean, var = adapter.merge_moments(adapter.column_moments(x) for x in silos)
    pooled = np.concatenate(silos)
    assert rows == pooled.shape[0]
    np.testing.assert_allclose(mean, pooled.mean(axis=0), rtol=1e-15)
    np.testing.assert_allclose(var, pooled.var(axis=0), rtol=1e-9)


def test_fitted_scaler_transforms_like_a_scaler_fitted_on_pooled_rows() -> None:
    silos = _silos()
    pooled = np.concatenate(silos)
    pooled[:, 2] = 7.0  # a constant column gets scale 1, as in StandardScaler.fit
    rows, mean, var = adapter.merge_moments(
        adapter.column_moments(pooled[a:b]) for a, b in ((0, 5), (5, 30), (30, 63))
    )
    ours = adapter.fitted_scaler(mean, var, rows)
    reference = preprocessing.StandardScaler().fit(pooled)
    assert ours.scale_[2] == 1.0 == reference.scale_[2]
    np.testing.assert_allclose(ours.transform(pooled), reference.transform(pooled), atol=1e-7)
    assert ours.n_features_in_ == 4 and ours.n_samples_seen_ == 63


def test_bad_moments_are_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="no moments"):
        adapter.merge_moments([])
    good = adapter.column_moments(np.ones((3, 2)))
    with pytest.raises(ValueError, match="lacks"):
        adapter.merge_moments([{"count": good["count"], "mean": good["mean"]}])
    with pytest.raises(ValueError, match="features"):
        adapter.merge_moments([good, adapter.column_moments(np.ones((3, 5)))])
    with pytest.raises(ValueError, match="NaN"):
        adapter.column_moments(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="num_rows"):
        adapter.fitted_scaler([0.0], [1.0], 0)
