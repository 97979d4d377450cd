"""The processes backend: node tasks in batches, run by real worker processes.

The node app is loaded by reference in the workers (``test_process_backend:client_app``
with this folder on the path, as ``consortium simulate`` loads an app folder's);
``toy_app`` (toyapp/) counts each node's rounds in its state.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from consortium.client import ClientApp
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import ConfigError
from consortium.core.message import TRAIN, Content, Message
from consortium.core.parallel import cpu_count
from consortium.core.protocol import ERROR_UNKNOWN_NODE
from consortium.server import ServerApp, ServerConfig
from consortium.server.config import AsyncServerConfig
from consortium.simulation import run_simulation
from consortium.simulation.grid import SimulationGrid
from consortium.simulation.process_backend import ProcessNodes
from consortium.strategy import FedAvg, FedBuff

HERE = Path(__file__).parent
TOY_DIR = str(HERE / "toyapp")
sys.path.insert(0, TOY_DIR)
import toy_app  # noqa: E402

APP_REF = "test_process_backend:client_app"

client_app = ClientApp()


@client_app.train()
def train(msg: Message, ctx: Context) -> Message:
    """model + 1, and counts the node's tasks in its state. Config keys steer it:
    ``kill-<node>`` names a marker file: the first task of that node to see it missing
    creates it and kills its own worker (SIGKILL, as the OOM killer would);
    ``fail-<node>`` makes the node's task raise after touching its state;
    ``sleep-<node>`` makes it sleep that many seconds; ``meet`` names a folder where
    each task waits (up to 30 s) for the other tasks' nodes listed in ``meet-nodes``:
    those tasks can only all finish if they run at the same time."""
    assert msg.content is not None and msg.content.model is not None
    config = msg.content.config
    marker = config.get(f"kill-{ctx.node_id}")
    if isinstance(marker, str) and not os.path.exists(marker):
        Path(marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    seen = int(ctx.state.metrics.get("count", {}).get("tasks", 0)) + 1
    ctx.state.metrics["count"] = {"tasks": seen}
    if config.get(f"fail-{ctx.node_id}"):
        raise RuntimeError("this node fails")
    time.sleep(float(config.get(f"sleep-{ctx.node_id}", 0.0)))
    meet = config.get("meet")
    if isinstance(meet, str):
        (Path(meet) / ctx.node_id).touch()
        others = str(config["meet-nodes"]).split(",")
        give_up = time.monotonic() + 30
        while not all((Path(meet) / n).exists() for n in others):
            if time.monotonic() > give_up:
                raise TimeoutError("the other nodes never ran at the same time")
            time.sleep(0.01)
    model = msg.content.model
    return msg.reply(
        arrays=Arrays({"w": model["w"] + 1}),
        metrics={
            "num_examples": 1,
            "tasks_seen": seen,
            "writeable": int(model["w"].flags.writeable),
            "pid": os.getpid(),
        },
    )


def _tasks(nodes: list[str], **config: str | float) -> list[Message]:
    model = Arrays({"w": np.zeros(4)})
    return [
        Message.create(run_id="r", dst=n, round=1, kind=TRAIN, content=Content.of(model, config))
        for n in nodes
    ]


def _grid(nodes: list[str], **kwargs: int) -> SimulationGrid:
    return SimulationGrid(APP_REF, nodes, backend="processes", app_path=[str(HERE)], **kwargs)  # type: ignore[arg-type]


def _seen(replies: list[Message]) -> list[tuple[str, float]]:
    return [(r.metadata.src, r.content.metric_values["tasks_seen"]) for r in replies if r.content]


def test_the_model_is_bit_identical_to_threads_for_any_workers_and_batch_size() -> None:
    """toy_app draws from each node's seeded generator and keeps a state across rounds."""

    def run(backend: str, workers: int | None, per_batch: int | None) -> Arrays:
        return run_simulation(
            toy_app.server_app, "toy_app:client_app", num_nodes=7, seed=5,
            run_config={"num-rounds": 3}, app_path=[TOY_DIR], backend=backend,  # type: ignore[arg-type]
            workers=workers, nodes_per_batch=per_batch,
        ).arrays  # fmt: skip

    threads = run("threads", 1, None)["w"].tobytes()
    for workers, per_batch in [(1, None), (2, 2), (2, None), (3, 1), (3, 5)]:
        assert run("processes", workers, per_batch)["w"].tobytes() == threads, (workers, per_batch)


