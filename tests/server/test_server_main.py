"""ServerApp mains over the Grid: the hand-written FedAvg, a resumable 2-phase main, errors."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from consortium.apps.loader import load_object
from consortium.core.arrays import Arrays
from consortium.core.errors import ConfigError
from consortium.core.protocol import FEDBUFF_UPDATE_STALENESS
from consortium.datasets import heart_disease as hd
from consortium.examples import heart_disease as heart
from consortium.server import (
    AsyncServerConfig,
    ServerApp,
    ServerConfig,
    run_server_app,
)
from consortium.server.checkpoint import load_checkpoint
from consortium.server.context import CheckpointSettings
from consortium.simulation import SimulationGrid, run_simulation
from consortium.strategy import FedAdam, FedAvg
from consortium.strategy.fedbuff import FedBuff

ROOT = Path(__file__).resolve().parents[2]
BY_HAND = ROOT / "examples" / "fedavg_by_hand"
PHASES = ROOT / "tests" / "deploy" / "phasesapp"


def _heart(server_app: ServerApp, **config: Any) -> Arrays:
    return run_simulation(
        server_app, heart.client_app, node_ids=list(hd.CENTERS), node_config=heart.node_config,
        run_config={**heart.TUNED_RUN_CONFIG, **config}, seed=7,
    ).arrays  # fmt: skip


@pytest.mark.parametrize("weighting", ["uniform", "examples"])
def test_fedavg_by_hand_gives_the_same_model_bytes_as_the_builtin_fedavg(weighting: str) -> None:
    by_hand = load_object("fedavg_main:app", [str(BY_HAND)])
    assert isinstance(by_hand, ServerApp)
    mine = _heart(by_hand, **{"num-rounds": 6, "weighting": weighting})
    builtin = _heart(heart.server_app, **{"num-rounds": 6, "weighting": weighting})
    assert mine.equals(builtin)
    assert not mine.equals(heart.initial_params_for_seed(7))  # it did train


def _phases(**kw: Any) -> Any:
    sys.path.insert(0, str(PHASES))
    try:
        import phases
    finally:
        sys.path.remove(str(PHASES))
    return phases


class CrashAt:
    """An observer that kills the run while step ``step`` is reported (a crash, as far as
    the checkpoints go: the newest one on disk is step - 1's)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_run_start(self, info: Any) -> None:
        pass

    def on_round_end(self, record: Any) -> None:
        if record.round == self.step:
            raise KeyboardInterrupt("simulated crash")

    def on_run_end(self, history: Any, *, failed: bool) -> None:
        pass


def _run_phases(tmp: Path | None, *, resume: bool = False, crash_at: int = 0) -> Any:
    phases = _phases()
    return run_simulation(
        phases.app, phases.client_app, node_ids=["a", "bb", "ccc", "dddd"], seed=3,
        run_config={"warmup-rounds": 2, "sampled-rounds": 3, "delay": 0.0, "min-nodes": 4},
        checkpoint_dir=tmp, resume=resume, observers=[CrashAt(crash_at)] if crash_at else [],
    )  # fmt: skip


@pytest.mark.parametrize("crash_after", [1, 2, 3, 4])
def test_a_two_phase_main_resumes_bit_identically(tmp_path: Path, crash_after: int) -> None:
    full = _run_phases(None)
    assert [r.round for r in full.history.rounds] == [1, 2, 3, 4, 5]
    with pytest.raises(KeyboardInterrupt):
        _run_phases(tmp_path, crash_at=crash_after + 1)
    ck = load_checkpoint(tmp_path)
    assert ck is not None and ck.round == crash_after
    resumed = _run_phases(tmp_path, resume=True)
    assert resumed.arrays.equals(full.arrays)
    assert [r.round for r in resumed.history.rounds] == [1, 2, 3, 4, 5]
    assert [r.train_metrics for r in resumed.history.rounds] == [
        r.train_metrics for r in full.history.rounds
    ]


class CountingGrid(SimulationGrid):
    """Notes how many nodes each wait asked for."""

    asked: list[int]

    def wait_for_nodes(self, count: int, timeout: float) -> list[str]:
        self.asked.append(count)
        return super().wait_for_nodes(count, timeout)


def _client() -> Any:
    from consortium.client import ClientApp
    from consortium.core.message import Message

    app = ClientApp()

    @app.train()
    def train(msg: Message, ctx: Any) -> Message:
        assert msg.content is not None and msg.content.model is not None
        w = msg.content.model["w"] + ctx.rng(msg.metadata.round).normal(size=3)
        return msg.reply(arrays=Arrays({"w": w}), metrics={"num_examples": 5})

    return app


def test_a_wrapped_strategy_waits_for_its_base_min_available_nodes(tmp_path: Path) -> None:
    strategy = FedAdam(
        FedAvg(initial_arrays=Arrays({"w": np.zeros(3)}), min_available_nodes=4), lr=0.1
    )
    grid = CountingGrid(_client(), ["a", "b", "c", "d"])
    grid.asked = []
    config = ServerConfig(strategy, num_rounds=3, node_wait=5.0)
    checkpoints = CheckpointSettings(tmp_path)
    result = run_server_app(ServerApp(lambda _: config), grid, seed=1, checkpoints=checkpoints)
    assert grid.asked and set(grid.asked) == {4}
    assert len(result.history.rounds) == 3
    # the checkpoint holds both layers: FedAdam's moments and its FedAvg base's state
    ck = load_checkpoint(tmp_path)
    assert ck is not None and ck.round == 3
    assert set(ck.state) == {"base", "optimizer"} and ck.state["optimizer"]["steps"] == 3
    # with three nodes the wrapped FedAvg refuses to sample, as the base alone would
    small = CountingGrid(_client(), ["a", "b", "c"])
    small.asked = []
    with pytest.raises(Exception, match="at least 4"):
        run_server_app(ServerApp(lambda _: config), small, seed=1)


def test_server_app_refuses_a_main_and_a_server_fn_or_neither() -> None:
    app = ServerApp(lambda ctx: ServerConfig(FedAvg()))
    with pytest.raises(ConfigError, match="already has a server_fn"):
        app.main()(lambda grid, ctx: None)
    lone = ServerApp()
    lone.main()(lambda grid, ctx: None)
    with pytest.raises(ConfigError, match="already has a main"):
        lone.main()(lambda grid, ctx: None)
    grid = SimulationGrid(_client(), ["a"])
    with pytest.raises(ConfigError, match="nothing to run"):
        run_server_app(ServerApp(), grid)
    wrong = ServerApp(lambda ctx: "not a config")  # type: ignore[arg-type,return-value]
    with pytest.raises(ConfigError, match="must return a ServerConfig or an AsyncServerConfig"):
        run_server_app(wrong, grid)


@pytest.mark.parametrize("backend,workers", [("threads", 1), ("threads", 3), ("processes", 2)])
def test_fedbuff_runs_through_run_simulation_on_push_and_pull(backend: str, workers: int) -> None:
    """An AsyncServerConfig from server_fn runs the FedBuff workflow on the plain grid."""
    strategy = FedBuff(buffer_size=2, concurrency=3, initial_arrays=Arrays({"w": np.zeros(8)}))
    app = ServerApp(lambda ctx: AsyncServerConfig(strategy, num_steps=4))
    result = run_simulation(
        app, "toy_app:client_app", node_ids=["a", "b", "c", "d"], seed=2,
        backend=backend, workers=workers,  # type: ignore[arg-type]
        app_path=[str(ROOT / "tests" / "simulation" / "toyapp")],
    )  # fmt: skip
    assert [r.round for r in result.history.rounds] == [1, 2, 3, 4]
    folded = [n for r in result.history.rounds for n in r.nodes if n.outcome.value == "ok"]
    assert len(folded) == 8
    assert all(FEDBUFF_UPDATE_STALENESS in n.metrics for n in folded)
    assert not result.arrays.equals(Arrays({"w": np.zeros(8)}))


@pytest.mark.parametrize(
    "field,value",
    [("round_timeout", float("nan")), ("round_timeout", float("inf")), ("node_wait", float("nan")),
     ("min_reply_fraction", float("nan"))],
)  # fmt: skip
def test_workflow_configs_refuse_nan_and_infinite_times(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=field):
        ServerConfig(FedAvg(), **{field: value})


@pytest.mark.parametrize("field", ["task_timeout", "node_wait", "max_clock"])
def test_async_config_refuses_nan(field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        AsyncServerConfig(FedBuff(), **{field: float("nan")})
