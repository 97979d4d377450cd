"""Tests for the numpy multilayer perceptron in consortium.ml.mlp."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from consortium.core.arrays import Arrays
from consortium.ml import mlp


def _mean_ce(params: Arrays, x: np.ndarray, y: np.ndarray) -> float:
    """Independent forward pass: ReLU hidden layers, softmax cross-entropy."""
    h = x
    layers = len(params) // 2
    for i in range(layers):
        h = h @ params[f"dense{i}.weight"].T + params[f"dense{i}.bias"]
        if i < layers - 1:
            h = np.maximum(h, 0.0)
    lse = np.log(np.exp(h - h.max(axis=1, keepdims=True)).sum(axis=1)) + h.max(axis=1)
    return float(np.mean(lse - h[np.arange(len(y)), y]))


def test_init_params_names_shapes_and_scale() -> None:
    params = mlp.init_params([64, 32, 10], np.random.default_rng(0))
    assert params.signature() == [
        ("dense0.weight", "<f8", (32, 64)),
        ("dense0.bias", "<f8", (32,)),
        ("dense1.weight", "<f8", (10, 32)),
        ("dense1.bias", "<f8", (10,)),
    ]
    assert np.abs(params["dense0.weight"]).max() <= math.sqrt(6 / 64)
    assert np.abs(params["dense1.bias"]).max() <= 1 / math.sqrt(32)
    with pytest.raises(ValueError):
        mlp.init_params([64], np.random.default_rng(0))


@pytest.mark.parametrize("sizes", [[5, 3], [5, 4, 3], [5, 6, 4, 3]])
def test_gradient_matches_finite_differences(sizes: list[int]) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(12, sizes[0]))
    y = rng.integers(0, sizes[-1], size=12)
    params = mlp.init_params(sizes, rng)
    # one full-batch SGD step with lr=1 moves the parameters by minus the gradient
    result = mlp.train(params, x, y, rng=rng, lr=1.0, batch_size=12, steps=1)
    assert result.loss == pytest.approx(_mean_ce(params, x, y), rel=1e-12)
    h = 1e-6
    for name in params:
        grad = params[name] - result.params[name]
        numeric = np.empty_like(grad)
        for idx in np.ndindex(grad.shape):
            plus, minus = params.copy(), params.copy()
            plus[name][idx] += h
            minus[name][idx] -= h
            numeric[idx] = (_mean_ce(plus, x, y) - _mean_ce(minus, x, y)) / (2 * h)
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-8, err_msg=name)


def test_learns_digits() -> None:
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    x, y = digits.data / 16.0, digits.target
    order = np.random.default_rng(0).permutation(len(x))
    train_idx, test_idx = order[:1400], order[1400:]
    rng = np.random.default_rng(1)
    params = mlp.init_params([64, 64, 10], rng)
    result = mlp.train(
        params,
        x[train_idx],
        y[train_idx],
        rng=rng,
        lr=0.01,
        batch_size=32,
        epochs=5,
        optimizer="adam",
    )
    assert result.steps == 5 * math.ceil(1400 / 32)
    scores = mlp.evaluate(result.params, x[test_idx], y[test_idx])
    assert scores["accuracy"] > 0.9
    assert scores["num_examples"] == len(test_idx)
    assert scores["loss"] < mlp.evaluate(params, x[test_idx], y[test_idx])["loss"]


def test_sgd_with_prox_and_weight_decay_learns() -> None:
    rng = np.random.default_rng(2)
    centers = rng.normal(scale=3.0, size=(3, 4))
    y = rng.integers(0, 3, size=300)
    x = centers[y] + rng.normal(size=(300, 4))
    params = mlp.init_params([4, 8, 3], rng)
    result = mlp.train(
        params,
        x,
        y,
        rng=rng,
        lr=0.1,
        batch_size=16,
        epochs=10,
        weight_decay=1e-4,
        prox_mu=0.01,
        momentum=0.5,
    )
    assert mlp.evaluate(result.params, x, y)["accuracy"] > 0.9


def test_deterministic_and_input_unchanged() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(50, 5))
    y = rng.integers(0, 4, size=50)
    params = mlp.init_params([5, 7, 4], rng)
    wire = Arrays.from_bytes(params.to_bytes())
    a = mlp.train(wire, x, y, rng=np.random.default_rng(9), lr=0.1, batch_size=8, steps=15)
    b = mlp.train(wire, x, y, rng=np.random.default_rng(9), lr=0.1, batch_size=8, steps=15)
    assert a.params.equals(b.params)
    assert a.loss == b.loss
    assert a.steps == 15
    assert a.num_examples == 50
    assert wire.equals(params)
    assert list(a.params) == list(params)
    assert not a.params.equals(params)


def test_logits_shape_and_bad_inputs() -> None:
    params = mlp.init_params([5, 7, 4], np.random.default_rng(4))
    x = np.zeros((3, 5))
    assert mlp.predict_logits(params, x).shape == (3, 4)
    with pytest.raises(ValueError, match=r"'dense0.weight'.*\(7, 5\)"):
        mlp.predict_logits(params, np.zeros((3, 6)))
    with pytest.raises(ValueError, match="class labels"):
        mlp.train(
            params, x, [0, 1, 4], rng=np.random.default_rng(0), lr=0.1, batch_size=2, epochs=1
        )
    with pytest.raises(ValueError, match="named"):
        mlp.predict_logits(Arrays({"a": np.zeros((4, 5)), "b": np.zeros(4)}), x)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"momentum": 0.9, "weight_decay": 1e-3, "prox_mu": 0.1},
        {"optimizer": "adam", "lr": 0.01},
    ],
)
def test_float32_params_train_in_float32_and_track_float64(options: dict[str, Any]) -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(200, 6))
    y = rng.integers(0, 3, size=200)
    params64 = mlp.init_params([6, 16, 16, 3], rng)
    params32 = Arrays({k: v.astype(np.float32) for k, v in params64.items()})
    correction = Arrays({k: np.full(v.shape, 1e-3) for k, v in params64.items()})
    kwargs: dict[str, Any] = {"lr": 0.1, "batch_size": 16, "epochs": 3, **options}
    a = mlp.train(params32, x, y, rng=np.random.default_rng(9), correction=correction, **kwargs)
    # the same arithmetic in float64, from the same (float32-representable) start
    wide = Arrays({k: v.astype(np.float64) for k, v in params32.items()})
    b = mlp.train(wide, x, y, rng=np.random.default_rng(9), correction=correction, **kwargs)
    assert [dtype for _, dtype, _ in a.params.signature()] == ["<f4"] * 6
    assert [dtype for _, dtype, _ in b.params.signature()] == ["<f8"] * 6
    for name in params32:
        np.testing.assert_allclose(a.params[name], b.params[name], rtol=1e-3, atol=1e-4)
    assert a.loss == pytest.approx(b.loss, rel=1e-4)
    assert mlp.predict_logits(a.params, x).dtype == np.float32
    assert mlp.evaluate(a.params, x, y)["accuracy"] == pytest.approx(
        mlp.evaluate(b.params, x, y)["accuracy"], abs=0.01
    )


def test_mixed_precision_params_compute_in_float64() -> None:
    params = mlp.init_params([5, 7, 4], np.random.default_rng(6))
    params["dense1.bias"] = params["dense1.bias"].astype(np.float32)
    x = np.random.default_rng(7).normal(size=(10, 5))
    assert mlp.predict_logits(params, x).dtype == np.float64
    result = mlp.train(
        params, x, np.arange(10) % 4, rng=np.random.default_rng(0), lr=0.1, batch_size=4, steps=2
    )
    assert all(dtype == "<f8" for _, dtype, _ in result.params.signature())
