"""Server programs in deployment: a hand-written main, a resumable custom main, FedBuff.

Each test starts a real `consortium server` and four `consortium node`
processes over mutual TLS on loopback, and kills the server with SIGKILL where
it says so.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import ConfigError
from consortium.core.history import History, Outcome
from consortium.core.message import TRAIN, Content, Message
from consortium.core.protocol import FEDBUFF_UPDATE_BASE_VERSION as BASE_VERSION
from consortium.core.protocol import FEDBUFF_UPDATE_STALENESS as STALENESS
from consortium.core.protocol import FEDBUFF_UPDATE_TASK as TASK
from consortium.core.rng import SERVER_KEY, derive_rng
from consortium.datasets import heart_disease as hd
from consortium.examples import heart_disease as heart
from consortium.server import load_model, run_server_app
from consortium.server.checkpoint import load_checkpoint, read_checkpoint
from consortium.simulation import ReplayGrid, SimulationGrid, completion_order, run_simulation
from consortium.strategy.fedbuff import AsyncUpdate

from .conftest import HERE, NODES, Deployment, import_app, wait_for

ROOT = Path(__file__).resolve().parents[2]
BY_HAND = ROOT / "examples" / "fedavg_by_hand"
PHASES = HERE / "phasesapp"
FEDBUFF = HERE / "fedbuffapp"
#: seconds each hospital's node takes per FedBuff task: four different speeds
SPEEDS = {"cleveland": 0.1, "hungarian": 0.2, "switzerland": 0.3, "va": 0.45}


def test_fedavg_by_hand_deployed_equals_the_builtin_fedavg_simulated(
    deployment: Deployment,
) -> None:
    deployment.start_server()
    for name in NODES:
        deployment.start_node(name, app=BY_HAND)
    run_id = deployment.start_run(BY_HAND, {"num-rounds": 4}, seed=13)
    info = deployment.wait_run(run_id)
    assert info["status"] == "finished", (info, deployment.log("server"))
    deployed = load_model(deployment.run_dir(run_id) / "model.npz")
    simulated = run_simulation(
        heart.server_app, heart.client_app, node_ids=list(hd.CENTERS),
        node_config=heart.node_config, run_config={**heart.TUNED_RUN_CONFIG, "num-rounds": 4},
        seed=13,
    ).arrays  # fmt: skip
    assert deployed.equals(simulated)
    assert [r["round"] for r in info["rounds"]] == [1, 2, 3, 4]


def test_custom_main_killed_and_resumed_equals_its_uninterrupted_simulation(
    deployment: Deployment,
) -> None:
    port = deployment.start_server()
    for name in NODES:
        deployment.start_node(name, app=PHASES)
    config = {"warmup-rounds": 2, "sampled-rounds": 3, "delay": 0.4}
    run_id = deployment.start_run(PHASES, config, seed=8)
    ckpts = deployment.run_dir(run_id) / "checkpoints"
    # the second phase has begun: step 3's checkpoint is written, step 4 is under way
    wait_for(lambda: (ckpts / "round-000003.ckpt").exists(), 120, "checkpoint of step 3")
    time.sleep(0.2)
    deployment.kill("server")
    assert deployment.start_server("--resume", run_id) == port
    info = deployment.wait_run(run_id)
    assert info["status"] == "finished", (info, deployment.log("server"))
    phases = import_app(PHASES, "phases")
    simulated = run_simulation(
        phases.app, phases.client_app, node_ids=list(NODES), seed=8,
        run_config={**config, "delay": 0.0, "min-nodes": 4},
    )  # fmt: skip
    assert load_model(deployment.run_dir(run_id) / "model.npz").equals(simulated.arrays)
    assert [r["round"] for r in info["rounds"]] == [1, 2, 3, 4, 5]


def _replay(history: History, run_config: dict[str, Any], seed: int) -> Arrays:
    """Fold the recorded update sequence again: recompute each update with the app's
    client (a function of model, node and task number) and step like the server."""
    toy = import_app(FEDBUFF, "fedbuff_toy")
    strategy = toy.strategy(run_config)
    initial = strategy.initialize(derive_rng(seed, 0, SERVER_KEY, stream="init"))
    models = {0: initial}
    for record in history.rounds:
        for node in record.nodes:
            if node.outcome is not Outcome.OK:
                continue
            base = models[int(node.metrics[BASE_VERSION])]
            task = Message.create(
                run_id="replay", dst=node.node_id, round=int(node.metrics[TASK]), kind=TRAIN,
                content=Content.of(base, {}),
            )  # fmt: skip
            ctx = Context(
                node.node_id, node_config={"delay": 0.0}, run_config=run_config, seed=seed
            )
            reply = toy.client_app(task, ctx)
            strategy.fold(
                AsyncUpdate(
                    node.node_id, reply.content.model, base, int(node.metrics[BASE_VERSION]),
                    int(node.metrics[STALENESS]), int(node.num_examples), {},
                )
            )  # fmt: skip
        models[record.round] = strategy.step(record.round - 1, models[record.round - 1])[0]
    return models[len(history.rounds)]


def test_fedbuff_deployed_with_four_speeds_survives_kill_9_with_no_update_lost_or_twice(
    deployment: Deployment,
) -> None:
    port = deployment.start_server()
    for name in NODES:
        deployment.start_node(name, app=FEDBUFF, delay=SPEEDS[name])
    config = {"num-steps": 10, "buffer-size": 3, "concurrency": 4, "min-nodes": 4}
    run_id = deployment.start_run(FEDBUFF, config, seed=4)
    ckpts = deployment.run_dir(run_id) / "checkpoints"
    wait_for(lambda: (ckpts / "round-000003.ckpt").exists(), 120, "checkpoint of step 3")
    time.sleep(0.15)  # mid-buffer: some updates of step 4 received, tasks in flight
    deployment.kill("server")
    before = load_checkpoint(ckpts)
    assert before is not None and 3 <= before.round < 10  # killed mid-run
    assert deployment.start_server("--resume", run_id) == port
    info = deployment.wait_run(run_id)
    assert info["status"] == "finished", (info, deployment.log("server"))
    final = deployment.run_dir(run_id) / "model.npz"
    history = read_checkpoint(ckpts / "round-000010.ckpt").history
    assert [r.round for r in history.rounds] == list(range(1, 11))
    # the steps before the crash are the checkpoint's, unchanged
    assert [r.nodes for r in history.rounds[: before.round]] == [
        r.nodes for r in before.history.rounds
    ]
    folded = [n for r in history.rounds for n in r.nodes if n.outcome is Outcome.OK]
    assert len(folded) == 10 * 3
    tasks = [int(n.metrics[TASK]) for n in folded]
    assert len(set(tasks)) == len(tasks)  # no task counted twice
    assert {n.node_id for n in folded} == set(NODES)
    # staleness is recorded per update, and slower nodes do come back stale
    assert all(STALENESS in n.metrics for n in folded)
    assert max(int(n.metrics[STALENESS]) for n in folded) >= 1
    assert load_model(final).equals(_replay(history, config, seed=4))
    server_log = (deployment.workdir / "server" / "server.log").read_text()
    assert "resumes at version" in server_log


def test_fedbuff_deployed_equals_its_simulation_replayed_in_the_same_completion_order(
    deployment: Deployment,
) -> None:
    deployment.start_server()
    for name in NODES:
        deployment.start_node(name, app=FEDBUFF, delay=SPEEDS[name])
    config = {"num-steps": 6, "buffer-size": 2, "concurrency": 4, "min-nodes": 4}
    run_id = deployment.start_run(FEDBUFF, config, seed=9)
    info = deployment.wait_run(run_id)
    assert info["status"] == "finished", (info, deployment.log("server"))
    ckpts = deployment.run_dir(run_id) / "checkpoints"
    order = completion_order(read_checkpoint(ckpts / "round-000006.ckpt").history)
    toy = import_app(FEDBUFF, "fedbuff_toy")
    grid = ReplayGrid(SimulationGrid(toy.client_app, list(NODES), run_config=config, seed=9), order)
    simulated = run_server_app(toy.server_app, grid, run_config=config, seed=9)
    grid.close()
    assert load_model(deployment.run_dir(run_id) / "model.npz").equals(simulated.arrays)

    # another order is another run; an order the run cannot follow is refused
    def replay(order: list[str]) -> Arrays:
        grid = ReplayGrid(SimulationGrid(toy.client_app, list(NODES), run_config=config, seed=9),
                          order)  # fmt: skip
        try:
            return run_server_app(toy.server_app, grid, run_config=config, seed=9).arrays
        finally:
            grid.close()

    assert not replay(["va"] * len(order)).equals(simulated.arrays)
    with pytest.raises(ConfigError, match="diverged at reply 1: node 'nowhere'"):
        replay(["nowhere", *order])
