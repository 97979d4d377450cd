"""FedOpt wrappers: hand computations, a numpy replay of Reddi et al.'s Algorithm 2,
delegation to any base strategy, resumable optimiser state, and real simulations."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import pytest

from consortium.client import ClientApp
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import StrategyError
from consortium.core.message import Message
from consortium.core.records import Metrics
from consortium.server import ServerApp, ServerConfig
from consortium.simulation import run_simulation
from consortium.strategy import FedAvg, Instruction, Strategy, TrainReply
from consortium.strategy.fedopt import (
    FedAdagrad,
    FedAdam,
    FedAvgM,
    FedOpt,
    FedYogi,
    ServerAdam,
)


def _round(strategy: Strategy, x: Arrays, ys: Sequence[Arrays], ns: Sequence[int]) -> Arrays:
    replies = (TrainReply(str(i), y, n) for i, (y, n) in enumerate(zip(ys, ns, strict=True)))
    return strategy.aggregate_train(1, x, replies)[0]


def _scalar(value: float) -> Arrays:
    return Arrays({"w": np.array([value])})


# -- the update rules by hand ---------------------------------------------------------------
# One node, x0 = 1, and each round the node returns x + 1, so FedAvg's x̄ - x is Δ = 1.
# lr 1 (0.5 for momentum), β1 0.9, β2 0.75, τ 0.5; first round m1 = 0.1, second m2 = 0.19.
HAND: list[tuple[Callable[[], FedOpt], float, float]] = [
    # Adam: v1 = 0.75*0 + 0.25*1 = 0.25; v2 = 0.75*0.25 + 0.25 = 0.4375
    (
        lambda: FedAdam(lr=1.0, beta1=0.9, beta2=0.75, tau=0.5),
        1 + 0.1 / (0.5 + 0.5),
        0.19 / (math.sqrt(0.4375) + 0.5),
    ),
    # Yogi: v1 = 0 - 0.25*1*sign(0 - 1) = 0.25; v2 = 0.25 - 0.25*sign(0.25 - 1) = 0.5
    (
        lambda: FedYogi(lr=1.0, beta1=0.9, beta2=0.75, tau=0.5),
        1 + 0.1 / (0.5 + 0.5),
        0.19 / (math.sqrt(0.5) + 0.5),
    ),
    # Adagrad: v1 = 1; v2 = 2
    (
        lambda: FedAdagrad(lr=1.0, beta1=0.9, tau=0.5),
        1 + 0.1 / (1.0 + 0.5),
        0.19 / (math.sqrt(2.0) + 0.5),
    ),
    # momentum: u1 = 1, x1 = 1 + 0.5; u2 = 0.9 + 1 = 1.9, step 0.95
    (lambda: FedAvgM(lr=0.5, momentum=0.9), 1.5, 0.95),
]


@pytest.mark.parametrize(("make", "x1", "step2"), HAND, ids=["adam", "yogi", "adagrad", "avgm"])
def test_two_rounds_by_hand(make: Callable[[], FedOpt], x1: float, step2: float) -> None:
    strategy = make()
    got1 = _round(strategy, _scalar(1.0), [_scalar(2.0)], [5])
    assert got1["w"][0] == pytest.approx(x1, rel=1e-14)
    got2 = _round(strategy, got1, [_scalar(got1["w"][0] + 1.0)], [5])
    assert got2["w"][0] == pytest.approx(x1 + step2, rel=1e-12)
    assert strategy.optimizer.steps == 2


def test_yogi_shrinks_v_where_adam_decays_it() -> None:
    """With v_{-1} = 4 > Δ² = 1 Yogi takes v1 = 4 - 0.25 = 3.75, Adam 0.75*4 + 0.25 = 3.25."""
    kw: dict[str, Any] = {"lr": 1.0, "beta1": 0.9, "beta2": 0.75, "tau": 0.5, "initial_v": 4.0}
    yogi = _round(FedYogi(**kw), _scalar(1.0), [_scalar(2.0)], [1])
    adam = _round(FedAdam(**kw), _scalar(1.0), [_scalar(2.0)], [1])
    assert yogi["w"][0] == pytest.approx(1 + 0.1 / (math.sqrt(3.75) + 0.5), rel=1e-14)
    assert adam["w"][0] == pytest.approx(1 + 0.1 / (math.sqrt(3.25) + 0.5), rel=1e-14)


def test_initial_v_defaults_to_zero_and_reddi_tau_squared_is_available() -> None:
    """Default v_{-1} = 0 (FLamby, Flower); initial_v=τ² follows Reddi et al.'s v_{-1} ≥ τ²."""
    tau = 0.5
    zero = _round(FedAdam(lr=1.0, beta2=0.75, tau=tau), _scalar(0.0), [_scalar(1.0)], [1])
    reddi = _round(
        FedAdam(lr=1.0, beta2=0.75, tau=tau, initial_v=tau**2), _scalar(0.0), [_scalar(1.0)], [1]
    )
    assert zero["w"][0] == pytest.approx(0.1 / (math.sqrt(0.25) + tau), rel=1e-14)
    assert reddi["w"][0] == pytest.approx(0.1 / (math.sqrt(0.75 * 0.25 + 0.25) + tau), rel=1e-14)


