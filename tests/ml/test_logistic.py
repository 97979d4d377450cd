"""Tests for the numpy logistic regression in consortium.ml.logistic."""

from __future__ import annotations

import math

import numpy as np
import pytest

from consortium.core.arrays import Arrays
from consortium.ml import logistic, metrics

N, D = 100, 6


def _data(seed: int = 0, n: int = N, d: int = D) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    w = rng.normal(size=d)
    y = (x @ w + 0.5 * rng.normal(size=n) > 0).astype(np.float64)
    return x, y


def _mean_bce(theta: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    z = x @ theta[:-1] + theta[-1]
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def _flat(params: Arrays) -> np.ndarray:
    return np.concatenate([params["weight"][0], params["bias"]])


def test_init_params_is_torch_linear_like() -> None:
    params = logistic.init_params(D, np.random.default_rng(0))
    assert params.signature() == [("weight", "<f8", (1, D)), ("bias", "<f8", (1,))]
    bound = 1 / math.sqrt(D)
    assert np.all(np.abs(_flat(params)) <= bound)
    with pytest.raises(ValueError):
        logistic.init_params(0, np.random.default_rng(0))


@pytest.mark.parametrize("weight_decay", [0.0, 0.3])
def test_gradient_matches_finite_differences(weight_decay: float) -> None:
    x, y = _data(1)
    params = logistic.init_params(D, np.random.default_rng(1))
    theta = _flat(params)
    # one full-batch SGD step with lr=1 moves the parameters by minus the gradient
    result = logistic.train(
        params,
        x,
        y,
        rng=np.random.default_rng(0),
        lr=1.0,
        batch_size=N,
        steps=1,
        weight_decay=weight_decay,
    )
    grad = theta - _flat(result.params)
    h = 1e-6
    numeric = np.empty_like(theta)
    for i in range(theta.size):
        e = np.zeros_like(theta)
        e[i] = h
        numeric[i] = (_mean_bce(theta + e, x, y) - _mean_bce(theta - e, x, y)) / (2 * h)
    numeric += weight_decay * theta
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)
    assert result.loss == pytest.approx(_mean_bce(theta, x, y), rel=1e-12)


def test_loss_decreases_on_separable_data() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(80, 2))
    y = (x[:, 0] - x[:, 1] > 0).astype(float)
    params = logistic.init_params(2, np.random.default_rng(0))
    before = logistic.evaluate(params, x, y)
    losses = []
    for _ in range(20):
        result = logistic.train(params, x, y, rng=rng, lr=0.5, batch_size=16, epochs=1)
        losses.append(result.loss)
        params = result.params
    after = logistic.evaluate(params, x, y)
    assert losses[-1] < losses[0] / 3
    assert after["loss"] < before["loss"] / 3
    assert after["accuracy"] >= 0.97
    assert after["auc"] == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_same_inputs_and_rng_state_give_bit_identical_results(optimizer: str) -> None:
    x, y = _data(3)
    params = logistic.init_params(D, np.random.default_rng(3))
    kwargs = dict(lr=0.05, batch_size=32, steps=13, optimizer=optimizer, prox_mu=0.1)
    a = logistic.train(params, x, y, rng=np.random.default_rng(11), **kwargs)
    b = logistic.train(params, x, y, rng=np.random.default_rng(11), **kwargs)
    assert a.params.equals(b.params)
    assert a.loss == b.loss
    c = logistic.train(params, x, y, rng=np.random.default_rng(12), **kwargs)
    assert not a.params.equals(c.params)


def _reference_sgd(
    theta: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    rng: np.random.Generator,
    lr: float,
    batch_size: int,
    steps: int,
) -> tuple[np.ndarray, float]:
    """Plain re-statement of the documented minibatch semantics."""
    theta = theta.copy()
    losses, sizes = [], []
    used = 0
    while used < steps:
        perm = rng.permutation(len(x))
        for start in range(0, len(x), batch_size):
            if used == steps:
                break
            idx = perm[start : start + batch_size]
            xb, yb = x[idx], y[idx]
            z = xb @ theta[:-1] + theta[-1]
            losses.append(np.mean(np.logaddexp(0.0, z) - yb * z))
            sizes.append(len(idx))
            g = (1 / (1 + np.exp(-z)) - yb) / len(idx)
            theta -= lr * np.concatenate([xb.T @ g, [g.sum()]])
            used += 1
    return theta, float(np.average(losses, weights=sizes))


@pytest.mark.parametrize("steps", [1, 3, 4, 6, 9])
def test_steps_cycle_shuffled_passes_like_a_dataloader(steps: int) -> None:
    x, y = _data(4)
    params = logistic.init_params(D, np.random.default_rng(4))
    rng, ref_rng = np.random.default_rng(5), np.random.default_rng(5)
    result = logistic.train(params, x, y, rng=rng, lr=0.1, batch_size=32, steps=steps)
    theta, loss = _reference_sgd(_flat(params), x, y, ref_rng, 0.1, 32, steps)
    np.testing.assert_allclose(_flat(result.params), theta, rtol=1e-12, atol=1e-14)
    assert result.loss == pytest.approx(loss, rel=1e-12)
    assert result.steps == steps
    assert result.num_examples == N
    # one permutation drawn per (started) pass of ceil(100 / 32) = 4 batches
    assert rng.bit_generator.state == ref_rng.bit_generator.state


def test_epochs_are_whole_passes() -> None:
    x, y = _data(5)
    params = logistic.init_params(D, np.random.default_rng(5))
    by_epochs = logistic.train(
        params, x, y, rng=np.random.default_rng(1), lr=0.1, batch_size=32, epochs=2
    )
    by_steps = logistic.train(
        params, x, y, rng=np.random.default_rng(1), lr=0.1, batch_size=32, steps=8
    )
    assert by_epochs.steps == 8
    assert by_epochs.params.equals(by_steps.params)
    full = logistic.train(
        params, x, y, rng=np.random.default_rng(1), lr=0.1, batch_size=500, epochs=3
    )
    assert full.steps == 3


