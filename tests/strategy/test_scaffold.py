"""SCAFFOLD (option II): control variates against hand computations on a quadratic,
FLamby's formulation replayed in numpy, node-state persistence, resume, errors."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pytest

from consortium.client import ClientApp
from consortium.client import scaffold as client_scaffold
from consortium.client.scaffold import ScaffoldUpdate, control_variate, scaffold_train
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import RoundFailed, StrategyError
from consortium.core.message import Content, Message
from consortium.ml import logistic, mlp
from consortium.server import ServerApp, ServerConfig
from consortium.simulation import run_simulation
from consortium.strategy import TrainReply
from consortium.strategy import scaffold as server_scaffold
from consortium.strategy.scaffold import CONTROL_RECORD, DELTA_RECORD, Scaffold

# f_i(y) = a_i / 2 * (y - b_i)^2: gradient a_i * (y - b_i)
A = {"n0": 1.0, "n1": 2.0, "n2": 0.5, "n3": 4.0}
B = {"n0": 1.0, "n1": -1.0, "n2": 3.0, "n3": 0.0}


def _quadratic_trainer(node: str, lr: float, steps: int) -> client_scaffold.LocalTrainFn:
    """K steps of gradient descent on f_i with SCAFFOLD's correction added to the gradient."""

    def train(x: Arrays, correction: Arrays) -> ScaffoldUpdate:
        y = np.array(x["w"], dtype=np.float64)
        for _ in range(steps):
            y = y - lr * (A[node] * (y - B[node]) + correction["w"])
        return ScaffoldUpdate(
            Arrays({"w": y}), num_examples=10 * (1 + int(node[1])), steps=steps, lr=lr
        )

    return train


def _round(
    strategy: Scaffold,
    rnd: int,
    x: Arrays,
    contexts: dict[str, Context],
    *,
    lr: float = 0.1,
    steps: int = 2,
    replying: Sequence[str] | None = None,
) -> Arrays:
    """One round: instructions -> messages -> the node helper -> replies -> aggregate."""
    instructions = strategy.configure_train(rnd, x, sorted(contexts), np.random.default_rng(rnd))
    replies = []
    for instr in instructions:
        if replying is not None and instr.node_id not in replying:
            continue
        msg = Message.create(
            run_id="t",
            dst=instr.node_id,
            round=rnd,
            kind="train",
            content=Content(arrays={"model": instr.arrays, **instr.records}),
        )
        reply = scaffold_train(
            msg, contexts[instr.node_id], _quadratic_trainer(instr.node_id, lr, steps)
        )
        assert reply.content is not None and reply.content.model is not None
        records = {k: v for k, v in reply.content.arrays.items() if k != "model"}
        n = int(reply.content.metric_values["num_examples"])
        replies.append(TrainReply(instr.node_id, reply.content.model, n, {}, records))
    return strategy.aggregate_train(rnd, x, iter(replies))[0]


def _contexts(nodes: Sequence[str]) -> dict[str, Context]:
    return {n: Context(node_id=n) for n in nodes}


def _w(arrays: Arrays | None) -> float:
    assert arrays is not None
    return float(arrays["w"][0])


def test_record_names_agree_between_server_and_node() -> None:
    assert client_scaffold.CONTROL_RECORD == server_scaffold.CONTROL_RECORD
    assert client_scaffold.DELTA_RECORD == server_scaffold.DELTA_RECORD


