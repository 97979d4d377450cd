"""FedNova against a hand computation and the paper's formula, and its fix of FedAvg's
objective inconsistency in a real simulation."""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterator

import numpy as np
import pytest

from consortium.client import ClientApp
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import RoundFailed
from consortium.core.message import Message
from consortium.server import ServerApp, ServerConfig
from consortium.simulation import run_simulation
from consortium.strategy import FedAvg, Strategy, TrainReply
from consortium.strategy.fednova import LOCAL_STEPS_KEY, FedNova


def _reply(node: str, arrays: Arrays, n: int, tau: float | None) -> TrainReply:
    metrics = {} if tau is None else {LOCAL_STEPS_KEY: tau}
    return TrainReply(node, arrays, n, metrics)


def test_hand_computation() -> None:
    # x = 1; y1 = 0.4 after τ1 = 2 steps on n1 = 1 example; y2 = 0.7 after τ2 = 3 on n2 = 3
    # d1 = 0.6/2 = 0.3, d2 = 0.3/3 = 0.1; p = (1/4, 3/4); τ_eff = 0.5 + 2.25 = 2.75
    # x_new = 1 - 2.75 * (0.25*0.3 + 0.75*0.1) = 1 - 2.75*0.15 = 0.5875 (FedAvg: 0.625)
    x = Arrays({"w": np.array([1.0]), "b": np.array([[2.0, 0.0]])})
    y1 = Arrays({"w": np.array([0.4]), "b": np.array([[2.0, 1.0]])})
    y2 = Arrays({"w": np.array([0.7]), "b": np.array([[1.0, 0.0]])})
    new, metrics = FedNova().aggregate_train(
        1, x, iter([_reply("a", y1, 1, 2), _reply("b", y2, 3, 3)])
    )
    assert new["w"][0] == pytest.approx(0.5875, rel=1e-14)
    # b: d1 = (0, -1)/2, d2 = (1, 0)/3 -> Σ p d = (0.25, -0.125); x - 2.75 * that
    np.testing.assert_allclose(new["b"], [[2.0 - 0.6875, 0.34375]], rtol=1e-14)
    assert metrics[LOCAL_STEPS_KEY] == pytest.approx(2.75)  # example-weighted mean τ = τ_eff


@pytest.mark.parametrize("weighting", ["examples", "uniform"])
def test_matches_the_papers_formula(weighting: str) -> None:
    rng = np.random.default_rng(4)
    x = Arrays({"w": rng.normal(size=(3, 2)).astype(np.float32), "b": rng.normal(size=5)})
    ys = [
        Arrays({k: (v + rng.normal(size=v.shape)).astype(v.dtype) for k, v in x.items()})
        for _ in range(6)
    ]
    ns = [5, 1, 0, 8, 3, 2]
    taus = [1, 7, 3, 2.5, 10, 4]
    new, _ = FedNova(weighting=weighting).aggregate_train(  # type: ignore[arg-type]
        1,
        x,
        (_reply(str(i), y, n, t) for i, (y, n, t) in enumerate(zip(ys, ns, taus, strict=True))),
    )
    w = np.array(ns, dtype=float) if weighting == "examples" else np.ones(len(ns))
    p = w / w.sum()
    tau_eff = float(np.dot(p, taus))
    for k in x:
        x64 = x[k].astype(np.float64)
        d = np.stack([(x64 - y[k].astype(np.float64)) / t for y, t in zip(ys, taus, strict=True)])
        expected = x64 - tau_eff * np.tensordot(p, d, axes=1)
        np.testing.assert_allclose(new[k], expected.astype(x[k].dtype), rtol=1e-6, atol=1e-6)
        assert new[k].dtype == x[k].dtype


def test_equal_local_steps_is_fedavg() -> None:
    rng = np.random.default_rng(5)
    x = Arrays({"w": rng.normal(size=7)})
    ys = [Arrays({"w": rng.normal(size=7)}) for _ in range(4)]
    ns = [2, 9, 4, 1]
    nova, _ = FedNova().aggregate_train(
        1, x, (_reply(str(i), y, n, 6) for i, (y, n) in enumerate(zip(ys, ns, strict=True)))
    )
    avg, _ = FedAvg().aggregate_train(
        1, x, (TrainReply(str(i), y, n) for i, (y, n) in enumerate(zip(ys, ns, strict=True)))
    )
    np.testing.assert_allclose(nova["w"], avg["w"], rtol=1e-13, atol=1e-14)