def test_prox_term_pulls_towards_the_global_model() -> None:
    x, y = _data(6)
    params = logistic.init_params(D, np.random.default_rng(6))
    start = _flat(params)
    distances = []
    for mu in (0.0, 1.0, 10.0):
        result = logistic.train(
            params, x, y, rng=np.random.default_rng(0), lr=0.05, batch_size=16, epochs=5, prox_mu=mu
        )
        distances.append(np.linalg.norm(_flat(result.params) - start))
    assert distances[0] > distances[1] > distances[2]


def test_adam_and_momentum_reduce_the_loss() -> None:
    x, y = _data(7)
    params = logistic.init_params(D, np.random.default_rng(7))
    before = logistic.evaluate(params, x, y)["loss"]
    for kwargs in (
        {"optimizer": "adam", "lr": 0.05},
        {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9},
    ):
        result = logistic.train(
            params, x, y, rng=np.random.default_rng(0), batch_size=32, epochs=10, **kwargs
        )
        assert logistic.evaluate(result.params, x, y)["loss"] < before / 2


def test_input_params_are_never_modified_and_may_be_read_only() -> None:
    x, y = _data(8)
    params = logistic.init_params(D, np.random.default_rng(8))
    wire = Arrays.from_bytes(params.to_bytes())  # read-only views, as received
    snapshot = params.copy()
    result = logistic.train(
        wire,
        x,
        y,
        rng=np.random.default_rng(0),
        lr=0.5,
        batch_size=10,
        epochs=2,
        optimizer="adam",
        prox_mu=0.5,
    )
    assert wire.equals(snapshot)
    assert not result.params.equals(snapshot)
    assert result.params.is_compatible(snapshot)
    result.params["weight"][...] = 0.0  # the result owns its memory
    assert wire.equals(snapshot)


def test_zero_steps_return_the_same_model() -> None:
    x, y = _data(9)
    params = logistic.init_params(D, np.random.default_rng(9))
    result = logistic.train(
        params, x, y, rng=np.random.default_rng(0), lr=0.1, batch_size=8, steps=0
    )
    assert result.params.equals(params)
    assert math.isnan(result.loss)
    assert result.steps == 0


def test_bad_arguments_raise_value_error() -> None:
    x, y = _data(10)
    params = logistic.init_params(D, np.random.default_rng(0))
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="exactly one"):
        logistic.train(params, x, y, rng=rng, lr=0.1, batch_size=8, steps=1, epochs=1)
    with pytest.raises(ValueError, match="exactly one"):
        logistic.train(params, x, y, rng=rng, lr=0.1, batch_size=8)
    with pytest.raises(ValueError, match="batch_size"):
        logistic.train(params, x, y, rng=rng, lr=0.1, batch_size=0, steps=1)
    with pytest.raises(ValueError, match="lr"):
        logistic.train(params, x, y, rng=rng, lr=-1.0, batch_size=8, steps=1)
    with pytest.raises(ValueError, match="optimizer"):
        logistic.train(params, x, y, rng=rng, lr=0.1, batch_size=8, steps=1, optimizer="rmsprop")
    with pytest.raises(ValueError, match="betas"):
        logistic.train(
            params, x, y, rng=rng, lr=0.1, batch_size=8, steps=1, optimizer="adam", momentum=0.9
        )
    with pytest.raises(ValueError, match="prox_mu"):
        logistic.train(params, x, y, rng=rng, lr=0.1, batch_size=8, steps=1, prox_mu=-1.0)
    with pytest.raises(ValueError, match=r"'weight'.*\(1, 6\).*\(1, 5\)"):
        logistic.train(params, x[:, :5], y, rng=rng, lr=0.1, batch_size=8, steps=1)
    with pytest.raises(ValueError, match="y must have shape"):
        logistic.train(params, x, y[:-1], rng=rng, lr=0.1, batch_size=8, steps=1)


def test_predict_and_evaluate_agree_with_metrics() -> None:
    x, y = _data(11)
    params = logistic.init_params(D, np.random.default_rng(11))
    prob = logistic.predict_proba(params, x)
    z = x @ params["weight"][0] + params["bias"][0]
    np.testing.assert_allclose(prob, 1 / (1 + np.exp(-z)), rtol=1e-12)
    result = logistic.evaluate(params, x, y)
    assert result["num_examples"] == N
    assert result["loss"] == pytest.approx(metrics.log_loss(y, prob), rel=1e-9)
    assert result["accuracy"] == pytest.approx(metrics.accuracy(y, prob))
    assert result["auc"] == pytest.approx(metrics.roc_auc(y, prob))


def test_reused_buffers_leave_no_trace_between_calls_or_threads() -> None:
    """Small problems reuse per-thread buffers: a call gives the same bits whatever ran
    before it on this thread (other data, a partial last pass) or on another thread."""
    from concurrent.futures import ThreadPoolExecutor

    def run(seed: int, steps: int) -> tuple[bytes, float]:
        x, y = _data(seed)
        params = logistic.init_params(D, np.random.default_rng(9))
        r = logistic.train(
            params, x.astype(np.float32), y, rng=np.random.default_rng(seed), lr=0.1,
            batch_size=32, steps=steps,
        )  # fmt: skip
        return _flat(r.params).tobytes(), r.loss

    first = run(1, 4)
    run(2, 3)  # same shapes, other data, a pass cut short
    assert run(1, 4) == first
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(lambda s: run(*s), [(1, 4), (2, 3)] * 8))[::2] == [first] * 8
