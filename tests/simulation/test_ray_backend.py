"""The Ray backend on a real multi-raylet Ray cluster on loopback (ray.cluster_utils.Cluster).

One cluster (two raylets, one CPU each, small object stores) serves the whole
module. The node app below is loaded by reference in Ray's worker processes
(``test_ray_backend:client_app``), as ``consortium simulate`` loads an app.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from consortium.client import ClientApp
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import ConfigError
from consortium.core.message import TRAIN, Content, Message
from consortium.simulation import run_simulation
from consortium.simulation.ray_backend import RayGrid, RayOptions

HERE = Path(__file__).parent
REPO = HERE.parent.parent
APP_REF = "test_ray_backend:client_app"
TOY_DIR = HERE / "toyapp"
RUN_ID = "raybackend1"
#: keep every address Ray picks on loopback (Ray reads it when imported and when it starts)
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
STORE_BYTES = 80 * 1024 * 1024

client_app = ClientApp()


@client_app.train()
def train(msg: Message, ctx: Context) -> Message:
    """model + 1; reports where it ran and whether it could write the model it got.
    ``kill-<node>`` names a marker file: the first task to see it missing creates it and
    kills its own worker process (SIGKILL: no cleanup, as the OOM killer would)."""
    assert msg.content is not None and msg.content.model is not None
    import ray

    marker = msg.content.config.get(f"kill-{ctx.node_id}")
    if isinstance(marker, str) and not os.path.exists(marker):
        Path(marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    # a task that holds its raylet's only CPU makes the scheduler use the other one; with
    # ``meet`` (a folder) it holds it until tasks have run on two raylets (``hold`` at most)
    hold, meet = float(msg.content.config.get("hold", 0.0)), msg.content.config.get("meet")
    if isinstance(meet, str):
        Path(meet, ray.get_runtime_context().get_node_id()).touch()
        deadline = time.monotonic() + hold
        while len(os.listdir(meet)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    else:
        time.sleep(hold)
    model = msg.content.model
    return msg.reply(
        arrays=Arrays({"w": model["w"] + 1}),
        config={"raylet": ray.get_runtime_context().get_node_id()},
        metrics={"num_examples": 1, "writeable": int(model["w"].flags.writeable)},
    )


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """Two raylets on loopback, one CPU each; the test process is the driver."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in LOOPBACK_ENV.items():
            mp.setenv(key, value)
        ray = pytest.importorskip("ray")
        from ray._private import ray_constants
        from ray.cluster_utils import Cluster

        mp.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)  # if Ray was imported already
        assert not ray.is_initialized(), "another test left Ray connected"
        node = {
            "num_cpus": 1,
            "object_store_memory": STORE_BYTES,
            "node_ip_address": "127.0.0.1",
            "include_log_monitor": False,
        }
        nodes = Cluster(
            initialize_head=True,
            head_node_args={**node, "include_dashboard": False, "no_monitor": True},
        )
        try:
            nodes.add_node(wait=False, **node)  # starts while the driver connects
            ray.init(address=nodes.address, logging_level="WARNING")
            nodes.wait_for_nodes()
            yield str(nodes.address)
        finally:
            ray.shutdown()
            nodes.shutdown()


def _tasks(nodes: list[str], value: float = 0.0, **config: str | float) -> list[Message]:
    content = Content.of(Arrays({"w": np.full(4, value)}), dict(config))
    return [
        Message.create(run_id=RUN_ID, dst=n, round=1, kind=TRAIN, content=content) for n in nodes
    ]


def _grid(nodes: list[str], **options: int) -> RayGrid:
    return RayGrid(APP_REF, nodes, app_path=[str(HERE)], options=RayOptions(**options))