# -- many rounds against an independent replay of Algorithm 2 --------------------------------
def _replay(rule: str, rounds: int, seed: int) -> None:
    """Run FedOpt on random replies; replay the paper's equations in numpy beside it."""
    lr, b1, b2, tau = 0.05, 0.8, 0.95, 1e-3
    make = {
        "adam": lambda: FedAdam(lr=lr, beta1=b1, beta2=b2, tau=tau),
        "yogi": lambda: FedYogi(lr=lr, beta1=b1, beta2=b2, tau=tau),
        "adagrad": lambda: FedAdagrad(lr=lr, beta1=b1, tau=tau),
        "avgm": lambda: FedAvgM(lr=lr, momentum=b1),
    }[rule]
    strategy = make()
    rng = np.random.default_rng(seed)
    x = Arrays(
        {
            "w": rng.normal(size=(2, 3)).astype(np.float32),
            "b": rng.normal(size=4),
            "count": np.array([7, 9], dtype=np.int64),
        }
    )
    ns = [3, 1, 6]
    # the replay: float64 moments per parameter, m_{-1} = 0 and v_{-1} = 0
    ref = {k: x[k].astype(np.float64) for k in ("w", "b")}
    m = {k: np.zeros_like(v) for k, v in ref.items()}
    v = {k: np.zeros_like(val) for k, val in ref.items()}
    for _ in range(rounds):
        ys = [
            Arrays(
                {
                    "w": (x["w"] + rng.normal(size=(2, 3))).astype(np.float32),
                    "b": x["b"] + rng.normal(scale=0.1, size=4),
                    "count": x["count"] + rng.integers(0, 5, size=2),
                }
            )
            for _ in ns
        ]
        new = _round(strategy, x, ys, ns)
        for k in ("w", "b"):
            mean = np.average(np.stack([y[k] for y in ys]).astype(np.float64), axis=0, weights=ns)
            delta = mean.astype(x[k].dtype).astype(np.float64) - ref[k]  # FedAvg returns dtype
            if rule == "avgm":
                m[k] = b1 * m[k] + delta
                ref[k] = ref[k] + lr * m[k]
            else:
                m[k] = b1 * m[k] + (1 - b1) * delta
                if rule == "adam":
                    v[k] = b2 * v[k] + (1 - b2) * delta**2
                elif rule == "yogi":
                    v[k] = v[k] - (1 - b2) * delta**2 * np.sign(v[k] - delta**2)
                else:
                    v[k] = v[k] + delta**2
                ref[k] = ref[k] + lr * m[k] / (np.sqrt(v[k]) + tau)
            ref[k] = ref[k].astype(x[k].dtype).astype(np.float64)
            np.testing.assert_allclose(new[k], ref[k], rtol=1e-6, atol=1e-7)
        counts = np.stack([y["count"] for y in ys]).astype(np.float64)
        expected_count = np.average(counts, axis=0, weights=ns).astype(np.int64)
        np.testing.assert_array_equal(new["count"], expected_count)  # not stepped
        assert new["w"].dtype == np.float32 and new["count"].dtype == np.int64
        x = new


