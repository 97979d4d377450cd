"""Tests for the scikit-learn adapter in consortium.ml.sklearn."""

from __future__ import annotations

import numpy as np
import pytest

from consortium.core.arrays import Arrays
from consortium.ml import sklearn as adapter

linear_model = pytest.importorskip("sklearn.linear_model")

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

D = 5


def _data(num_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=2.0, size=(num_classes, D))
    y = np.arange(200) % num_classes
    return centers[y] + rng.normal(size=(200, D)), y


def _models() -> list[object]:
    return [
        linear_model.LogisticRegression(warm_start=True, max_iter=200),
        linear_model.SGDClassifier(warm_start=True, max_iter=20, tol=None, random_state=0),
    ]


@pytest.mark.parametrize("num_classes", [2, 3])
@pytest.mark.parametrize("index", [0, 1])
def test_round_trip_reproduces_predictions(num_classes: int, index: int) -> None:
    x, y = _data(num_classes)
    fitted = _models()[index].fit(x, y)
    arrays = adapter.get_params(fitted)
    rows = 1 if num_classes == 2 else num_classes
    assert arrays.signature() == [("coef", "<f8", (rows, D)), ("intercept", "<f8", (rows,))]

    fresh = _models()[index]
    adapter.init_params(fresh, num_features=D, classes=list(range(num_classes)))
    adapter.set_params(fresh, Arrays.from_bytes(arrays.to_bytes()))
    np.testing.assert_array_equal(fresh.predict(x), fitted.predict(x))
    assert adapter.get_params(fresh).equals(arrays)


@pytest.mark.parametrize("num_classes", [2, 4])
@pytest.mark.parametrize("index", [0, 1])
def test_predict_and_send_before_the_first_fit(num_classes: int, index: int) -> None:
    x, _ = _data(num_classes)
    model = _models()[index]
    adapter.init_params(model, num_features=D, classes=[f"c{i}" for i in range(num_classes)])
    arrays = adapter.get_params(model)
    assert not any(a.any() for a in arrays.values())
    assert model.predict(x).shape == (len(x),)
    assert set(model.predict(x)) <= set(model.classes_)
    if isinstance(model, linear_model.LogisticRegression):  # SGD's hinge loss has no proba
        np.testing.assert_allclose(model.predict_proba(x[:3]), 1 / num_classes)


def test_logistic_regression_warm_start_continues_from_set_params() -> None:
    x, y = _data(3, seed=1)
    best = adapter.get_params(linear_model.LogisticRegression(max_iter=1000, tol=1e-10).fit(x, y))

    warm = linear_model.LogisticRegression(warm_start=True, max_iter=1)
    adapter.init_params(warm, num_features=D, classes=[0, 1, 2])
    adapter.set_params(warm, best)
    warm.fit(x, y)
    cold = linear_model.LogisticRegression(max_iter=1).fit(x, y)
    # one iteration from the optimum stays there; one from zero does not get there
    np.testing.assert_allclose(warm.coef_, best["coef"], atol=1e-3)
    assert np.abs(cold.coef_ - best["coef"]).max() > 0.1


def test_sgd_classifier_warm_start_continues_from_set_params() -> None:
    x, y = _data(2, seed=2)
    start = Arrays({"coef": np.full((1, D), 3.0), "intercept": np.array([-2.0])})
    model = linear_model.SGDClassifier(
        warm_start=True, max_iter=1, tol=None, learning_rate="constant", eta0=1e-9
    )
    adapter.init_params(model, num_features=D, classes=[0, 1])
    adapter.set_params(model, start)
    model.fit(x, y)
    # a vanishing step size leaves the model where set_params put it
    np.testing.assert_allclose(model.coef_, start["coef"], atol=1e-6)
    np.testing.assert_allclose(model.intercept_, start["intercept"], atol=1e-6)


def test_get_params_returns_copies_and_set_params_copies_in() -> None:
    x, y = _data(2)
    model = linear_model.LogisticRegression().fit(x, y)
    arrays = adapter.get_params(model)
    arrays["coef"][...] = 42.0
    assert not np.any(model.coef_ == 42.0)
    adapter.set_params(model, arrays)
    arrays["coef"][...] = 0.0
    assert np.all(model.coef_ == 42.0)
    assert model.coef_.flags.writeable


def test_wrong_shapes_and_names_raise_value_error() -> None:
    model = linear_model.LogisticRegression()
    adapter.init_params(model, num_features=D, classes=[0, 1, 2])
    bad = Arrays({"coef": np.zeros((3, D + 1)), "intercept": np.zeros(3)})
    with pytest.raises(ValueError, match=r"'coef'.*\(3, 6\).*\(3, 5\)"):
        adapter.set_params(model, bad)
    bad = Arrays({"coef": np.zeros((3, D)), "intercept": np.zeros(1)})
    with pytest.raises(ValueError, match=r"'intercept'.*\(1,\).*\(3,\)"):
        adapter.set_params(model, bad)
    with pytest.raises(ValueError, match="missing"):
        adapter.set_params(model, Arrays({"coef": np.zeros((3, D))}))


def test_uninitialized_model_and_bad_classes() -> None:
    model = linear_model.LogisticRegression()
    with pytest.raises(ValueError, match="init_params"):
        adapter.get_params(model)
    with pytest.raises(ValueError, match="init_params"):
        adapter.set_params(model, Arrays({"coef": np.zeros((1, D)), "intercept": np.zeros(1)}))
    with pytest.raises(ValueError, match="two classes"):
        adapter.init_params(model, num_features=D, classes=[1])
    with pytest.raises(ValueError, match="distinct"):
        adapter.init_params(model, num_features=D, classes=[0, 1, 1])
    with pytest.raises(ValueError, match="num_features"):
        adapter.init_params(model, num_features=0, classes=[0, 1])
