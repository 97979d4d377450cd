"""Tests for the synthetic provider-fraud generator."""

from __future__ import annotations

import numpy as np
import pytest

from consortium.core.errors import ConfigError
from consortium.datasets import ProviderData, make_provider_fraud


def pooled(providers: list[ProviderData]) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([p.x for p in providers])
    y = np.concatenate([p.y for p in providers])
    return x, y


def test_shapes_names_and_dtypes() -> None:
    providers = make_provider_fraud(num_providers=5, rows_per_provider=120, num_features=15)
    assert [p.name for p in providers] == [f"provider-0{i}" for i in range(5)]
    for p in providers:
        assert p.x.shape == (120, 15) and p.x.dtype == np.float64
        assert p.y.shape == (120,) and p.y.dtype == np.int64
        assert set(np.unique(p.y)) <= {0, 1}
        assert len(p.feature_names) == 15 and len(set(p.feature_names)) == 15
        assert p.num_rows == 120
        assert np.isfinite(p.x).all()
    names = providers[0].feature_names
    assert names[:3] == ("claims_count", "beneficiaries_count", "total_reimbursed")
    assert names[-1] == "extra_amount_14"


def test_rows_per_provider_sequence_and_name_width() -> None:
    providers = make_provider_fraud(num_providers=3, rows_per_provider=[10, 50, 200])
    assert [p.num_rows for p in providers] == [10, 50, 200]
    many = make_provider_fraud(num_providers=120, rows_per_provider=2, num_features=3)
    assert many[0].name == "provider-000" and many[-1].name == "provider-119"


def test_features_look_like_claims_aggregates() -> None:
    providers = make_provider_fraud(seed=3)
    x, _ = pooled(providers)
    names = providers[0].feature_names
    col = {n: x[:, i] for i, n in enumerate(names)}
    assert (col["claims_count"] >= 0).all()
    np.testing.assert_array_equal(col["claims_count"], np.round(col["claims_count"]))
    assert (col["total_reimbursed"] > 0).all()
    assert ((col["inpatient_share"] > 0) & (col["inpatient_share"] < 1)).all()
    # Right-skewed amounts on scales far apart: scaling matters.
    amount = col["total_reimbursed"]
    assert amount.mean() > np.median(amount)
    assert np.median(amount) > 1000 * np.median(col["inpatient_share"])


def test_deterministic_in_seed() -> None:
    a = make_provider_fraud(seed=11)
    b = make_provider_fraud(seed=11)
    c = make_provider_fraud(seed=12)
    for pa, pb in zip(a, b, strict=True):
        np.testing.assert_array_equal(pa.x, pb.x)
        np.testing.assert_array_equal(pa.y, pb.y)
    assert not np.array_equal(a[0].x, c[0].x)
    g1 = make_provider_fraud(seed=np.random.default_rng(5))
    g2 = make_provider_fraud(seed=np.random.default_rng(5))
    np.testing.assert_array_equal(g1[2].x, g2[2].x)


@pytest.mark.parametrize("rate", [0.02, 0.1, 0.3])
def test_overall_positive_rate_matches(rate: float) -> None:
    sizes = [300, 100, 500, 50, 400, 250]
    providers = make_provider_fraud(6, sizes, positive_rate=rate, seed=1)
    _, y = pooled(providers)
    assert abs(y.mean() - rate) <= 0.005
    assert all(0 <= p.positive_rate <= 1 for p in providers)


def test_provider_positive_rates_vary_with_drift() -> None:
    rates = [p.positive_rate for p in make_provider_fraud(drift=1.0, seed=2)]
    assert max(rates) - min(rates) > 0.05


def test_drift_shifts_provider_feature_means() -> None:
    def spread_of_means(drift: float) -> float:
        providers = make_provider_fraud(
            num_providers=8, rows_per_provider=1000, drift=drift, seed=4
        )
        logs = [np.log1p(p.x[:, :5]).mean(axis=0) for p in providers]  # counts and amounts
        return float(np.std(logs, axis=0).mean())

    none, some, lots = spread_of_means(0.0), spread_of_means(0.5), spread_of_means(1.0)
    assert none < 0.1
    assert some > 3 * none
    assert lots > some


def test_pooled_logistic_regression_learns_the_task() -> None:
    pytest.importorskip("sklearn")
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = pooled(make_provider_fraud(num_providers=8, rows_per_provider=500, seed=0))
    order = np.random.default_rng(0).permutation(y.size)
    train, test = order[:3000], order[3000:]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    model.fit(x[train], y[train])
    auc = roc_auc_score(y[test], model.predict_proba(x[test])[:, 1])
    assert auc > 0.75


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_providers": 0},
        {"num_features": 0},
        {"rows_per_provider": 0},
        {"num_providers": 2, "rows_per_provider": [10, 10, 10]},
        {"positive_rate": 0.0},
        {"positive_rate": 1.0},
        {"drift": -0.1},
        {"drift": float("nan")},
    ],
)
def test_rejects_bad_arguments(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        make_provider_fraud(**kwargs)  # type: ignore[arg-type]