@pytest.mark.parametrize("rule", ["adam", "yogi", "adagrad", "avgm"])
def test_matches_numpy_replay_of_the_paper(rule: str) -> None:
    _replay(rule, rounds=8, seed=11)


def test_zero_momentum_unit_lr_is_fedavg() -> None:
    rng = np.random.default_rng(2)
    x = Arrays({"w": rng.normal(size=5)})
    ys = [Arrays({"w": rng.normal(size=5)}) for _ in range(4)]
    ns = [1, 2, 3, 4]
    fedavgm = _round(FedAvgM(lr=1.0, momentum=0.0), x, ys, ns)
    fedavg = _round(FedAvg(), x, ys, ns)
    np.testing.assert_allclose(fedavgm["w"], fedavg["w"], rtol=1e-14, atol=1e-15)


# -- wrapping any base strategy ------------------------------------------------------------
class _MedianOfThree(Strategy):
    """A stand-in for a colleague's robust rule: coordinate-wise median, its own sampling."""

    needs_all_updates = True

    def __init__(self) -> None:
        self.calls = 0

    def initialize(self, rng: np.random.Generator) -> Arrays | None:
        return _scalar(0.0)

    def configure_train(
        self, round: int, arrays: Arrays, nodes: Sequence[str], rng: np.random.Generator
    ) -> list[Instruction]:
        return [Instruction(n, arrays, {"rule": "median"}) for n in sorted(nodes)[:3]]

    def aggregate_train(
        self, round: int, current: Arrays, replies: Iterable[TrainReply]
    ) -> tuple[Arrays, Metrics]:
        self.calls += 1
        ws = np.stack([r.arrays["w"] for r in list(replies)])
        return Arrays({"w": np.median(ws, axis=0)}), {"median_calls": self.calls}

    def configure_evaluate(
        self, round: int, arrays: Arrays, nodes: Sequence[str], rng: np.random.Generator
    ) -> list[Instruction]:
        return [Instruction(sorted(nodes)[0], arrays, {"eval": True})]

    def evaluate(self, round: int, arrays: Arrays) -> Metrics | None:
        return {"central": float(arrays["w"][0])}

    def state_dict(self) -> dict[str, Any]:
        return {"calls": self.calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.calls = int(state.get("calls", 0))


def test_wraps_any_strategy_through_its_public_interface() -> None:
    base = _MedianOfThree()
    strategy = FedAdam(base, lr=1.0, beta1=0.5, beta2=0.75, tau=1.0)
    rng = np.random.default_rng(0)
    assert strategy.needs_all_updates
    assert strategy.initialize(rng) is not None
    train = strategy.configure_train(1, _scalar(0.0), ["d", "c", "b", "a"], rng)
    assert [(i.node_id, i.config) for i in train] == [(n, {"rule": "median"}) for n in "abc"]
    assert strategy.configure_evaluate(1, _scalar(0.0), ["b", "a"], rng)[0].config == {"eval": True}
    assert strategy.evaluate(1, _scalar(3.0)) == {"central": 3.0}
    # x̄ is the median 2 (not the mean 34): Δ = 2, m = 1, v = 0.25*4 = 1, step 1 / (1 + 1)
    replies = [TrainReply(n, _scalar(w), 1) for n, w in [("a", 1.0), ("b", 2.0), ("c", 99.0)]]
    new, metrics = strategy.aggregate_train(1, _scalar(0.0), iter(replies))
    assert new["w"][0] == pytest.approx(0.5, rel=1e-14)
    assert metrics == {"median_calls": 1}
    settings = strategy.settings()
    assert settings["strategy"] == "FedAdam" and settings["base"] == "_MedianOfThree"
    assert settings["server_lr"] == 1.0 and settings["beta2"] == 0.75
    assert strategy.state_dict()["base"] == {"calls": 1}


def test_base_returning_a_different_model_is_refused() -> None:
    class Shrinks(_MedianOfThree):
        def aggregate_train(
            self, round: int, current: Arrays, replies: Iterable[TrainReply]
        ) -> tuple[Arrays, Metrics]:
            list(replies)
            return Arrays({"other": np.zeros(1)}), {}

    with pytest.raises(StrategyError, match="does not match the global model"):
        FedAdam(Shrinks()).aggregate_train(1, _scalar(0.0), iter([]))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: FedAdam(lr=0.0), "learning rate"),
        (lambda: FedYogi(lr=-1.0), "learning rate"),
        (lambda: FedAdam(lr=float("nan")), "learning rate"),
        (lambda: FedAdam(beta1=1.0), "beta1"),
        (lambda: FedAdagrad(beta1=-0.1), "beta1"),
        (lambda: FedYogi(beta2=1.5), "beta2"),
        (lambda: FedAdam(tau=0.0), "tau"),
        (lambda: FedAdagrad(tau=-1e-3), "tau"),
        (lambda: FedAdam(initial_v=-1.0), "initial_v"),
        (lambda: FedAvgM(momentum=1.0), "momentum"),
        (lambda: FedAvgM(lr=0.0), "learning rate"),
        (lambda: FedOpt(optimizer="adam"), "ServerOptimizer"),  # type: ignore[arg-type]
    ],
)
def test_bad_settings_are_refused(make: Callable[[], FedOpt], message: str) -> None:
    with pytest.raises(StrategyError, match=message):
        make()