def test_replies_without_usable_local_steps_are_left_out(caplog: pytest.LogCaptureFixture) -> None:
    x = Arrays({"w": np.array([1.0])})
    good = _reply("good", Arrays({"w": np.array([0.4])}), 1, 2)
    bad = [
        _reply("silent", Arrays({"w": np.array([9.0])}), 5, None),
        _reply("zero", Arrays({"w": np.array([9.0])}), 5, 0),
        _reply("negative", Arrays({"w": np.array([9.0])}), 5, -3),
    ]
    with caplog.at_level(logging.WARNING, logger="consortium.strategy"):
        new, _ = FedNova().aggregate_train(1, x, iter([bad[0], good, *bad[1:]]))
    assert new["w"][0] == pytest.approx(0.4)  # only the good node counted
    assert [r.message.split(":")[0] for r in caplog.records] == [
        "FedNova round 1",
        "FedNova round 1",
        "FedNova round 1",
    ]
    assert "silent" in caplog.text and "no 'local_steps'" in caplog.text
    with pytest.raises(RoundFailed, match=r"no usable update.*silent reports no 'local_steps'"):
        FedNova().aggregate_train(3, x, iter(bad))
    with pytest.raises(RoundFailed, match="positive number of examples"):
        FedNova().aggregate_train(1, x, iter([_reply("empty", x, 0, 2)]))


def test_streaming_holds_one_update_at_a_time() -> None:
    refs: list[weakref.ref[np.ndarray]] = []
    dropped_in_time: list[bool] = []

    def replies() -> Iterator[TrainReply]:
        for i in range(30):
            w = np.full(3, float(i))
            refs.append(weakref.ref(w))
            yield _reply(str(i), Arrays({"w": w}), 1, 4)
            del w
            if i >= 1:
                dropped_in_time.append(refs[i - 1]() is None)

    result, _ = FedNova().aggregate_train(1, Arrays({"w": np.zeros(3)}), replies())
    assert len(dropped_in_time) == 29 and all(dropped_in_time)
    np.testing.assert_allclose(result["w"], np.full(3, 14.5))


# -- objective inconsistency in a real run ---------------------------------------------------
# Node i minimises 1/2 ||w - t_i||^2 with τ_i gradient steps of size η: y_i = t_i + c_i (x - t_i),
# c_i = (1 - η)^τ_i. The true optimum of Σ n_i/2 ||w - t_i||^2 is the n-weighted mean of t_i.
TARGETS = np.array([[4.0, 0.0], [0.0, 4.0], [-4.0, -4.0]])
EXAMPLES = np.array([2.0, 1.0, 1.0])
STEPS = np.array([1, 4, 20])
LR = 0.01

steps_app = ClientApp()


@steps_app.train()
def _train(msg: Message, ctx: Context) -> Message:
    """τ_i plain gradient steps towards this node's target; reports τ_i as local_steps."""
    assert msg.content is not None and msg.content.model is not None
    i = int(ctx.node_config["partition-id"])
    w = msg.content.model["w"].copy()
    for _ in range(STEPS[i]):
        w -= LR * (w - TARGETS[i])
    return msg.reply(
        arrays=Arrays({"w": w}),
        metrics={"num_examples": int(EXAMPLES[i]), LOCAL_STEPS_KEY: int(STEPS[i])},
    )


def _fixed_point(weights: np.ndarray) -> np.ndarray:
    out: np.ndarray = weights @ TARGETS / weights.sum()
    return out


def _final(strategy: Strategy) -> np.ndarray:
    server = ServerApp(lambda ctx: ServerConfig(strategy, num_rounds=500))
    return run_simulation(server, steps_app, num_nodes=3).arrays["w"]


def test_fednova_removes_the_pull_of_the_node_that_ran_longest() -> None:
    start = Arrays({"w": np.zeros(2)})
    optimum = _fixed_point(EXAMPLES)
    shrink = 1 - (1 - LR) ** STEPS  # how far node i moves towards its target, per unit
    # FedAvg stops where Σ p_i (1 - c_i)(t_i - x) = 0,
    # FedNova where Σ p_i (1 - c_i) / τ_i (t_i - x) = 0
    fedavg = _final(FedAvg(initial_arrays=start, fraction_evaluate=0.0))
    fednova = _final(FedNova(initial_arrays=start, fraction_evaluate=0.0))
    np.testing.assert_allclose(fedavg, _fixed_point(EXAMPLES * shrink), atol=1e-8)
    np.testing.assert_allclose(fednova, _fixed_point(EXAMPLES * shrink / STEPS), atol=1e-8)
    assert np.linalg.norm(fednova - optimum) < 0.1 * np.linalg.norm(fedavg - optimum)
