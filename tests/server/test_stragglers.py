"""Stragglers: with round_timeout, strategies aggregate exactly the replies that arrived.

Slow nodes really sleep, in the threads backend with several workers, so the
fast nodes' replies are ready while the slow one still runs.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from consortium.client import ClientApp
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import RoundFailed
from consortium.core.history import Outcome
from consortium.core.message import Message
from consortium.server import ServerApp, ServerConfig, run_server_app
from consortium.simulation import run_simulation
from consortium.simulation.async_grid import AsyncSimulationGrid
from consortium.strategy import FedAvg, Strategy
from consortium.strategy.robust import RobustFedAvg, TrimmedMean

INIT = Arrays({"w": np.zeros(3)})
SLEEP = 0.6  # a straggler's delay; the round timeout is well below it
TIMEOUT = 0.25


def sleepy_client(slow: set[str], sleep: float = SLEEP) -> ClientApp:
    """Node k returns w + value(k) with num_examples = k + 1; nodes in ``slow`` sleep first."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, ctx: Context) -> Message:
        assert msg.content is not None and msg.content.model is not None
        if ctx.node_id in slow:
            time.sleep(sleep)
        k = int(ctx.node_id)
        w = msg.content.model["w"] + value(k)
        return msg.reply(arrays=Arrays({"w": w}), metrics={"num_examples": k + 1})

    return app


def value(k: int) -> np.ndarray:
    return np.array([k, k * k, 10.0 - k], dtype=np.float64)


def run(strategy: Strategy, slow: set[str], nodes: int = 4, **config: object):  # type: ignore[no-untyped-def]
    srv = ServerApp(
        lambda ctx: ServerConfig(
            strategy,
            num_rounds=int(config.pop("rounds", 1)),  # type: ignore[call-overload]
            round_timeout=TIMEOUT,
            **config,  # type: ignore[arg-type]
        )
    )
    return run_simulation(srv, sleepy_client(slow), num_nodes=nodes, workers=nodes)


def on_time(result, nodes: int = 4) -> list[int]:  # type: ignore[no-untyped-def]
    ok = [int(n.node_id) for n in result.history.rounds[0].nodes if n.outcome is Outcome.OK]
    return sorted(ok)


@pytest.mark.parametrize("slow", [{"0"}, {"2"}, {"3"}])
def test_fedavg_weights_exactly_the_on_time_nodes(slow: set[str]) -> None:
    """Wherever the straggler sits in the send order, the others are averaged by examples."""
    result = run(FedAvg(initial_arrays=INIT, fraction_evaluate=0.0), slow)
    arrived = [k for k in range(4) if str(k) not in slow]
    assert on_time(result) == arrived
    expected = np.average([value(k) for k in arrived], axis=0, weights=[k + 1 for k in arrived])
    np.testing.assert_allclose(result.arrays["w"], expected)
    late = [n for n in result.history.rounds[0].nodes if n.outcome is Outcome.TIMEOUT]
    assert [n.node_id for n in late] == sorted(slow)


def test_uniform_fedavg_divides_by_the_number_that_arrived() -> None:
    result = run(FedAvg(initial_arrays=INIT, fraction_evaluate=0.0, weighting="uniform"), {"1"})
    np.testing.assert_allclose(result.arrays["w"], (value(0) + value(2) + value(3)) / 3)


def test_trimmed_mean_trims_by_the_count_that_arrived() -> None:
    """beta = 0.2 trims one value per side of 5 replies but none of 4 (floor(0.8) = 0)."""
    rule = TrimmedMean(beta=0.2)
    all_in = run(RobustFedAvg(rule, initial_arrays=INIT, fraction_evaluate=0.0), set(), nodes=5)
    five = np.stack([value(k) for k in range(5)])
    np.testing.assert_allclose(all_in.arrays["w"], np.sort(five, axis=0)[1:-1].mean(axis=0))

    one_late = run(RobustFedAvg(rule, initial_arrays=INIT, fraction_evaluate=0.0), {"4"}, nodes=5)
    np.testing.assert_allclose(one_late.arrays["w"], five[:4].mean(axis=0))


def test_min_replies_counts_only_on_time_nodes() -> None:
    ok = run(FedAvg(initial_arrays=INIT, fraction_evaluate=0.0), {"0"}, min_replies=3)
    assert on_time(ok) == [1, 2, 3]
    with pytest.raises(RoundFailed, match=r"only 3 of 4 nodes.*4 required.*0: timeout"):
        run(FedAvg(initial_arrays=INIT, fraction_evaluate=0.0), {"0"}, min_replies=4)


def test_a_straggler_from_one_round_does_not_leak_into_the_next() -> None:
    result = run(FedAvg(initial_arrays=INIT, fraction_evaluate=0.0), {"0"}, rounds=2)
    per_round = np.average([value(k) for k in (1, 2, 3)], axis=0, weights=[2, 3, 4])
    np.testing.assert_allclose(result.arrays["w"], 2 * per_round)
    for record in result.history.rounds:
        assert {n.node_id for n in record.nodes if n.outcome is Outcome.OK} == {"1", "2", "3"}


def test_simulated_time_round_lasts_as_long_as_its_slowest_on_time_node() -> None:
    """The same rules on the simulated clock: durations instead of sleeps."""
    durations = {"0": 5.0, "1": 1.0, "2": 2.0, "3": 3.0}
    grid = AsyncSimulationGrid(sleepy_client(set()), list(durations), durations=durations)
    config = ServerConfig(
        FedAvg(initial_arrays=INIT, fraction_evaluate=0.0), num_rounds=2, round_timeout=4.0
    )
    clock: list[float] = []

    class Clock:
        def on_run_start(self, info: object) -> None: ...

        def on_round_end(self, record: object) -> None:
            clock.append(grid.now())

        def on_run_end(self, history: object, *, failed: bool) -> None: ...

    result = run_server_app(ServerApp(lambda _: config), grid, observers=[Clock()])
    grid.close()
    per_round = np.average([value(k) for k in (1, 2, 3)], axis=0, weights=[2, 3, 4])
    np.testing.assert_allclose(result.arrays["w"], 2 * per_round)
    # round 1 ends at its 4 s timeout (node 0 needs 5 s); in round 2 node 0 is still busy
    # until t = 5, and its second task would end at 10 > 8: both rounds take 4 s
    assert clock == [4.0, 8.0]
