"""q-FedAvg against a hand computation and the paper's equations; q = 0 is the plain mean of
the returned models; larger q is fairer in a real simulation."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pytest

from consortium.client import ClientApp
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import RoundFailed, StrategyError
from consortium.core.message import Message
from consortium.server import ServerApp, ServerConfig
from consortium.simulation import run_simulation
from consortium.strategy import FedAvg, TrainReply
from consortium.strategy.qfedavg import INITIAL_LOSS_KEY, QFedAvg


def _reply(node: str, arrays: Arrays, loss: float | None, n: int = 1) -> TrainReply:
    return TrainReply(node, arrays, n, {} if loss is None else {INITIAL_LOSS_KEY: loss})


def _model(a: Sequence[float], b: float) -> Arrays:
    return Arrays({"a": np.array(a), "b": np.array([b])})


def test_hand_computation() -> None:
    # q = 1, L = 2, w = (a=[1, 0], b=[0])
    # node 1: w̄ = ([0.5, 0], [0.5]), F = 2: Δw = 2([0.5, 0], [-0.5]) = ([1, 0], [-1]),
    #   ||Δw||² = 2, F^q Δw = ([2, 0], [-2]), h = 1 * 2^0 * 2 + 2 * 2 = 6
    # node 2: w̄ = ([1.5, 1], [0]), F = 1: Δw = ([-1, -2], [0]), ||Δw||² = 5,
    #   F^q Δw = ([-1, -2], [0]), h = 1 * 1 * 5 + 2 * 1 = 7
    # w_new = w - ([1, -2], [-2]) / 13 = ([12/13, 2/13], [2/13])
    w = _model([1.0, 0.0], 0.0)
    replies = [_reply("1", _model([0.5, 0.0], 0.5), 2.0), _reply("2", _model([1.5, 1.0], 0.0), 1.0)]
    new, metrics = QFedAvg(q=1.0, lipschitz=2.0).aggregate_train(1, w, iter(replies))
    np.testing.assert_allclose(new["a"], [12 / 13, 2 / 13], rtol=1e-14)
    np.testing.assert_allclose(new["b"], [2 / 13], rtol=1e-14)
    assert metrics[INITIAL_LOSS_KEY] == pytest.approx(1.5)


def test_matches_the_papers_equations() -> None:
    q, L = 0.5, 3.0
    rng = np.random.default_rng(7)
    w = Arrays({"a": rng.normal(size=(2, 3)), "b": rng.normal(size=4).astype(np.float32)})
    local = [
        Arrays({k: (v + rng.normal(size=v.shape)).astype(v.dtype) for k, v in w.items()})
        for _ in range(5)
    ]
    losses = rng.uniform(0.1, 3.0, size=5)
    replies = [
        _reply(str(k), y, float(f), n=k + 1)
        for k, (y, f) in enumerate(zip(local, losses, strict=True))
    ]
    new, _ = QFedAvg(q, L).aggregate_train(1, w, iter(replies))

    def flat(arrays: Arrays) -> np.ndarray:
        return np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in arrays.values()])

    delta_w = [L * (flat(w) - flat(y)) for y in local]  # Δw_k = L (w - w̄_k)
    numerator = sum(f**q * d for f, d in zip(losses, delta_w, strict=True))
    h = sum(q * f ** (q - 1) * d @ d + L * f**q for f, d in zip(losses, delta_w, strict=True))
    expected = flat(w) - numerator / h
    np.testing.assert_allclose(new["a"].ravel(), expected[:6], rtol=1e-12)
    np.testing.assert_allclose(new["b"], expected[6:].astype(np.float32), rtol=1e-6)
    assert new["b"].dtype == np.float32


@pytest.mark.parametrize("lipschitz", [0.5, 10.0])
def test_q_zero_is_the_unweighted_mean_of_the_returned_models(lipschitz: float) -> None:
    """q = 0: Δ_k = L (w - w̄_k), h_k = L, so w_new = w - Σ (w - w̄_k) / K = mean of w̄_k."""
    rng = np.random.default_rng(3)
    w = Arrays({"a": rng.normal(size=5)})
    local = [Arrays({"a": rng.normal(size=5)}) for _ in range(4)]
    ns = [1, 50, 3, 7]  # ignored: one vote per node
    # no initial_loss needed when q = 0
    new, _ = QFedAvg(0.0, lipschitz).aggregate_train(
        1, w, (_reply(str(k), y, None, n) for k, (y, n) in enumerate(zip(local, ns, strict=True)))
    )
    np.testing.assert_allclose(new["a"], np.mean([y["a"] for y in local], axis=0), rtol=1e-13)
    uniform, _ = FedAvg(weighting="uniform").aggregate_train(
        1, w, (TrainReply(str(k), y, n) for k, (y, n) in enumerate(zip(local, ns, strict=True)))
    )
    np.testing.assert_allclose(new["a"], uniform["a"], rtol=1e-13)


def test_replies_without_a_usable_loss_are_left_out(caplog: pytest.LogCaptureFixture) -> None:
    w = _model([1.0, 0.0], 0.0)
    good = _reply("good", _model([0.0, 0.0], 0.0), 1.0)
    bad = [
        _reply("silent", _model([9.0, 9.0], 9.0), None),
        _reply("zero", _model([9.0, 9.0], 9.0), 0.0),
        _reply("negative", _model([9.0, 9.0], 9.0), -1.0),
    ]
    with caplog.at_level(logging.WARNING, logger="consortium.strategy"):
        new, _ = QFedAvg(1.0, 1.0).aggregate_train(1, w, iter([*bad, good]))
    alone, _ = QFedAvg(1.0, 1.0).aggregate_train(1, w, iter([good]))
    assert new.equals(alone)
    assert len(caplog.records) == 3 and "no 'initial_loss'" in caplog.text
    with pytest.raises(RoundFailed, match=r"no usable update.*zero reports initial_loss=0.0"):
        QFedAvg(1.0, 1.0).aggregate_train(2, w, iter(bad))


def test_bad_settings_are_refused() -> None:
    with pytest.raises(StrategyError, match="q must be"):
        QFedAvg(-1.0, 1.0)
    with pytest.raises(StrategyError, match="lipschitz"):
        QFedAvg(1.0, 0.0)
    with pytest.raises(StrategyError, match="weighting"):
        QFedAvg(1.0, 1.0, weighting="uniform")
    settings = QFedAvg(2.0, 10.0, fraction_train=0.5).settings()
    assert settings["q"] == 2.0 and settings["lipschitz"] == 10.0
    assert settings["fraction_train"] == 0.5 and "weighting" not in settings


# -- fairness in a real run -----------------------------------------------------------------
# Node k's loss is F_k(w) = 1/2 ||w - t_k||^2; it takes K gradient steps of size η and reports
# F_k at the model it received. L = 1/η, as in the paper.
TARGETS = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 5.0]])
EXAMPLES = [100, 10, 1]
LOCAL_LR, LOCAL_STEPS = 0.1, 3

fair_app = ClientApp()


@fair_app.train()
def _train(msg: Message, ctx: Context) -> Message:
    """Reports F_k at the received model, then moves towards its own target."""
    assert msg.content is not None and msg.content.model is not None
    k = int(ctx.node_config["partition-id"])
    w = msg.content.model["w"].copy()
    initial_loss = 0.5 * float(np.sum((w - TARGETS[k]) ** 2))
    for _ in range(LOCAL_STEPS):
        w -= LOCAL_LR * (w - TARGETS[k])
    metrics = {"num_examples": EXAMPLES[k], INITIAL_LOSS_KEY: initial_loss}
    return msg.reply(arrays=Arrays({"w": w}), metrics=metrics)


def _final(q: float) -> np.ndarray:
    strategy = QFedAvg(
        q, 1 / LOCAL_LR, initial_arrays=Arrays({"w": np.ones(2)}), fraction_evaluate=0.0
    )
    server = ServerApp(lambda ctx: ServerConfig(strategy, num_rounds=400))
    return run_simulation(server, fair_app, num_nodes=len(TARGETS)).arrays["w"]


def _losses(w: np.ndarray) -> np.ndarray:
    out: np.ndarray = 0.5 * np.sum((w - TARGETS) ** 2, axis=1)
    return out


def test_larger_q_reaches_the_fair_optimum_and_evens_out_losses() -> None:
    plain, fair = _final(0.0), _final(2.0)
    # q = 0: the unweighted mean of the targets, although node 0 holds 100x more examples
    np.testing.assert_allclose(plain, TARGETS.mean(axis=0), atol=1e-9)
    # q = 2: a stationary point of the q-FFL objective Σ F_k^{q+1} / (q + 1)
    f = _losses(fair)
    gradient = (f**2) @ (fair - TARGETS)
    assert np.linalg.norm(gradient) / np.sum(f**2) < 1e-9
    # ... where the worst-off node does better and the losses are more even
    assert _losses(fair).max() < 0.8 * _losses(plain).max()
    assert np.var(_losses(fair)) < 0.5 * np.var(_losses(plain))
