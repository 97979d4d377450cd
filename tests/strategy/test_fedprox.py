"""FedProx: mu reaches every node's train config, and the proximal term holds updates back."""

from __future__ import annotations

import numpy as np
import pytest

from consortium.client import ClientApp
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import StrategyError
from consortium.core.message import Message
from consortium.server import ServerApp, ServerConfig
from consortium.simulation import run_simulation
from consortium.strategy import FedAvg, TrainReply
from consortium.strategy.fedprox import PROX_MU_KEY, FedProx


def test_every_train_config_carries_mu_beside_the_user_config() -> None:
    strategy = FedProx(0.25, train_config=lambda rnd: {"lr": 0.1 / rnd}, fraction_train=0.5)
    rng = np.random.default_rng(0)
    instructions = strategy.configure_train(2, Arrays(), [f"n{i}" for i in range(6)], rng)
    assert len(instructions) == 3  # FedAvg's sampling still applies
    assert all(i.config == {"lr": 0.05, "prox-mu": 0.25} for i in instructions)
    assert PROX_MU_KEY == "prox-mu"
    assert strategy.configure_evaluate(2, Arrays(), ["a"], rng)[0].config == {}
    assert strategy.settings()["prox_mu"] == 0.25
    assert strategy.settings()["strategy"] == "FedProx"


def test_aggregation_is_fedavg() -> None:
    rng = np.random.default_rng(1)
    replies = [TrainReply(str(i), Arrays({"w": rng.normal(size=4)}), i + 1) for i in range(3)]
    prox, _ = FedProx(1.0).aggregate_train(1, Arrays({"w": np.zeros(4)}), iter(replies))
    avg, _ = FedAvg().aggregate_train(1, Arrays({"w": np.zeros(4)}), iter(replies))
    assert prox.equals(avg)


def test_bad_mu_and_conflicting_configs_are_refused() -> None:
    for mu in (-0.1, float("nan"), float("inf"), True):
        with pytest.raises(StrategyError, match="mu"):
            FedProx(mu)
    clash = FedProx(0.5, train_config={"prox-mu": 0.1})
    with pytest.raises(StrategyError, match="set mu on the strategy only"):
        clash.configure_train(1, Arrays(), ["a"], np.random.default_rng(0))
    same = FedProx(0.5, train_config={"prox-mu": 0.5})
    assert same.configure_train(1, Arrays(), ["a"], np.random.default_rng(0))[0].config == {
        "prox-mu": 0.5
    }


# -- a node that minimises 1/2 ||w - t||^2 + mu/2 ||w - w_global||^2 by gradient descent ------
TARGETS = np.array([[2.0, 0.0], [-1.0, 3.0], [0.0, -4.0]])
LOCAL_LR, LOCAL_STEPS = 0.1, 10

prox_app = ClientApp()


@prox_app.train()
def _train(msg: Message, ctx: Context) -> Message:
    """Local gradient descent with the mu the server put in the train config."""
    assert msg.content is not None and msg.content.model is not None
    mu = float(msg.content.config["prox-mu"])
    target = TARGETS[int(ctx.node_config["partition-id"])]
    w0 = msg.content.model["w"]
    w = w0.copy()
    for _ in range(LOCAL_STEPS):
        w -= LOCAL_LR * ((w - target) + mu * (w - w0))
    drift = float(np.linalg.norm(w - w0))
    return msg.reply(arrays=Arrays({"w": w}), metrics={"num_examples": 1, "drift": drift})


def _drifts(mu: float, rounds: int) -> np.ndarray:
    """Each node's ||y_i - x|| in each round of a real run: shape (rounds, nodes)."""
    strategy = FedProx(mu, initial_arrays=Arrays({"w": np.zeros(2)}), fraction_evaluate=0.0)
    server = ServerApp(lambda ctx: ServerConfig(strategy, num_rounds=rounds))
    result = run_simulation(server, prox_app, num_nodes=len(TARGETS))
    return np.array([[n.metrics["drift"] for n in r.nodes] for r in result.history.rounds])


def test_nodes_receive_mu_and_drift_as_the_proximal_objective_predicts() -> None:
    # from w0 = 0, GD on the FedProx objective contracts towards w* = (t + mu w0) / (1 + mu):
    # y - w0 = (1 - (1 - lr (1 + mu))^K) (t - w0) / (1 + mu)
    for mu in (0.0, 1.0):
        factor = (1 - (1 - LOCAL_LR * (1 + mu)) ** LOCAL_STEPS) / (1 + mu)
        expected = factor * np.linalg.norm(TARGETS, axis=1)
        np.testing.assert_allclose(_drifts(mu, rounds=1)[0], expected, rtol=1e-12)


def test_larger_mu_keeps_every_update_closer_to_the_global_model() -> None:
    free, held = _drifts(0.0, rounds=4), _drifts(2.0, rounds=4)
    assert (held < free).all()
    assert (held < 0.6 * free).all()


def test_the_heart_disease_app_applies_prox_mu_with_the_real_trainer() -> None:
    """The reference app passes prox-mu to logistic.train: a larger mu moves the model less."""
    from consortium.examples import heart_disease as hd

    start = hd.initial_params_for_seed(0)

    def moved(mu: float) -> float:
        strategy = FedProx(mu, initial_arrays=start, fraction_evaluate=0.0)
        server = ServerApp(lambda ctx: ServerConfig(strategy, num_rounds=1))
        run_config = {"lr": 0.05, "local-steps": 50}
        final = run_simulation(server, hd.client_app, num_nodes=4, run_config=run_config).arrays
        return float(np.sqrt(sum(np.sum((final[k] - start[k]) ** 2) for k in start)))

    free, held, tight = moved(0.0), moved(1.0), moved(5.0)
    assert tight < 0.5 * held < 0.5 * free
