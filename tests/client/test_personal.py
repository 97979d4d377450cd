"""Personalisation wrappers: local layers stay on nodes, Ditto's personal models, evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from consortium.client import ClientApp, FitResult, NumPyClient
from consortium.client.personal import Ditto, LocalLayers, ditto_correction
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import ConfigError, RoundFailed
from consortium.core.history import History
from consortium.core.message import Message
from consortium.core.records import Config
from consortium.server import ServerApp, ServerConfig
from consortium.simulation import run_simulation
from consortium.strategy import FedAvg


def per_node(history: History, rnd: int, metric: str) -> dict[str, float]:
    """Each node's federated-evaluation ``metric`` in round ``rnd``."""
    record = history.rounds[rnd - 1]
    return {n.node_id: float(n.metrics[metric]) for n in record.nodes if n.stage == "evaluate"}


def server(initial: Arrays, rounds: int) -> ServerApp:
    return ServerApp(lambda ctx: ServerConfig(FedAvg(initial_arrays=initial), num_rounds=rounds))


# -- local layers (FedPer / FedBN) -------------------------------------------------------
def full_init(ctx: Context) -> Arrays:
    """Head first, to check the node's parameter order is kept."""
    k = int(ctx.node_config["partition-id"])
    return Arrays({"head": np.full(1, 100.0 + k), "body": np.zeros(2)})


def stepping_app(seen: list[list[str]]) -> ClientApp:
    """Node k adds k+1 to every parameter it trains; evaluation reports the head."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, ctx: Context) -> Message:
        assert msg.content is not None and msg.content.model is not None
        seen.append(list(msg.content.model))
        step = int(ctx.node_config["partition-id"]) + 1.0
        return msg.reply(
            arrays=Arrays((k, v + step) for k, v in msg.content.model.items()),
            metrics={"num_examples": 4},
        )

    @app.evaluate()
    def evaluate(msg: Message, ctx: Context) -> Message:
        assert msg.content is not None and msg.content.model is not None
        return msg.reply(metrics={"num_examples": 2, "head": float(msg.content.model["head"][0])})

    return app


def test_local_layers_never_leave_the_node_and_persist_across_rounds() -> None:
    layers = LocalLayers(["head*"], full_init)
    seen: list[list[str]] = []
    app = layers.wrap(stepping_app(seen))
    initial = layers.shared(full_init(Context("x", node_config={"partition-id": 0})))
    assert list(initial) == ["body"]
    result = run_simulation(server(initial, 3), app, num_nodes=3)
    # the server only ever had the shared body: 3 rounds x mean(1, 2, 3)
    assert list(result.arrays) == ["body"]
    np.testing.assert_allclose(result.arrays["body"], np.full(2, 6.0))
    # the handler got the node's full model, in the node's order
    assert seen and all(names == ["head", "body"] for names in seen)
    # node k's head: its own init 100 + k, plus (k + 1) per round, never averaged
    for rnd in (1, 3):
        heads = per_node(result.history, rnd, "head_personal")
        assert heads == {str(k): 100.0 + k + rnd * (k + 1) for k in range(3)}
        assert per_node(result.history, rnd, "head") == heads


def test_global_model_with_local_parameters_is_refused_clearly() -> None:
    layers = LocalLayers(["head"], full_init)
    full = full_init(Context("x", node_config={"partition-id": 0}))
    with pytest.raises(RoundFailed, match=r"local \['head'\] must stay on the node"):
        run_simulation(server(full, 1), layers.wrap(stepping_app([])), num_nodes=2)
    with pytest.raises(ConfigError, match="patterns"):
        LocalLayers("head", full_init)


def test_local_layers_wrap_a_numpy_client_and_answer_queries_with_shared_part() -> None:
    class Client(NumPyClient):
        def get_parameters(self, config: Config) -> Arrays:
            return Arrays({"head": np.full(1, 9.0), "body": np.ones(2)})

        def fit(self, arrays: Arrays, config: Config) -> FitResult:
            return FitResult(Arrays((k, v * 2.0) for k, v in arrays.items()), 1)

    layers = LocalLayers(["head"], full_init)
    app = layers.wrap(ClientApp(client_fn=lambda ctx: Client()))
    srv = ServerApp(lambda ctx: ServerConfig(FedAvg(fraction_evaluate=0.0), num_rounds=1))
    result = run_simulation(srv, app, num_nodes=2)
    # the initial model came from node 0's query: its shared part only, then doubled
    assert list(result.arrays) == ["body"]
    np.testing.assert_allclose(result.arrays["body"], np.full(2, 2.0))


# -- Ditto ------------------------------------------------------------------------------
TARGET = {"0": 0.0, "1": 4.0}


def toward_target_app() -> ClientApp:
    """Global training moves halfway to the node's target; evaluation is |model - target|."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, ctx: Context) -> Message:
        assert msg.content is not None and msg.content.model is not None
        w = msg.content.model["w"]
        noise = ctx.rng(msg.metadata.round).normal(scale=1e-3, size=w.shape)
        return msg.reply(
            arrays=Arrays({"w": w + 0.5 * (TARGET[ctx.node_id] - w) + noise}),
            metrics={"num_examples": 1},
        )

    @app.evaluate()
    def evaluate(msg: Message, ctx: Context) -> Message:
        assert msg.content is not None and msg.content.model is not None
        dist = float(abs(msg.content.model["w"][0] - TARGET[ctx.node_id]))
        return msg.reply(metrics={"num_examples": 1, "dist": dist})

    return app