# -- options (no cluster) --------------------------------------------------------------------
def test_options_come_from_the_run_config() -> None:
    opts = RayOptions.from_run_config(
        {"ray-num-cpus": 2, "ray-num-gpus": 0.5, "ray-memory": 2**30, "ray-max-retries": 0,
         "ray-nodes-per-task": 50},
        address="auto",
    )  # fmt: skip
    assert opts == RayOptions("auto", 2.0, 0.5, 2**30, 0, nodes_per_task=50)
    assert opts.task_options() == {
        "num_cpus": 2.0, "num_gpus": 0.5, "memory": 2**30, "max_retries": 0,
        "retry_exceptions": False,
    }  # fmt: skip
    assert RayOptions.from_run_config({}) == RayOptions()


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"ray-num-cpus": "two"}, "ray-num-cpus"),
        ({"ray-num-gpus": -1}, "ray-num-gpus"),
        ({"ray-memory": 1.5}, "ray-memory"),
        ({"ray-max-retries": -1}, "ray-max-retries"),
        ({"ray-max-in-flight": 0}, "ray-max-in-flight"),
        ({"ray-nodes-per-task": 0}, "ray-nodes-per-task"),
        ({"ray-num-cpus": True}, "ray-num-cpus"),
    ],
)
def test_a_bad_option_names_its_key(config: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        RayOptions.from_run_config(config)  # type: ignore[arg-type]


def test_a_ray_address_without_the_ray_backend_is_refused(tmp_path: Path) -> None:
    from consortium.cli.main import cli

    app = str(REPO / "examples" / "heart_disease")
    out = CliRunner().invoke(
        cli, ["simulate", app, "--ray-address", "127.0.0.1:1", "--run-dir", str(tmp_path)]
    )
    assert isinstance(out.exception, ConfigError), out.output
    assert "--ray-address needs --backend ray" in str(out.exception)


# -- on the cluster --------------------------------------------------------------------------
def test_heart_disease_on_ray_gives_the_threads_model_bytes(cluster: str, tmp_path: Path) -> None:
    """The issue's acceptance check: `consortium simulate examples/heart_disease --backend
    ray --ray-address ADDR` (its own driver process, joining the cluster) and `--backend
    threads` write the same final model, bit for bit."""
    from consortium.cli.main import cli

    app = str(REPO / "examples" / "heart_disease")
    common = ["--no-tracking", "--no-progress", "--no-plot", "--seed", "7"]
    common += ["--run-config", "num-rounds=3"]
    threads = CliRunner().invoke(
        cli, ["simulate", app, "--backend", "threads", "--run-dir", str(tmp_path / "t"), *common]
    )
    assert threads.exit_code == 0, threads.output
    env = {**os.environ, **LOOPBACK_ENV}
    ray_run = subprocess.run(
        [str(Path(sys.executable).parent / "consortium"), "simulate", app, "--backend", "ray",
         "--ray-address", cluster, "--run-dir", str(tmp_path / "r"), *common],
        env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )  # fmt: skip
    assert ray_run.returncode == 0, ray_run.stdout + ray_run.stderr
    a, b = np.load(tmp_path / "t" / "model.npz"), np.load(tmp_path / "r" / "model.npz")
    assert list(a.keys()) == list(b.keys()) and a.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].tobytes() == b[name].tobytes(), name


def test_node_state_persists_across_rounds_and_the_model_matches_threads(cluster: str) -> None:
    """toy_app counts each node's rounds in its state and draws from its seeded generator;
    two node tasks share a Ray task (a batch of 2, then of 1), states included."""
    sys.path.insert(0, str(TOY_DIR))
    import toy_app  # type: ignore[import-not-found]

    runs = {
        backend: run_simulation(
            toy_app.server_app, "toy_app:client_app", num_nodes=3, seed=11,
            run_config={"num-rounds": 3, "ray-nodes-per-task": 2}, app_path=[str(TOY_DIR)],
            backend=backend,
        )
        for backend in ("threads", "ray")
    }  # fmt: skip
    assert runs["ray"].arrays["w"].tobytes() == runs["threads"].arrays["w"].tobytes()
    seen = [r.train_metrics["rounds_seen"] for r in runs["ray"].history.rounds]
    assert seen == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("per_task", [1, 2])
def test_tasks_to_one_node_take_turns_with_its_state(cluster: str, per_task: int) -> None:
    """A node's second task starts from the state its first one left, whether the two are
    in one Ray task (a batch) or in two (the second waits on the first's state)."""
    options = RayOptions(nodes_per_task=per_task)
    grid = RayGrid("toy_app:client_app", ["a", "b"], app_path=[str(TOY_DIR)], options=options)
    try:
        replies = list(grid.send_and_receive(_tasks(["a", "b", "a", "b", "a"]), timeout=120))
        grid.push(_tasks(["b", "b"]))
        pulled = [grid.pull(timeout=120), grid.pull(timeout=120)]
    finally:
        grid.close()
    seen = [(r.metadata.src, r.content.metric_values["rounds_seen"]) for r in replies if r.content]
    assert seen == [("a", 1), ("b", 1), ("a", 2), ("b", 2), ("a", 3)]
    assert [r.content.metric_values["rounds_seen"] for r in pulled if r and r.content] == [3, 4]