# -- state: resume after a crash --------------------------------------------------------------
def test_state_dict_is_a_snapshot_and_is_checked() -> None:
    strategy = FedAdam(lr=0.1)
    x = _round(strategy, _scalar(0.0), [_scalar(1.0)], [1])
    state = strategy.state_dict()
    assert state["optimizer"]["steps"] == 1
    saved_m = state["optimizer"]["m"]["w"].copy()
    _round(strategy, x, [_scalar(3.0)], [1])
    np.testing.assert_array_equal(state["optimizer"]["m"]["w"], saved_m)  # not aliased

    with pytest.raises(StrategyError, match="no 'base' part"):
        FedAdam().load_state_dict({"optimizer": state["optimizer"]})
    with pytest.raises(StrategyError, match="must hold 'base' and 'optimizer'"):
        FedAdam().load_state_dict({"base": {}, "optimiser": {}})
    with pytest.raises(StrategyError, match="must hold 'base' and 'optimizer'"):
        FedAdam().load_state_dict({"base": {}})
    with pytest.raises(StrategyError, match="unknown keys"):
        FedAdam().load_state_dict({"base": {}, "optimizer": {"momentum": {}}})
    with pytest.raises(StrategyError, match="disagree"):
        FedAdam().load_state_dict({"base": {}, "optimizer": {"m": {"w": np.zeros(1)}, "v": {}}})
    resumed = FedAdam()
    resumed.load_state_dict(state)
    with pytest.raises(StrategyError, match="state is for parameters"):
        _round(resumed, Arrays({"w": np.zeros(2)}), [Arrays({"w": np.ones(2)})], [1])
    # an empty state resets the optimiser
    opt = ServerAdam()
    opt.load_state_dict(state["optimizer"])
    opt.load_state_dict({})
    assert opt.steps == 0 and not opt.m and not opt.v


# -- real simulations ----------------------------------------------------------------------------
TARGETS = np.array([[1.0, -2.0, 0.5], [3.0, 0.0, -1.0], [-1.0, 2.0, 2.0]])
EXAMPLES = [10, 30, 60]
LOCAL_LR, LOCAL_STEPS = 0.1, 5
#: a node's update is y = t + c (x - t): LOCAL_STEPS gradient steps on 1/2 ||w - t||^2
CONTRACTION = (1 - LOCAL_LR) ** LOCAL_STEPS
#: the minimiser of Σ n_i/2 ||w - t_i||^2
OPTIMUM = np.average(TARGETS, axis=0, weights=EXAMPLES)

