"""The asynchronous loop on the simulated clock: event order, staleness, validation, timeouts."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from consortium.client import ClientApp
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import ConfigError, RoundFailed
from consortium.core.history import Outcome
from consortium.core.message import TRAIN, Content, Message
from consortium.server import AsyncServerConfig
from consortium.simulation.async_grid import (
    AsyncSimulationGrid,
    lognormal_speeds,
    run_async_simulation,
)
from consortium.strategy.fedbuff import FedBuff

INIT = Arrays({"w": np.zeros(2)})
SHIFT = {"a": 1.0, "b": 10.0, "c": 100.0, "slow": 1000.0}


def shift_client(behaviour: dict[str, str] | None = None) -> ClientApp:
    """Node n returns the model it got plus SHIFT[n] (so its delta is SHIFT[n])."""
    behaviour = behaviour or {}
    app = ClientApp()

    @app.train()
    def train(msg: Message, ctx: Context) -> Message:
        assert msg.content is not None and msg.content.model is not None
        what = behaviour.get(ctx.node_id, "ok")
        if what == "raise":
            raise RuntimeError(f"out of memory on {ctx.node_id}")
        y = msg.content.model["w"] + SHIFT[ctx.node_id]
        if what == "nan":
            y = y.copy()
            y[0] = np.nan
        elif what == "shape":
            y = np.zeros(3)
        return msg.reply(arrays=Arrays({"w": y}), metrics={"num_examples": 1})

    @app.query()
    def query(msg: Message, ctx: Context) -> Message:
        return msg.reply(arrays=Arrays({"w": np.full(2, 5.0)}))

    return app


def fedbuff_run(durations: dict[str, float], steps: int, **kwargs: object):  # type: ignore[no-untyped-def]
    buffer_size = int(kwargs.pop("buffer_size", 2))  # type: ignore[call-overload]
    behaviour = kwargs.pop("behaviour", None)
    config = AsyncServerConfig(
        FedBuff(buffer_size=buffer_size, concurrency=len(durations), initial_arrays=INIT),
        num_steps=steps,
        **kwargs,  # type: ignore[arg-type]
    )
    return run_async_simulation(
        config,
        shift_client(behaviour),  # type: ignore[arg-type]
        node_ids=list(durations),
        durations=durations,
    )


def test_hand_traced_fedbuff_run_with_staleness() -> None:
    # durations a=1, b=2.5, c=4.2, K=2, all three start from version 0 at t=0:
    # t=1 a(τ0); t=2 a(τ0) -> v1 = 1;  t=2.5 b(v0, τ1); t=3 a(τ0) -> v2 = v1 + (10/√2 + 1)/2;
    # t=4 a(τ0); t=4.2 c(v0, τ2) -> v3 = v2 + (1 + 100/√3)/2
    result = fedbuff_run({"a": 1.0, "b": 2.5, "c": 4.2}, steps=3)
    expected = 1.0 + (10 / math.sqrt(2) + 1) / 2 + (1 + 100 / math.sqrt(3)) / 2
    np.testing.assert_allclose(result.arrays["w"], np.full(2, expected))
    rounds = result.history.rounds
    assert [r.round for r in rounds] == [1, 2, 3]
    assert [r.train_metrics["clock"] for r in rounds] == pytest.approx([2.0, 3.0, 4.2])
    assert [r.train_metrics["staleness_max"] for r in rounds] == [0, 1, 2]
    assert [r.seconds for r in rounds] == pytest.approx([2.0, 1.0, 1.2])
    assert [[n.node_id for n in r.nodes] for r in rounds] == [["a", "a"], ["b", "a"], ["a", "c"]]
    assert rounds[2].nodes[1].seconds == pytest.approx(4.2)


def test_replies_are_validated_like_the_synchronous_loop(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="consortium")
    behaviour = {"b": "nan", "c": "raise"}
    result = fedbuff_run(
        {"a": 1.0, "b": 1.5, "c": 1.7}, steps=2, buffer_size=1, behaviour=behaviour
    )
    np.testing.assert_allclose(result.arrays["w"], np.full(2, 2.0))  # only a's two deltas
    second = {n.node_id: n for n in result.history.rounds[1].nodes}
    assert second["b"].outcome is Outcome.REJECTED and "NaN/inf" in second["b"].reason
    assert second["c"].outcome is Outcome.FAILED and "out of memory on c" in second["c"].reason
    assert "RuntimeError" in second["c"].traceback
    assert second["a"].outcome is Outcome.OK
    assert any("out of memory on c" in r.getMessage() for r in caplog.records)

    shaped = fedbuff_run({"a": 1.0, "b": 0.5}, steps=1, buffer_size=1, behaviour={"b": "shape"})
    bad = shaped.history.rounds[0].nodes[0]
    assert bad.node_id == "b" and bad.outcome is Outcome.REJECTED
    assert "'w' should be float64[2], got float64[3]" in bad.reason


def test_timed_out_task_frees_its_slot_and_its_late_reply_is_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="consortium")
    # "slow" needs 10 s; the timeout is 3 s, so its tasks time out at t = 3, 6, 9, 12,
    # and its first reply (t = 10) arrives after its task was given up.
    result = fedbuff_run({"a": 1.0, "slow": 10.0}, steps=12, buffer_size=1, task_timeout=3.0)
    np.testing.assert_allclose(result.arrays["w"], np.full(2, 12.0))  # no 1000 folded in
    timeouts = [
        r.round for r in result.history.rounds for n in r.nodes if n.outcome is Outcome.TIMEOUT
    ]
    assert timeouts == [3, 6, 9, 12]
    assert any("late or unexpected reply from slow" in r.getMessage() for r in caplog.records)


def test_too_many_failures_stop_the_run_clearly() -> None:
    with pytest.raises(RoundFailed, match=r"step 1: 4 tasks failed.*out of memory on a"):
        fedbuff_run(
            {"a": 1.0, "b": 1.0},
            steps=2,
            behaviour={"a": "raise", "b": "raise"},
            max_failures_per_step=4,
        )


def test_stop_conditions_and_initial_parameters_from_a_node() -> None:
    by_clock = fedbuff_run({"a": 1.0, "b": 3.0}, steps=100, buffer_size=1, max_clock=5.5)
    assert by_clock.history.rounds[-1].train_metrics["clock"] <= 5.5
    assert len(by_clock.history.rounds) == 6  # a at 1..5, b at 3

    by_fn = fedbuff_run({"a": 1.0}, steps=100, buffer_size=1, stop_when=lambda r: r.round == 4)
    assert len(by_fn.history.rounds) == 4

    config = AsyncServerConfig(FedBuff(buffer_size=1, concurrency=1), num_steps=1)
    queried = run_async_simulation(config, shift_client(), node_ids=["a"], durations={"a": 1.0})
    np.testing.assert_allclose(queried.arrays["w"], [6.0, 6.0])  # 5 from the node, then +1


def noisy_client() -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, ctx: Context) -> Message:
        assert msg.content is not None and msg.content.model is not None
        rng = ctx.rng(msg.metadata.round)
        w = msg.content.model["w"] - 0.1 * rng.normal(size=2)
        return msg.reply(arrays=Arrays({"w": w}), metrics={"num_examples": 3})

    return app


def test_same_seed_same_model_for_any_number_of_workers() -> None:
    nodes = [str(i) for i in range(7)]
    speeds = lognormal_speeds(nodes, sigma=1.0, seed=3)

    def run(workers: int, seed: int) -> Arrays:
        config = AsyncServerConfig(
            FedBuff(buffer_size=3, concurrency=4, initial_arrays=INIT), num_steps=6
        )
        result = run_async_simulation(
            config, noisy_client(), node_ids=nodes, durations=speeds, seed=seed, workers=workers
        )
        return result.arrays

    first = run(1, 0)
    assert first.equals(run(2, 0))
    assert not first.equals(run(1, 1))


def test_lognormal_speeds_are_per_node_and_seeded() -> None:
    a = lognormal_speeds(["x", "y", "z"], sigma=1.0, seed=5)
    b = lognormal_speeds(["z", "x"], sigma=1.0, seed=5)
    assert a["x"] == b["x"] and a["z"] == b["z"]
    assert lognormal_speeds(["x"], sigma=0.0, median=2.0) == {"x": 2.0}
    with pytest.raises(ConfigError, match="sigma"):
        lognormal_speeds(["x"], sigma=-1.0)


def _task(node: str) -> Message:
    return Message.create(run_id="r", dst=node, round=1, kind=TRAIN, content=Content.of(INIT, {}))


def test_simulated_grid_orders_by_completion_and_nodes_work_serially() -> None:
    grid = AsyncSimulationGrid(shift_client(), ["a", "b"], durations={"a": 3.0, "b": 1.0})
    first_a, b, second_a = _task("a"), _task("b"), _task("a")
    for m in (first_a, b, second_a):
        grid.push([m])
    assert grid.pull(0.5) is None and grid.now() == 0.5  # nothing finishes by 0.5
    got = [grid.pull(None) for _ in range(3)]
    # b at 1; a's first task at 3; its second waits for the node: 3 + 3 = 6
    assert [g.metadata.reply_to for g in got if g] == [
        b.metadata.message_id,
        first_a.metadata.message_id,
        second_a.metadata.message_id,
    ]
    assert grid.now() == 6.0
    assert grid.pull(None) is None and grid.now() == 6.0  # nothing in flight
    unknown = _task("zz")
    grid.push([unknown])
    reply = grid.pull(None)
    assert reply is not None and reply.error is not None and reply.error.code == "unknown-node"
    grid.close()
    with pytest.raises(ConfigError, match="no task time for nodes"):
        AsyncSimulationGrid(shift_client(), ["a", "b"], durations={"a": 1.0})


def test_server_fn_gets_the_run_config_and_must_return_an_async_config() -> None:
    def server_fn(ctx: Context) -> AsyncServerConfig:
        steps = int(ctx.run_config["steps"])  # type: ignore[arg-type]
        return AsyncServerConfig(
            FedBuff(buffer_size=1, concurrency=1, initial_arrays=INIT), num_steps=steps
        )

    result = run_async_simulation(
        server_fn, shift_client(), node_ids=["a"], durations={"a": 1.0}, run_config={"steps": 3}
    )
    np.testing.assert_allclose(result.arrays["w"], [3.0, 3.0])
    with pytest.raises(ConfigError, match="must return a ServerConfig or an AsyncServerConfig"):
        run_async_simulation(
            lambda ctx: object(),  # type: ignore[arg-type, return-value]
            shift_client(),
            node_ids=["a"],
            durations={"a": 1.0},
        )