@pytest.mark.parametrize("per_batch", [1, 2, 4])
def test_a_node_takes_its_tasks_in_turn_across_batches_with_its_state(per_batch: int) -> None:
    """A node's later task starts from the state its earlier one left: in the same batch,
    in a batch that waits for the earlier one's, in a later call and in a push."""
    grid = _grid(["a", "b"], workers=2, nodes_per_batch=per_batch)
    try:
        replies = list(grid.send_and_receive(_tasks(["a", "b", "a", "a", "b"]), timeout=60))
        assert _seen(replies) == [("a", 1), ("b", 1), ("a", 2), ("a", 3), ("b", 2)]
        (again,) = grid.send_and_receive(_tasks(["a"]), timeout=60)
        assert _seen([again]) == [("a", 4)]
        grid.push(_tasks(["b", "b", "a"]))
        pulled = [grid.pull(timeout=60) for _ in range(3)]
        assert grid.pull(timeout=0) is None
    finally:
        grid.close()
    assert sorted(_seen([p for p in pulled if p is not None])) == [("a", 5), ("b", 3), ("b", 4)]


def test_replies_come_in_send_order_and_the_model_arrives_read_only(tmp_path: Path) -> None:
    nodes = [f"n{i}" for i in range(12)]
    grid = _grid(nodes, workers=2, nodes_per_batch=3)
    # n0 (first batch) and n3 (second) wait for each other: both workers run a batch,
    # however slowly one of them starts
    config = {"sleep-n1": 0.2, "meet": str(tmp_path), "meet-nodes": "n0,n3"}
    try:
        replies = list(grid.send_and_receive(_tasks(nodes, **config), timeout=60))
    finally:
        grid.close()
    assert [r.metadata.src for r in replies] == nodes
    pids = set()
    for reply in replies:
        assert reply.content is not None and reply.content.model is not None
        np.testing.assert_array_equal(reply.content.model["w"], np.ones(4))
        # one copy of the model serves the whole batch: no node may write into it
        assert reply.content.metric_values["writeable"] == 0
        pids.add(reply.content.metric_values["pid"])
    assert len(pids) == 2, "both workers ran batches"


def test_a_failed_task_drops_its_state_changes_and_an_unknown_node_is_told() -> None:
    grid = _grid(["a", "b"], workers=1, nodes_per_batch=4)
    try:
        tasks = _tasks(["a", "ghost", "b"], **{"fail-b": 1})
        first = list(grid.send_and_receive(tasks, timeout=60))
        second = list(grid.send_and_receive(_tasks(["a", "b"]), timeout=60))
    finally:
        grid.close()
    assert first[1].error is not None and first[1].error.code == ERROR_UNKNOWN_NODE
    assert first[2].error is not None and first[2].error.code == "RuntimeError"
    assert "this node fails" in first[2].error.traceback
    # b's failed task counted itself in its state: that change was dropped
    assert _seen([first[0], *second]) == [("a", 1), ("a", 2), ("b", 1)]


def test_a_deadline_gives_up_the_unfinished_batch_and_yields_the_finished_ones() -> None:
    nodes = ["a", "b", "c", "d"]
    grid = _grid(nodes, workers=2, nodes_per_batch=1)
    try:
        list(grid.send_and_receive(_tasks(nodes), timeout=60))  # the workers are up
        started = time.monotonic()
        replies = list(grid.send_and_receive(_tasks(nodes, **{"sleep-b": 1.5}), timeout=0.5))
        assert time.monotonic() - started < 1.4
    finally:
        grid.close()
    assert [r.metadata.src for r in replies] == ["a", "c", "d"]


