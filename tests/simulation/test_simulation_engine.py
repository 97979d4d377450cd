"""Simulation engine: determinism across workers and backends, state, deadlines."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from consortium.client import ClientApp
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import ConfigError
from consortium.core.history import Outcome
from consortium.core.message import Message
from consortium.server import ServerApp, ServerConfig
from consortium.simulation import run_simulation
from consortium.strategy import FedAvg

APP_DIR = str(Path(__file__).parent / "toyapp")
REF = "toy_app:client_app"


def _toy():  # type: ignore[no-untyped-def]
    import sys

    sys.path.insert(0, APP_DIR)
    import toy_app

    return toy_app


def test_same_seed_bit_identical_for_1_and_4_threads() -> None:
    toy = _toy()
    runs = [
        run_simulation(toy.server_app, toy.client_app, num_nodes=23, seed=7, workers=w)
        for w in (1, 4, 1)
    ]
    assert runs[0].arrays.equals(runs[1].arrays)
    assert runs[0].arrays.equals(runs[2].arrays)
    other = run_simulation(toy.server_app, toy.client_app, num_nodes=23, seed=8)
    assert not runs[0].arrays.equals(other.arrays)


def test_processes_backend_matches_threads() -> None:
    toy = _toy()
    threads = run_simulation(toy.server_app, toy.client_app, num_nodes=6, seed=3)
    procs = run_simulation(
        toy.server_app,
        REF,
        num_nodes=6,
        seed=3,
        backend="processes",
        workers=2,
        app_path=[APP_DIR],
    )
    assert threads.arrays.equals(procs.arrays)
    # node state travelled with the node between rounds and worker processes
    last = procs.history.rounds[-1].nodes
    assert {n.metrics["rounds_seen"] for n in last} == {3}


def test_node_state_persists_across_rounds() -> None:
    toy = _toy()
    result = run_simulation(toy.server_app, toy.client_app, num_nodes=3, workers=2)
    seen = [[n.metrics["rounds_seen"] for n in r.nodes] for r in result.history.rounds]
    assert seen == [[1, 1, 1], [2, 2, 2], [3, 3, 3]]


def test_processes_backend_needs_a_reference() -> None:
    toy = _toy()
    with pytest.raises(ConfigError, match="module:attribute"):
        run_simulation(toy.server_app, toy.client_app, num_nodes=2, backend="processes")


def test_explicit_node_ids_and_configs() -> None:
    app = ClientApp()

    @app.train()
    def train(msg: Message, ctx: Context) -> Message:
        assert msg.content is not None
        value = float(ctx.node_config["value"])
        return msg.reply(arrays=Arrays({"w": np.full(2, value)}), metrics={"num_examples": 1})

    srv = ServerApp(
        lambda ctx: ServerConfig(
            FedAvg(initial_arrays=Arrays({"w": np.zeros(2)}), fraction_evaluate=0.0), num_rounds=1
        )
    )
    values = {"cleveland": 1.0, "va": 3.0}
    result = run_simulation(
        srv, app, node_ids=list(values), node_config=lambda i, n: {"value": values[n]}
    )
    np.testing.assert_array_equal(result.arrays["w"], [2.0, 2.0])


@pytest.mark.parametrize("workers", [1, 3])
def test_round_deadline_drops_slow_nodes(workers: int) -> None:
    app = ClientApp()

    @app.train()
    def train(msg: Message, ctx: Context) -> Message:
        if ctx.node_id == "slow":
            time.sleep(1.5)
        return msg.reply(arrays=msg.content.model, metrics={"num_examples": 1})  # type: ignore[union-attr]

    srv = ServerApp(
        lambda ctx: ServerConfig(
            FedAvg(initial_arrays=Arrays({"w": np.zeros(2)}), fraction_evaluate=0.0),
            num_rounds=1,
            round_timeout=0.5,
        )
    )
    started = time.perf_counter()
    result = run_simulation(srv, app, node_ids=["a", "b", "slow"], workers=workers)
    outcomes = {n.node_id: n.outcome for n in result.history.rounds[0].nodes}
    assert outcomes == {"a": Outcome.OK, "b": Outcome.OK, "slow": Outcome.TIMEOUT}
    assert time.perf_counter() - started < 5


def test_many_nodes_are_built_lazily() -> None:
    """10,000 stateless nodes: no per-node state is kept between rounds."""
    built: list[str] = []
    app = ClientApp()

    @app.train()
    def train(msg: Message, ctx: Context) -> Message:
        built.append(ctx.node_id)
        return msg.reply(arrays=msg.content.model, metrics={"num_examples": 1})  # type: ignore[union-attr]

    srv = ServerApp(
        lambda ctx: ServerConfig(
            FedAvg(initial_arrays=Arrays({"w": np.zeros(3)}), fraction_evaluate=0.0), num_rounds=2
        )
    )
    from consortium.simulation.grid import SimulationGrid

    result = run_simulation(srv, app, num_nodes=10_000)
    assert len(built) == 20_000
    assert len(result.history.rounds[-1].nodes) == 10_000
    grid = SimulationGrid(app, ["a"])
    assert grid._states == {}