def test_tasks_spread_over_the_raylets_and_read_the_model_in_place(
    cluster: str, tmp_path: Path
) -> None:
    """Here the ClientApp is an object, not a reference: it travels by the object store,
    pickled by value as a script's own app is (the workers cannot import this module).
    Each task holds its raylet's one CPU until tasks ran on both raylets (or 60 s): a
    worker starting slowly on the second raylet (a loaded machine) cannot let the
    first raylet run every task before it."""
    from ray import cloudpickle

    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    grid = RayGrid(client_app, ["a", "b", "c", "d", "e", "f"])
    try:
        tasks = _tasks(grid.node_ids(), 1.0, hold=60.0, meet=str(tmp_path))
        replies = list(grid.send_and_receive(tasks, timeout=120))
    finally:
        grid.close()
        cloudpickle.unregister_pickle_by_value(module)
    assert [r.metadata.src for r in replies] == ["a", "b", "c", "d", "e", "f"]
    for reply in replies:
        assert reply.content is not None and reply.error is None
        np.testing.assert_array_equal(reply.content.model["w"], np.full(4, 2.0))  # type: ignore[index]
        # the round's model is a read-only view of the object store, not a private copy
        assert reply.content.metric_values["writeable"] == 0
    assert len({r.content.config["raylet"] for r in replies if r.content}) == 2


def test_a_killed_worker_is_retried_and_the_node_answers(cluster: str, tmp_path: Path) -> None:
    marker = tmp_path / "killed-b"
    grid = _grid(["a", "b", "c"], max_retries=1)
    try:
        tasks = _tasks(["a", "b", "c"], **{"kill-b": str(marker)})
        replies = list(grid.send_and_receive(tasks, timeout=120))
    finally:
        grid.close()
    assert marker.exists(), "the task never killed its worker"
    assert [r.error for r in replies] == [None, None, None]
    assert [r.metadata.src for r in replies] == ["a", "b", "c"]


def test_a_killed_worker_without_retries_is_a_failed_node(cluster: str, tmp_path: Path) -> None:
    marker = tmp_path / "killed-b"
    grid = _grid(["a", "b", "c"], max_retries=0)
    try:
        grid.push(_tasks(["a", "b", "c"], **{"kill-b": str(marker)}))
        replies = {}
        while len(replies) < 3:
            reply = grid.pull(120.0)
            assert reply is not None, f"only {sorted(replies)} answered"
            replies[reply.metadata.src] = reply
        assert grid.pull(None) is None
    finally:
        grid.close()
    assert marker.exists()
    error = replies["b"].error
    assert error is not None and error.code == "WorkerCrashedError", error
    assert replies["a"].error is None and replies["c"].error is None


def test_a_node_task_no_raylet_can_hold_is_refused_at_once(cluster: str) -> None:
    with pytest.raises(ConfigError, match=r"ray-num-gpus=1 .*no Ray node"):
        RayGrid(APP_REF, ["a"], app_path=[str(HERE)], options=RayOptions(num_gpus=1))


def test_an_app_that_cannot_be_imported_ends_the_run_with_its_error(
    cluster: str, tmp_path: Path
) -> None:
    """Ray hands back the app's import error (a ConfigError); the grid raises it instead of
    failing each node with it."""
    (tmp_path / "typo_ray_app.py").write_text("raise ImportError(\"no module named 'torchh'\")\n")
    grid = RayGrid("typo_ray_app:app", ["a", "b"], app_path=[str(tmp_path)], options=RayOptions())
    try:
        with pytest.raises(ConfigError) as caught:
            list(grid.send_and_receive(_tasks(["a", "b"]), timeout=120))
    finally:
        grid.close()
    message = str(caught.value)
    assert message.startswith("the client app could not be loaded in a Ray worker")
    assert "no module named 'torchh'" in message