def test_two_rounds_match_the_option_ii_equations_by_hand() -> None:
    """Two nodes, x0 = 0, eta_l = 0.1, K = 2, eta_g = 1, uniform weights.

    Round 1 (c = c_i = 0): node n0 (a=1, b=1): y = 0.1, then 0.19;
    c_0+ = (0 - 0.19) / 0.2 = -0.95. Node n1 (a=2, b=-1): y = -0.2, then -0.36;
    c_1+ = 0.36 / 0.2 = 1.8. Server: x = (0.19 - 0.36) / 2 = -0.085,
    c = (-0.95 + 1.8) / 2 = 0.425.
    Round 2, node n0: correction c - c_0 = 1.375; y = -0.085 - 0.1 (-1.085 + 1.375)
    = -0.114, then -0.114 - 0.1 (-1.114 + 1.375) = -0.1401;
    c_0+ = -0.95 - 0.425 + (-0.085 + 0.1401) / 0.2 = -1.0995.
    """
    ctx = _contexts(["n0", "n1"])
    strategy = Scaffold(weighting="uniform")
    x1 = _round(strategy, 1, Arrays({"w": np.zeros(1)}), ctx)
    assert _w(control_variate(ctx["n0"])) == pytest.approx(-0.95)
    assert _w(control_variate(ctx["n1"])) == pytest.approx(1.8)
    assert _w(x1) == pytest.approx(-0.085)
    assert strategy.control is not None
    assert _w(strategy.control) == pytest.approx(0.425)

    _round(strategy, 2, x1, ctx)
    assert _w(control_variate(ctx["n0"])) == pytest.approx(-1.0995)
    # n1 in round 2, by the same equations in numpy
    c, c1, y = 0.425, 1.8, -0.085
    for _ in range(2):
        y = y - 0.1 * (2.0 * (y + 1.0) + c - c1)
    assert _w(control_variate(ctx["n1"])) == pytest.approx(c1 - c + (-0.085 - y) / 0.2)


def test_reply_carries_the_model_and_delta_c() -> None:
    ctx = Context(node_id="n0")
    x = Arrays({"w": np.zeros(1)})
    msg = Message.create(
        run_id="t",
        dst="n0",
        round=1,
        kind="train",
        content=Content(arrays={"model": x, CONTROL_RECORD: Arrays({"w": np.array([0.5])})}),
    )
    reply = scaffold_train(msg, ctx, _quadratic_trainer("n0", 0.1, 1))
    assert reply.content is not None
    # correction = 0.5: y = 0 - 0.1 * (1 * (0 - 1) + 0.5) = 0.05
    assert _w(reply.content.model) == pytest.approx(0.05)
    # delta_c = -c + (x - y) / (K eta_l) = -0.5 - 0.5 = -1.0
    assert _w(reply.content.arrays[DELTA_RECORD]) == pytest.approx(-1.0)
    assert reply.content.metric_values["num_examples"] == 10


def test_partial_participation_scales_c_by_s_over_n() -> None:
    """Two of four nodes reply: c <- c + (2/4) * mean(delta_c)."""
    ctx = _contexts(["n0", "n1", "n2", "n3"])
    strategy = Scaffold(weighting="uniform")
    x = Arrays({"w": np.array([0.0])})
    _round(strategy, 1, x, ctx, steps=1, replying=["n0", "n3"])
    # K = 1 from x = 0: y = 0.1 * a * b, delta_c = (x - y) / 0.1 = -a * b
    expected = 0.5 * np.mean([-A["n0"] * B["n0"], -A["n3"] * B["n3"]])
    assert strategy.control is not None
    assert _w(strategy.control) == pytest.approx(expected)
    assert control_variate(ctx["n1"]) is None  # a node that did not reply keeps no c_i


def test_num_nodes_overrides_the_available_count() -> None:
    ctx = _contexts(["n0", "n1"])
    strategy = Scaffold(weighting="uniform", num_nodes=8)
    _round(strategy, 1, Arrays({"w": np.zeros(1)}), ctx)
    assert strategy.control is not None
    assert _w(strategy.control) == pytest.approx(2 / 8 * (-0.95 + 1.8) / 2)


def _flamby_replay(
    x0: float, nodes: Sequence[str], rounds: int, *, lr: float, steps: int, server_lr: float
) -> float:
    """FLamby's Scaffold.perform_round for full participation, written from its equations:
    C_i += (x - y'_i) / (eta_g eta_l K); local steps on g - C_i;
    y'_i = eta_g y_i + (1 - eta_g) x; x += sum_i n_i (y'_i - x) / sum_i n_i."""
    n = np.array([10.0 * (1 + int(node[1])) for node in nodes])
    corr = np.zeros(len(nodes))
    prev = np.full(len(nodes), x0)
    x = x0
    for _ in range(rounds):
        corr = corr + (x - prev) / (server_lr * lr * steps)
        ys = []
        for i, node in enumerate(nodes):
            y = x
            for _ in range(steps):
                y = y - lr * (A[node] * (y - B[node]) - corr[i])
            ys.append(y)
        prev = server_lr * np.array(ys) + (1 - server_lr) * x
        x = x + float(np.sum(n * (prev - x)) / n.sum())
    return x


