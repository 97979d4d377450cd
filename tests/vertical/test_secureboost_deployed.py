"""examples/vertical_heart with ``model = "boost"`` on three real `consortium node` processes
over mutual TLS: PSI, then SecureBoost; every tree's metrics equal the simulated run's.

The trees stay with their parties (the server's model is empty), so the deployed
model is compared through what it computes: after each tree the label holder's
log-loss and accuracy on the training and held-out rows, float64 over every
row's score (a score one ulp off changes the loss), and the bytes each tree
cost (which candidates and nodes were opened).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from consortium.server import load_model
from consortium.simulation.grid import SimulationGrid
from consortium.vertical.boost import BoostParams, run_vertical_boost
from deploy.conftest import Deployment, deployment, federation  # noqa: F401 - fixtures

from .test_secureboost import APP, RunLog, _app

pytest.importorskip("nacl")
pytest.importorskip("phe")

#: certificate names of the test federation -> the party each node says it is
PARTIES = {"cleveland": "hospital", "hungarian": "cardiology", "switzerland": "clinical-lab"}
CONFIG = {"model": "boost", "vsb-key-bits": 512, "vsb-trees": 3, "vsb-timeout": 60.0,
          "compare-central": False}  # fmt: skip
SEED = 3


class _Order:
    """Stands in for ``secrets`` in boost_passive: candidates sent in a fixed order."""

    def __init__(self, reverse: bool) -> None:
        self.reverse = reverse

    def SystemRandom(self) -> _Order:  # noqa: N802 - the name the module calls
        return self

    def shuffle(self, items: list[int]) -> None:
        items.sort(reverse=self.reverse)


def _simulate(config: dict[str, Any]) -> tuple[list[Any], list[list[str]]]:
    grid = SimulationGrid(_app(), list(PARTIES), run_config=config, seed=SEED,
                          node_config=lambda i, n: {"party": PARTIES[n]})  # fmt: skip
    log = RunLog()
    result = run_vertical_boost(grid, log, BoostParams.from_config(config), list(PARTIES))
    return [r.global_metrics() for r in log.rounds], result.owners


def _run_config() -> dict[str, Any]:
    """The run config a deployed run of CONFIG has: the app's defaults, then CONFIG."""
    with open(APP / "consortium.toml", "rb") as f:
        return {**tomllib.load(f)["run-config"], **CONFIG}


def test_the_trees_do_not_follow_the_secret_order_of_the_candidates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Candidates that split a node's rows alike tie; the label holder picks among them in
    the order they were sent, which is secret and fresh every run: the passive party
    splits by the first of them instead, so held-out rows are routed the same."""
    from consortium.vertical import boost_passive

    runs = []
    for reverse in (False, True):
        monkeypatch.setattr(boost_passive, "secrets", _Order(reverse))
        runs.append(_simulate(_run_config()))
    assert runs[0] == runs[1]


def test_secureboost_between_three_deployed_nodes(deployment: Deployment) -> None:  # noqa: F811
    deployment.start_server()
    for name, party in PARTIES.items():
        deployment.start_node(name, app=APP, party=party)
    run_id = deployment.start_run(APP, CONFIG, seed=SEED)
    info = deployment.wait_run(run_id, timeout=180)
    assert info["status"] == "finished", (info, deployment.log("server"))
    assert len(load_model(Path(deployment.run_dir(run_id)) / "model.npz")) == 0

    # the protocol in simulation under the deployed run's config, nodes named as
    # deployed, the same seed, rows aligned directly
    simulated, owners = _simulate(_run_config())
    assert owners and any(o != "" for o in owners[0])

    rounds = info["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3] and len(simulated) == 3
    for got, expected in zip(rounds, simulated, strict=True):
        assert set(expected) >= {"train_loss", "train_accuracy", "eval_loss", "eval_accuracy"}
        for key, value in expected.items():
            # exact: the same bits (a float's JSON text gives it back exactly)
            assert got["metrics"][key] == value, (got["round"], key, got["metrics"][key], value)
    losses = [m["train_loss"] for m in simulated]
    assert np.all(np.diff(losses) < 0), losses  # the trees learn: the comparison is not vacuous
