"""Cyclic weight transfer: FLamby's visiting order, one node per round, the model
passed along, node churn, resume, and a real simulation."""

from __future__ import annotations

import numpy as np
import pytest

from consortium.client import ClientApp
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import RoundFailed, StrategyError
from consortium.core.message import Message
from consortium.server import ServerApp, ServerConfig
from consortium.simulation import run_simulation
from consortium.strategy import TrainReply
from consortium.strategy.cyclic import Cyclic

NODES = ["a", "b", "c", "d"]


def _visits(strategy: Cyclic, rounds: int, rng: np.random.Generator, nodes: list[str]) -> list[str]:
    out = []
    for rnd in range(1, rounds + 1):
        (instr,) = strategy.configure_train(rnd, Arrays(), nodes, rng)
        out.append(instr.node_id)
    return out


def test_order_is_flamby_s_reshuffled_cycles() -> None:
    """With one generator throughout (as FLamby's), the visits are the permutations
    drawn at each cycle start: rng.permutation(4), rng.permutation(4), ..."""
    got = _visits(Cyclic(), 10, np.random.default_rng(7), list(reversed(NODES)))
    ref = np.random.default_rng(7)
    perms = [ref.permutation(4) for _ in range(3)]
    expected = [NODES[i] for p in perms for i in p][:10]
    assert got == expected
    # every cycle visits every node exactly once
    assert sorted(got[:4]) == NODES and sorted(got[4:8]) == NODES


def test_deterministic_cycle_goes_in_sorted_order() -> None:
    got = _visits(Cyclic(deterministic_cycle=True), 6, np.random.default_rng(0), ["c", "a", "b"])
    assert got == ["a", "b", "c", "a", "b", "c"]


def test_each_round_passes_the_model_to_one_node_and_keeps_its_result() -> None:
    strategy = Cyclic(train_config=lambda rnd: {"lr": 0.1 * rnd})
    x = Arrays({"w": np.zeros(2)})
    instructions = strategy.configure_train(3, x, NODES, np.random.default_rng(0))
    assert len(instructions) == 1
    assert instructions[0].arrays is x and instructions[0].config == {"lr": pytest.approx(0.3)}
    trained = Arrays({"w": np.array([1.0, 2.0])})
    node = instructions[0].node_id
    new, metrics = strategy.aggregate_train(
        3, x, iter([TrainReply(node, trained, 7, {"loss": 0.25})])
    )
    assert new is trained
    assert metrics == {"loss": 0.25}
    with pytest.raises(RoundFailed, match="sent no model"):
        strategy.aggregate_train(4, x, iter([]))
    with pytest.raises(StrategyError, match="one reply"):
        strategy.aggregate_train(4, x, iter([TrainReply("a", x, 1), TrainReply("b", x, 1)]))


def test_a_node_that_leaves_is_skipped_and_a_new_one_waits_for_the_next_cycle() -> None:
    strategy = Cyclic(deterministic_cycle=True)
    rng = np.random.default_rng(0)
    assert _visits(strategy, 1, rng, ["a", "b", "c"]) == ["a"]
    # b leaves, d arrives: the cycle goes on with c, then a new cycle includes d
    assert _visits(strategy, 4, rng, ["a", "c", "d"]) == ["c", "a", "c", "d"]


def test_resume_from_state_dict() -> None:
    a = Cyclic()
    first = _visits(a, 6, np.random.default_rng(3), NODES)
    saved = a.state_dict()
    assert saved["order"] == a.cycle and saved["position"] == 2
    b = Cyclic()
    b.load_state_dict(saved)
    rest_a = _visits(a, 6, np.random.default_rng(4), NODES)
    rest_b = _visits(b, 6, np.random.default_rng(4), NODES)
    assert rest_a == rest_b
    assert first[4:6] == saved["order"][:2]
    assert rest_b[:2] == saved["order"][2:4]  # the interrupted cycle is finished first
    for bad in ({"order": "ab"}, {"position": 9}, {"order": ["a"], "position": True}, {"x": 1}):
        with pytest.raises(StrategyError):
            Cyclic().load_state_dict(bad)


def test_needs_available_nodes() -> None:
    with pytest.raises(StrategyError, match="at least"):
        Cyclic().configure_train(1, Arrays(), [], np.random.default_rng(0))
    with pytest.raises(StrategyError, match="at least 3"):
        Cyclic(min_available_nodes=3).configure_train(1, Arrays(), ["a"], np.random.default_rng(0))


# A node adds 10 ** its index to a counter, so the final model records every visit.
counting_app = ClientApp()


@counting_app.train()
def _count(msg: Message, context: Context) -> Message:
    assert msg.content is not None and msg.content.model is not None
    w = msg.content.model["w"].copy()
    w[NODES.index(context.node_id)] += 1.0
    # the last entry remembers the order of visits as digits 1..4
    w[-1] = w[-1] * 10 + NODES.index(context.node_id) + 1
    return msg.reply(arrays=Arrays({"w": w}), metrics={"num_examples": 1})


def _run(seed: int, rounds: int) -> np.ndarray:
    server = ServerApp(
        lambda _: ServerConfig(
            Cyclic(initial_arrays=Arrays({"w": np.zeros(5)}), fraction_evaluate=0.0),
            num_rounds=rounds,
        )
    )
    w: np.ndarray = run_simulation(server, counting_app, node_ids=NODES, seed=seed).arrays["w"]
    return w


def test_a_real_run_carries_one_model_around_the_nodes() -> None:
    w = _run(42, 15)
    # 15 rounds over 4 nodes: three full cycles and three nodes of a fourth
    assert sorted(w[:4].tolist()) == [3.0, 4.0, 4.0, 4.0]
    digits = [int(d) for d in str(int(w[-1]))]
    for start in (0, 4, 8):
        assert sorted(digits[start : start + 4]) == [1, 2, 3, 4]
    assert np.array_equal(_run(42, 15), w)  # the seed fixes the order
    assert not np.array_equal(_run(43, 15)[-1], w[-1])