@pytest.mark.parametrize("server_lr", [1.0, 0.5])
def test_example_weighting_reproduces_flamby_scaffold(server_lr: float) -> None:
    nodes = ["n0", "n1", "n2", "n3"]
    ctx = _contexts(nodes)
    strategy = Scaffold(server_lr=server_lr)  # weighted by examples, as FLamby
    x = Arrays({"w": np.array([0.3])})
    for rnd in range(1, 6):
        x = _round(strategy, rnd, x, ctx, lr=0.05, steps=3)
    expected = _flamby_replay(0.3, nodes, 5, lr=0.05, steps=3, server_lr=server_lr)
    assert _w(x) == pytest.approx(expected, rel=1e-12)


def test_resume_from_state_dict_continues_identically() -> None:
    nodes = ["n0", "n1", "n2"]
    ctx_a, ctx_b = _contexts(nodes), _contexts(nodes)
    a, b = Scaffold(server_lr=0.7), Scaffold(server_lr=0.7)
    assert a.state_dict() == {}
    x = Arrays({"w": np.array([0.2])})
    x_a = _round(a, 1, x, ctx_a)
    _round(b, 1, x, ctx_b)
    saved = a.state_dict()
    resumed = Scaffold(server_lr=0.7)
    resumed.load_state_dict(saved)
    saved["control"]["w"][0] = 123.0  # the snapshot is a copy, not a view
    assert a.control is not None and resumed.control is not None
    assert _w(resumed.control) == _w(a.control) != 123.0
    x_resumed = _round(resumed, 2, x_a, ctx_b)
    x_continued = _round(a, 2, x_a, ctx_a)
    assert x_resumed.equals(x_continued)
    with pytest.raises(StrategyError, match="unknown state"):
        resumed.load_state_dict({"c": 1})


def test_node_state_persists_across_rounds_in_simulation() -> None:
    """A real run: c_i lives in each node's state between rounds and matches the
    hand-driven rounds above (the processes backend, which carries state as bytes, is
    checked on the heart-disease app in tests/examples)."""
    result = run_simulation(
        ServerApp(
            lambda _: ServerConfig(
                Scaffold(initial_arrays=Arrays({"w": np.array([0.0, 1.0])}), fraction_evaluate=0.0),
                num_rounds=4,
            )
        ),
        quadratic_app,
        node_ids=["n0", "n1", "n2"],
    )
    ctx = _contexts(["n0", "n1", "n2"])
    strategy = Scaffold()
    x = Arrays({"w": np.array([0.0, 1.0])})
    for rnd in range(1, 5):
        x = _round(strategy, rnd, x, ctx)
    assert result.arrays.equals(x)
    # had c_i been lost between rounds, the run would differ from the hand-driven one
    forgetful = Scaffold()
    y = Arrays({"w": np.array([0.0, 1.0])})
    for rnd in range(1, 5):
        y = _round(forgetful, rnd, y, _contexts(["n0", "n1", "n2"]))
    assert not result.arrays.equals(y)


quadratic_app = ClientApp()


@quadratic_app.train()
def _quadratic_handler(msg: Message, context: Context) -> Message:
    return scaffold_train(msg, context, _quadratic_trainer(context.node_id, 0.1, 2))


def test_missing_delta_record_leaves_the_reply_out(caplog: pytest.LogCaptureFixture) -> None:
    strategy = Scaffold(weighting="uniform")
    x = Arrays({"w": np.zeros(1)})
    strategy.configure_train(1, x, ["a", "b"], np.random.default_rng(0))
    good = TrainReply(
        "a", Arrays({"w": np.array([1.0])}), 1, {}, {DELTA_RECORD: Arrays({"w": [2.0]})}
    )
    bad = TrainReply("b", Arrays({"w": np.array([9.0])}), 1, {})
    with caplog.at_level(logging.WARNING, logger="consortium.strategy"):
        new, _ = strategy.aggregate_train(1, x, iter([good, bad]))
    assert _w(new) == 1.0
    assert strategy.control is not None and _w(strategy.control) == pytest.approx(0.5 * 2.0)
    assert "node b" in caplog.text
    with pytest.raises(RoundFailed, match="no SCAFFOLD update"):
        strategy.aggregate_train(2, x, iter([bad]))