target_app = ClientApp()


@target_app.train()
def _train(msg: Message, ctx: Context) -> Message:
    """Gradient steps towards this node's own target vector."""
    assert msg.content is not None and msg.content.model is not None
    i = int(ctx.node_config["partition-id"])
    w = msg.content.model["w"].copy()
    for _ in range(LOCAL_STEPS):
        w -= LOCAL_LR * (w - TARGETS[i])
    return msg.reply(arrays=Arrays({"w": w}), metrics={"num_examples": EXAMPLES[i]})


def _simulate(strategy: FedOpt, rounds: int) -> Arrays:
    server = ServerApp(lambda ctx: ServerConfig(strategy, num_rounds=rounds))
    return run_simulation(server, target_app, num_nodes=len(TARGETS)).arrays


def _fedavg(start: np.ndarray) -> FedAvg:
    return FedAvg(initial_arrays=Arrays({"w": start}), fraction_evaluate=0.0)


@pytest.mark.parametrize(
    "make",
    [
        lambda base: FedAdam(base, lr=0.1, beta2=0.999, tau=1e-8),
        lambda base: FedYogi(base, lr=0.1),
        lambda base: FedAdagrad(base, lr=0.3),
        lambda base: FedAvgM(base, lr=1.0, momentum=0.5),
    ],
    ids=["adam", "yogi", "adagrad", "avgm"],
)
def test_simulation_converges_to_the_known_optimum(make: Callable[[FedAvg], FedOpt]) -> None:
    start = np.zeros(3)
    strategy = make(_fedavg(start))
    final = _simulate(strategy, rounds=150)
    assert np.linalg.norm(final["w"] - OPTIMUM) < 1e-3 < np.linalg.norm(start - OPTIMUM)
    assert strategy.optimizer.steps == 150


def test_simulation_follows_the_algorithm_step_by_step() -> None:
    """Each round of a real run equals FedAdam's equations on the nodes' closed-form updates."""
    lr, b1, b2, tau = 0.2, 0.9, 0.999, 1e-8
    x = np.zeros(3)
    m, v = np.zeros(3), np.zeros(3)
    for _ in range(12):
        ys = TARGETS + CONTRACTION * (x - TARGETS)
        delta = np.average(ys, axis=0, weights=EXAMPLES) - x
        m = b1 * m + (1 - b1) * delta
        v = b2 * v + (1 - b2) * delta**2
        x = x + lr * m / (np.sqrt(v) + tau)
    final = _simulate(FedAdam(_fedavg(np.zeros(3)), lr=lr, beta1=b1, beta2=b2, tau=tau), 12)
    np.testing.assert_allclose(final["w"], x, rtol=1e-10)


@pytest.mark.parametrize("make", [FedAdam, FedYogi, FedAdagrad, FedAvgM])
def test_resumed_server_continues_identically(make: Callable[..., FedOpt]) -> None:
    """3 rounds, save the state, a new strategy loads it and runs 3 more == 6 uninterrupted."""
    start = np.array([0.5, -0.5, 0.0])
    uninterrupted = _simulate(make(_fedavg(start), lr=0.1), rounds=6)

    first = make(_fedavg(start), lr=0.1)
    halfway = _simulate(first, rounds=3)
    state = first.state_dict()
    del first  # the crash: only the model file and the state survive

    second = make(_fedavg(halfway["w"].copy()), lr=0.1)
    second.load_state_dict(state)
    resumed = _simulate(second, rounds=3)
    assert resumed.equals(uninterrupted)

    fresh = _simulate(make(_fedavg(halfway["w"].copy()), lr=0.1), rounds=3)
    assert not fresh.equals(uninterrupted)  # the state is what made the difference