def test_a_killed_worker_fails_its_batch_and_the_next_call_runs_on_fresh_workers(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "killed-b"
    nodes = ["a", "b", "c"]
    grid = _grid(nodes, workers=2, nodes_per_batch=1)
    try:
        replies = list(grid.send_and_receive(_tasks(nodes, **{"kill-b": str(marker)}), timeout=60))
        assert marker.exists(), "the task never killed its worker"
        assert [r.metadata.src for r in replies] == nodes
        error = replies[1].error
        assert error is not None and error.code == "BrokenProcessPool", error
        # a and c were in the pool too: each answered or failed with it, none hangs
        for reply in (replies[0], replies[2]):
            assert reply.error is None or reply.error.code == "BrokenProcessPool"
        after = list(grid.send_and_receive(_tasks(nodes), timeout=60))
        assert [r.error for r in after] == [None, None, None]
        grid.push(_tasks(["b"], **{"kill-b": str(tmp_path / "killed-again")}))
        pulled = grid.pull(timeout=60)
        assert pulled is not None and pulled.error is not None
        assert pulled.error.code == "BrokenProcessPool"
    finally:
        grid.close()


def test_a_run_goes_on_past_a_killed_worker_as_its_strategy_says(tmp_path: Path) -> None:
    """Round 1 kills b's worker: the round keeps the replies it got (no minimum asked),
    and the run's next rounds run on fresh workers."""
    marker = str(tmp_path / "killed-b")
    strategy = FedAvg(
        initial_arrays=Arrays({"w": np.zeros(4)}), fraction_evaluate=0.0,
        min_available_nodes=3, train_config={"kill-b": marker},
    )  # fmt: skip
    app = ServerApp(lambda ctx: ServerConfig(strategy, num_rounds=2))
    result = run_simulation(
        app, APP_REF, node_ids=["a", "b", "c"], backend="processes", workers=2,
        nodes_per_batch=1, app_path=[str(HERE)],
    )  # fmt: skip
    assert [r.round for r in result.history.rounds] == [1, 2]
    outcomes = [{n.node_id: n.outcome.value for n in r.nodes} for r in result.history.rounds]
    assert outcomes[0]["b"] != "ok" and outcomes[1] == {"a": "ok", "b": "ok", "c": "ok"}


def test_fedbuff_pushes_and_pulls_through_batches() -> None:
    strategy = FedBuff(buffer_size=2, concurrency=3, initial_arrays=Arrays({"w": np.zeros(4)}))
    app = ServerApp(lambda ctx: AsyncServerConfig(strategy, num_steps=3))
    result = run_simulation(
        app, APP_REF, node_ids=["a", "b", "c", "d"], backend="processes", workers=2,
        app_path=[str(HERE)],
    )  # fmt: skip
    assert [r.round for r in result.history.rounds] == [1, 2, 3]
    folded = [n for r in result.history.rounds for n in r.nodes if n.outcome.value == "ok"]
    assert len(folded) == 6


@pytest.mark.skipif(cpu_count() < 2, reason="one CPU: one worker by default")
def test_workers_default_to_one_per_cpu(tmp_path: Path) -> None:
    """Two tasks that each wait for the other can only finish in two workers at once."""
    grid = _grid(["a", "b"], nodes_per_batch=1)  # workers not given
    try:
        tasks = _tasks(["a", "b"], meet=str(tmp_path), **{"meet-nodes": "a,b"})
        replies = list(grid.send_and_receive(tasks, timeout=60))
    finally:
        grid.close()
    assert [r.error for r in replies] == [None, None]
    assert len({r.content.metric_values["pid"] for r in replies if r.content}) == 2


def test_a_batch_size_below_one_is_refused() -> None:
    with pytest.raises(ConfigError, match="nodes_per_batch must be >= 1"):
        ProcessNodes(
            APP_REF, [], known=set(), node_config=lambda n: {}, run_config={}, seed=0,
            workers=1, nodes_per_batch=0,
        )  # fmt: skip


def test_the_cli_runs_processes_in_batches_to_the_threads_model_bytes(tmp_path: Path) -> None:
    """`consortium simulate --backend processes --nodes-per-batch 3` (workers: one per
    CPU) writes the model `--backend threads` writes, bit for bit."""
    from consortium.cli.main import cli

    app = str(HERE.parent.parent / "examples" / "heart_disease")
    common = ["--no-tracking", "--no-progress", "--no-plot", "--seed", "7"]
    common += ["--run-config", "num-rounds=2"]
    runs = {
        "threads": ["--backend", "threads"],
        "processes": ["--backend", "processes", "--nodes-per-batch", "3"],
    }
    for name, options in runs.items():
        out = CliRunner().invoke(
            cli, ["simulate", app, *options, "--run-dir", str(tmp_path / name), *common]
        )
        assert out.exit_code == 0, out.output
    a, b = (
        np.load(tmp_path / "threads" / "model.npz"),
        np.load(tmp_path / "processes" / "model.npz"),
    )
    assert list(a.keys()) == list(b.keys()) and a.keys()
    for name in a:
        assert a[name].tobytes() == b[name].tobytes(), name
    refused = CliRunner().invoke(
        cli, ["simulate", app, "--nodes-per-batch", "2", "--run-dir", str(tmp_path / "x")]
    )
    assert isinstance(refused.exception, ConfigError), refused.output
    assert "--nodes-per-batch needs the processes backend, not threads" in str(refused.exception)


def _server() -> ServerApp:
    return ServerApp(
        lambda ctx: ServerConfig(FedAvg(initial_arrays=Arrays({"w": np.zeros(4)})), num_rounds=1)
    )


def test_an_app_that_cannot_be_imported_fails_the_run_at_once_with_its_error(
    tmp_path: Path,
) -> None:
    """The workers load the app: its import error ends the run with that error (and the
    line of the app that raised), not each node failing with a bare BrokenProcessPool."""
    (tmp_path / "typo_app.py").write_text(
        "import numpy\n\nraise ImportError(\"no module named 'torchh'\")\n"
    )
    with pytest.raises(ConfigError) as caught:
        run_simulation(
            _server(), "typo_app:app", num_nodes=6, backend="processes", workers=2,
            app_path=[str(tmp_path)],
        )  # fmt: skip
    message = str(caught.value)
    assert message.startswith("the client app 'typo_app:app' could not be loaded in a worker")
    assert "no module named 'torchh'" in message
    assert f'File "{tmp_path / "typo_app.py"}", line 3' in message
    assert caught.value.__cause__ is None  # the worker's stack is not printed twice


def test_workers_that_die_at_start_fail_the_run_at_once_naming_the_likely_cause(
    tmp_path: Path,
) -> None:
    """A worker that ends before running any task (as one does when the script that
    starts the run calls run_simulation at import time, unguarded) ends the run with
    one error saying so, instead of every batch failing, each on a fresh pool."""
    (tmp_path / "exiting_app.py").write_text("import os\n\nos._exit(3)\n")
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r'ended before running any task.*__name__ == "__main__"'):
        run_simulation(
            _server(), "exiting_app:app", num_nodes=2000, backend="processes", workers=2,
            app_path=[str(tmp_path)],
        )  # fmt: skip
    assert time.monotonic() - started < 30


def test_a_round_deadline_holds_while_the_workers_are_still_starting(tmp_path: Path) -> None:
    """The driver waits for its first workers to start no longer than the round's deadline:
    an app slow to import times the round out instead of holding it."""
    (tmp_path / "slow_app.py").write_text(
        "import time\n\ntime.sleep(3)\n\nfrom test_process_backend import client_app  # noqa\n"
    )
    grid = SimulationGrid(
        "slow_app:client_app", ["a"], backend="processes", workers=1,
        app_path=[str(tmp_path), str(HERE)],
    )  # fmt: skip
    try:
        started = time.monotonic()
        replies = list(grid.send_and_receive(_tasks(["a"]), timeout=0.5))
        assert time.monotonic() - started < 2.0
        assert replies == []  # given up at the deadline
    finally:
        grid.close()
