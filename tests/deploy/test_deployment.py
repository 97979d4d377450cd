"""Server and node processes over mutual TLS on loopback: results, node and server crashes."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from consortium.core.arrays import Arrays
from consortium.server import load_model
from consortium.server.checkpoint import checkpoint_digest, read_checkpoint
from consortium.simulation import run_simulation

from .conftest import EXE, NODES, SLOW_APP, Deployment, import_app, wait_for

ROOT = Path(__file__).resolve().parents[2]
HEART = ROOT / "examples" / "heart_disease"


def _simulate_slow_app(rounds: int, seed: int) -> Arrays:
    slow_toy = import_app(SLOW_APP, "slow_toy")
    config = {"num-rounds": rounds, "delay": 0.0, "min-replies": 4, "min-nodes": 4,
              "round-timeout": 60.0}  # fmt: skip
    return run_simulation(
        slow_toy.server_app, slow_toy.client_app, node_ids=list(NODES), run_config=config,
        seed=seed,
    ).arrays  # fmt: skip


def test_heart_disease_deployment_equals_simulation(deployment: Deployment) -> None:
    """4 hospital processes, each with only its own data: bit-identical to simulation."""
    from consortium.datasets import heart_disease as hd
    from consortium.examples import heart_disease as app

    deployment.start_server()
    for name in NODES:
        deployment.start_node(name, app=HEART)
    run_id = deployment.start_run(HEART, {"num-rounds": 5}, seed=11)
    info = deployment.wait_run(run_id)
    assert info["status"] == "finished", info
    model = load_model(deployment.workdir / "server" / "runs" / run_id / "model.npz")
    sim = run_simulation(
        app.server_app, app.client_app, node_ids=list(hd.CENTERS), node_config=app.node_config,
        run_config={**app.TUNED_RUN_CONFIG, "num-rounds": 5}, seed=11,
    )  # fmt: skip
    assert model.equals(sim.arrays)
    # the newest checkpoint, as `run show` prints it (what --resume would restart from)
    checkpoint = info["checkpoint"]
    assert checkpoint["round"] == 5 and checkpoint["digest"].startswith("crc32:")
    assert checkpoint_digest(Path(checkpoint["path"])) == checkpoint["digest"]
    assert read_checkpoint(Path(checkpoint["path"])).arrays.equals(sim.arrays)
    # ...and the operator's command line shows it all
    shown = subprocess.run(
        [EXE, "run", "show", run_id, "--server", f"127.0.0.1:{deployment.port}",
         "--credentials", str(deployment.fed.creds("alice"))],
        capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert f"run {run_id}" in shown.stdout and "finished (5/5 rounds)" in shown.stdout
    assert f"latest checkpoint: round 5, {checkpoint['path']}" in shown.stdout
    assert checkpoint["digest"] in shown.stdout
    assert all(name in shown.stdout for name in NODES)
    # the per-node "system" view: every node, every round, with timing
    nodes = {(r["round"], n["node"], n["stage"]) for r in info["rounds"] for n in r["nodes"]}
    assert len(nodes) == 5 * 4 * 2
    for r in info["rounds"]:
        for n in r["nodes"]:
            assert n["outcome"] == "ok"
            assert set(n["timing"]) == {"train", "upload", "wait"}, n
            assert 0 <= n["timing"]["train"] <= n["seconds"] + 1e-3


def test_node_killed_mid_round_round_completes_then_node_rejoins(deployment: Deployment) -> None:
    deployment.start_server(offline_after=1.5)
    for name in NODES:
        deployment.start_node(name)
    # a round needs 3 replies; each round starts once all 4 nodes are online
    config = {"num-rounds": 4, "delay": 1.0, "min-replies": 3, "min-nodes": 4}
    run_id = deployment.start_run(SLOW_APP, config, seed=5)
    log = deployment.workdir / "nodes" / "va" / "node.log"
    delivered = "round 1: train reply delivered"  # the server has it (after "train done")
    wait_for(lambda: log.exists() and delivered in log.read_text(), 60, "round 1")
    time.sleep(0.3)  # va is now inside round 2's training sleep
    deployment.kill("va")
    time.sleep(2.5)  # offline, round 2 goes on with three nodes
    deployment.start_node("va")
    info = deployment.wait_run(run_id)
    assert info["status"] == "finished", info
    outcome = {(r["round"], n["node"]): n["outcome"] for r in info["rounds"] for n in r["nodes"]}
    assert outcome[(2, "va")] != "ok"  # lost mid-round, reported
    assert all(outcome[(2, n)] == "ok" for n in NODES if n != "va")
    assert outcome[(3, "va")] == "ok" and outcome[(4, "va")] == "ok"  # back for later rounds
    server_log = (deployment.workdir / "server" / "server.log").read_text()
    assert "node va is offline" in server_log or "restarted" in server_log


def _checkpoint(dep: Deployment, run_id: str, rnd: int) -> Path:
    return dep.workdir / "server" / "runs" / run_id / "checkpoints" / f"round-{rnd:06d}.ckpt"


@pytest.mark.parametrize("moment", ["between-rounds", "mid-round", "writing-checkpoint"])
def test_server_killed_then_resumed_equals_uninterrupted(
    deployment: Deployment, moment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra: list[str] = []
    if moment == "writing-checkpoint":
        # fault injection: the server pauses inside its 3rd checkpoint write (temp file
        # written, not yet renamed) and says so; we kill it right there
        monkeypatch.setenv("CONSORTIUM_FAULT_CHECKPOINT_PAUSE", "3:30")
    port = deployment.start_server(*extra)
    monkeypatch.delenv("CONSORTIUM_FAULT_CHECKPOINT_PAUSE", raising=False)
    for name in NODES:
        deployment.start_node(name)
    rounds, seed = 5, 21
    config = {"num-rounds": rounds, "delay": 0.6}
    run_id = deployment.start_run(SLOW_APP, config, seed=seed)
    ckpts = _checkpoint(deployment, run_id, 2).parent
    if moment == "between-rounds":
        wait_for(lambda: _checkpoint(deployment, run_id, 2).exists(), 120, "checkpoint 2")
    elif moment == "mid-round":
        wait_for(lambda: _checkpoint(deployment, run_id, 2).exists(), 120, "checkpoint 2")
        time.sleep(0.3)  # round 3's training is under way
    else:
        wait_for(lambda: any(ckpts.glob(".round-000003*.tmp")), 120, "checkpoint 3 being written")
    deployment.kill("server")
    assert not _checkpoint(deployment, run_id, 3).exists() or moment != "writing-checkpoint"
    assert deployment.start_server("--resume", run_id) == port
    info = deployment.wait_run(run_id)
    assert info["status"] == "finished", info
    model = load_model(deployment.workdir / "server" / "runs" / run_id / "model.npz")
    assert model.equals(_simulate_slow_app(rounds, seed))
    assert sorted(r["round"] for r in info["rounds"]) == list(range(1, rounds + 1))