def test_node_helper_refuses_bad_tasks_and_keeps_c_i_on_failure() -> None:
    ctx = Context(node_id="n0")
    x = Arrays({"w": np.zeros(1)})
    plain = Message.create(run_id="t", dst="n0", round=1, kind="train", content=Content.of(x))
    with pytest.raises(StrategyError, match="not running SCAFFOLD"):
        scaffold_train(plain, ctx, _quadratic_trainer("n0", 0.1, 1))
    task = Message.create(
        run_id="t",
        dst="n0",
        round=1,
        kind="train",
        content=Content(arrays={"model": x, CONTROL_RECORD: Arrays({"w": np.zeros(1)})}),
    )
    scaffold_train(task, ctx, _quadratic_trainer("n0", 0.1, 1))
    before = control_variate(ctx)

    def no_steps(x: Arrays, correction: Arrays) -> ScaffoldUpdate:
        return ScaffoldUpdate(x, 1, steps=0, lr=0.1)

    with pytest.raises(StrategyError, match="K >= 1"):
        scaffold_train(task, ctx, no_steps)
    assert control_variate(ctx) is before
    wrong = Message.create(
        run_id="t",
        dst="n0",
        round=1,
        kind="train",
        content=Content(arrays={"model": x, CONTROL_RECORD: Arrays({"v": np.zeros(2)})}),
    )
    with pytest.raises(StrategyError, match="does not match"):
        scaffold_train(wrong, ctx, _quadratic_trainer("n0", 0.1, 1))


def test_invalid_settings_named() -> None:
    with pytest.raises(StrategyError, match="server_lr"):
        Scaffold(server_lr=0.0)
    with pytest.raises(StrategyError, match="num_nodes"):
        Scaffold(num_nodes=0)
    s = Scaffold(server_lr=0.5)
    assert s.settings()["server_lr"] == 0.5 and s.settings()["strategy"] == "Scaffold"
    with pytest.raises(StrategyError, match="before configure_train"):
        s.aggregate_train(1, Arrays(), iter([]))


# -- the trainers' gradient correction ---------------------------------------------------
def test_logistic_correction_is_added_to_every_gradient() -> None:
    """One full-batch SGD step: theta - lr * (grad + correction), grad from the BCE formula."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 3)), (rng.random(20) > 0.5).astype(float)
    params = logistic.init_params(3, np.random.default_rng(1))
    corr = Arrays({"weight": np.array([[0.3, -0.2, 0.1]]), "bias": np.array([0.05])})
    out = logistic.train(
        params,
        x,
        y,
        rng=np.random.default_rng(2),
        lr=0.5,
        batch_size=20,
        steps=1,
        correction=corr,
    )
    theta = np.concatenate([params["weight"][0], params["bias"]])
    xa = np.hstack([x, np.ones((20, 1))])
    grad = xa.T @ (1 / (1 + np.exp(-(xa @ theta))) - y) / 20
    expected = theta - 0.5 * (grad + np.array([0.3, -0.2, 0.1, 0.05]))
    got = np.concatenate([out.params["weight"][0], out.params["bias"]])
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    with pytest.raises(ValueError, match="correction"):
        logistic.train(
            params,
            x,
            y,
            rng=rng,
            lr=0.5,
            batch_size=20,
            steps=1,
            correction=Arrays({"weight": np.zeros((1, 2)), "bias": np.zeros(1)}),
        )


def test_mlp_correction_shifts_one_sgd_step_by_lr_times_correction() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 4)), rng.integers(0, 3, size=12)
    params = mlp.init_params([4, 5, 3], np.random.default_rng(1))
    corr = Arrays((k, np.random.default_rng(3).normal(size=v.shape)) for k, v in params.items())

    def step(correction: Arrays | None) -> Arrays:
        return mlp.train(
            params,
            x,
            y,
            rng=np.random.default_rng(2),
            lr=0.1,
            batch_size=12,
            steps=1,
            correction=correction,
        ).params

    plain, shifted = step(None), step(corr)
    for name in params:
        np.testing.assert_allclose(shifted[name], plain[name] - 0.1 * corr[name], atol=1e-13)
    with pytest.raises(ValueError, match="named like"):
        step(Arrays(reversed(list(corr.items()))))