def one_step(v: Arrays, w: Arrays, lam: float, msg: Message, ctx: Context) -> Arrays:
    """One gradient step (lr 0.5) on ½(v - target)² + lam/2 (v - w)²."""
    t = TARGET[ctx.node_id]
    return Arrays({"w": v["w"] - 0.5 * ((v["w"] - t) + lam * (v["w"] - w["w"]))})


def test_ditto_keeps_fedavg_global_model_and_trains_personal_models() -> None:
    initial = Arrays({"w": np.zeros(1)})
    plain = run_simulation(server(initial, 2), toward_target_app(), num_nodes=2, seed=4)
    ditto = Ditto(one_step, lam=1.0)
    result = run_simulation(
        server(initial, 2), ditto.wrap(toward_target_app()), num_nodes=2, seed=4
    )
    assert result.arrays.equals(plain.arrays)  # the global model is FedAvg's, bit for bit

    # by hand (noise 1e-3 aside): w1 = 1, w2 = 1.5; v starts at w0 = 0 and steps towards
    # its target with the pull to the global model it received:
    # node 1: v1 = 0 - 0.5 (-4 + 0) = 2, v2 = 2 - 0.5 ((2 - 4) + (2 - 1)) = 2.5
    # node 0: v1 = 0, v2 = 0 - 0.5 (0 + (0 - 1)) = 0.5
    personal = per_node(result.history, 2, "dist_personal")
    glob = per_node(result.history, 2, "dist_global")
    assert personal == pytest.approx({"0": 0.5, "1": 1.5}, abs=1e-2)
    assert glob == pytest.approx({"0": 1.5, "1": 2.5}, abs=1e-2)
    assert per_node(result.history, 2, "dist") == glob  # unsuffixed: the global model
    assert result.history.rounds[1].evaluate_metrics["dist_personal"] == pytest.approx(
        1.0, abs=1e-2
    )


def test_ditto_refuses_bad_settings_and_misshapen_personal_models() -> None:
    with pytest.raises(ConfigError, match="lam"):
        Ditto(one_step, lam=-1.0)
    bad = Ditto(lambda v, w, lam, m, c: Arrays({"w": np.zeros(3)}), lam=0.1)
    with pytest.raises(RoundFailed, match="personal_train must return Arrays shaped like"):
        run_simulation(
            server(Arrays({"w": np.zeros(1)}), 1), bad.wrap(toward_target_app()), num_nodes=1
        )


def test_ditto_correction_makes_a_start_anchored_prox_exact() -> None:
    """GD with prox anchored at the start plus the correction = GD with prox anchored at w."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 3))
    hess = a @ a.T + np.eye(3)  # f(v) = ½ vᵀ H v
    v0, w, lam, lr = rng.normal(size=3), rng.normal(size=3), 0.7, 0.05

    corr = ditto_correction(Arrays({"v": v0}), Arrays({"v": w}), lam)["v"]
    np.testing.assert_allclose(corr, lam * (v0 - w))
    v_start, v_ditto = v0.copy(), v0.copy()
    for _ in range(20):
        v_start -= lr * (hess @ v_start + lam * (v_start - v0) + corr)  # prox_mu at the start
        v_ditto -= lr * (hess @ v_ditto + lam * (v_ditto - w))  # Ditto's objective
    np.testing.assert_allclose(v_start, v_ditto, rtol=1e-12, atol=1e-12)
