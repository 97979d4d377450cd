"""``backend="auto"`` (the default) runs many nodes of an app given by reference in worker
processes on a machine with 2 CPUs or more, and everything else in threads; the run
records the backend it chose, and the model is the one threads give."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from consortium.client import ClientApp
from consortium.core.history import History, RoundRecord, RunInfo
from consortium.core.parallel import cpu_count
from consortium.core.protocol import PARAM_BACKEND
from consortium.simulation import run_simulation
from consortium.simulation.grid import AUTO_PROCESSES_MIN_NODES, resolve_backend

HERE = Path(__file__).parent
TOY_DIR = str(HERE / "toyapp")
sys.path.insert(0, TOY_DIR)
import toy_app  # noqa: E402

REF = "toy_app:client_app"


class Params:
    """Keeps the params the run started with (they name the backend that ran)."""

    def __init__(self) -> None:
        self.params: dict[str, object] = {}

    def on_run_start(self, info: RunInfo) -> None:
        self.params = dict(info.params)

    def on_round_end(self, record: RoundRecord) -> None: ...

    def on_run_end(self, history: History, *, failed: bool) -> None: ...


@pytest.mark.parametrize(
    ("app", "nodes", "cpus", "chosen"),
    [
        (REF, AUTO_PROCESSES_MIN_NODES, 2, "processes"),
        (REF, 100_000, 16, "processes"),
        (REF, AUTO_PROCESSES_MIN_NODES - 1, 2, "threads"),  # too few nodes to pay off
        (REF, 100_000, 1, "threads"),  # one CPU: no second core to use
        (ClientApp(), 100_000, 16, "threads"),  # an object: workers could not load it
    ],
)
def test_auto_picks_processes_only_where_they_pay_off(
    app: ClientApp | str, nodes: int, cpus: int, chosen: str
) -> None:
    assert resolve_backend("auto", app, nodes, cpus) == chosen


@pytest.mark.parametrize("named", ["threads", "processes", "ray"])
def test_a_named_backend_is_used_as_named(named: str) -> None:
    assert resolve_backend(named, REF, 10, 1) == named  # type: ignore[arg-type]


@pytest.mark.skipif(cpu_count() < 2, reason="one CPU: auto keeps threads")
def test_the_default_runs_many_nodes_in_processes_to_the_threads_model_bytes() -> None:
    def run(**backend: str) -> tuple[bytes, dict[str, object]]:
        seen = Params()
        result = run_simulation(
            toy_app.server_app, REF, num_nodes=AUTO_PROCESSES_MIN_NODES, seed=3,
            run_config={"num-rounds": 2}, app_path=[TOY_DIR], observers=[seen], **backend,  # type: ignore[arg-type]
        )  # fmt: skip
        return result.arrays["w"].tobytes(), seen.params

    default, params = run()
    assert params[PARAM_BACKEND] == "processes"
    threads, params = run(backend="threads")
    assert params[PARAM_BACKEND] == "threads"
    assert default == threads


def test_the_cli_says_which_backend_auto_chose(tmp_path: Path) -> None:
    from consortium.cli.main import cli

    app = str(HERE.parent.parent / "examples" / "heart_disease")
    options = ["--no-tracking", "--no-progress", "--no-plot", "--run-config", "num-rounds=1"]
    out = CliRunner().invoke(
        cli,
        ["simulate", app, *options, "--run-dir", str(tmp_path / "run")],
        env={"COLUMNS": "200", **os.environ},
    )
    assert out.exit_code == 0, out.output
    assert "backend threads (auto)" in out.output  # 4 hospitals: threads
