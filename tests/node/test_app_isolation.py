"""A node runs a coordinator's client app in its own confined process (issue 11, item 4).

Each test runs a real :class:`NodeRunner` (the deployed node's loop) over an
in-memory connection to a real :class:`Fleet`, with the node's credentials
issued by a real CA as in a deployment. What the app tried is reported back
in its reply: reading the node's key (no), the granted data (yes), the network
(no); v2 of a module after v1 (v2 runs); its client state across rounds (kept,
also across a crash of its process); a process that dies or runs out of memory
(an error reply naming why; the node and the run go on); a model-sized task and
reply (they cross as shared memory, ``sandbox/shared_blocks.py``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from consortium.apps.bundle import bundle_digest, make_bundle
from consortium.core.arrays import Arrays
from consortium.core.fleet_info import RunBundle
from consortium.core.message import Content, Message
from consortium.core.protocol import ERROR_APP_PROCESS
from consortium.node.isolated import AppIsolation
from consortium.node.memory import InMemoryConnection
from consortium.node.runner import NodePolicy, NodeRunner
from consortium.sandbox.confine import SandboxLimits, landlock_available
from consortium.server.fleet import Fleet
from consortium.transport.ca import CertificateAuthority

pytestmark = pytest.mark.skipif(
    not landlock_available(), reason="needs Linux Landlock (the node refuses to run apps)"
)

NODE = "hospital-a"
APP_NAME = "probe"
KIND = "query"  # the Fleet passes any kind on; no round-loop validation of replies

MANIFEST = """
[app]
name = "probe"
version = "{version}"
server = "probe_app:client_app"
client = "probe_app:client_app"
"""

CODE = """
import os
import socket
import threading
import time

import numpy as np

from consortium.client import ClientApp
from consortium.core.arrays import Arrays

VERSION = {version}
client_app = ClientApp()


def try_read(path):
    try:
        with open(path, "rb") as fh:
            return "read:" + fh.read().decode(errors="replace")
    except OSError as exc:
        return "refused:" + type(exc).__name__


@client_app.query()
def query(msg, context):
    cfg = msg.content.config
    action = str(cfg.get("action", ""))
    if action == "die":
        os._exit(9)
    if action == "exit-later":  # after its reply, between two tasks
        threading.Thread(target=lambda: (time.sleep(0.2), os._exit(7)), daemon=True).start()
        return msg.reply(metrics={{"pid": os.getpid()}})
    if action == "big":  # a model-sized update: what was received, plus one
        w = msg.content.arrays["model"]["w"]
        return msg.reply(arrays=Arrays({{"w": w + 1}}), metrics={{"pid": os.getpid()}})
    if action == "hoard":
        hoard = np.ones(3 * 1024**3 // 8)  # 3 GiB, over the 1 GiB limit
        return msg.reply(metrics={{"bytes": float(hoard.nbytes)}})
    if action == "probe":
        found = [try_read(str(p)) for p in cfg["paths"]]
        found.append(try_read(f"/proc/{{os.getppid()}}/environ"))
        found.append(try_read(f"/proc/{{os.getppid()}}/mem"))
        try:
            socket.create_connection(("127.0.0.1", int(cfg["port"])), timeout=2).close()
            found.append("network:connected")
        except OSError as exc:
            found.append("network:" + type(exc).__name__)
        return msg.reply(config={{"found": found}})
    counter = context.state.configs.setdefault("counter", {{"n": 0}})
    counter["n"] = int(counter["n"]) + 1
    return msg.reply(metrics={{"version": VERSION, "count": counter["n"], "pid": os.getpid()}})
"""


def _bundle(tmp_path: Path, run_id: str, version: int) -> RunBundle:
    folder = tmp_path / f"app-{run_id}"
    folder.mkdir()
    (folder / "consortium.toml").write_text(MANIFEST.format(version=f"{version}.0.0"))
    (folder / "probe_app.py").write_text(CODE.format(version=version))
    bundle = make_bundle(folder)
    return RunBundle(
        run_id=run_id, app_name=APP_NAME, app_version=f"{version}.0.0",
        client_entry="probe_app:client_app", bundle=bundle, bundle_sha256=bundle_digest(bundle),
        run_config_json="{}", seed=1,
    )  # fmt: skip


@dataclass
class Node:
    """A node serving on a thread; :meth:`ask` sends it one task and returns its reply."""

    fleet: Fleet
    runner: NodeRunner
    runs: dict[str, RunBundle]
    tmp_path: Path

    def add_run(self, run_id: str, version: int = 1) -> None:
        self.runs[run_id] = _bundle(self.tmp_path, run_id, version)

    def ask(self, run_id: str, round_: int = 1, **config: object) -> Message:
        task = Message.create(run_id=run_id, dst=NODE, round=round_, kind=KIND,
                              content=Content.of(config=config))  # type: ignore[arg-type]  # fmt: skip
        (reply,) = list(self.fleet.send_and_receive([task], timeout=120))
        assert reply.metadata.reply_to == task.metadata.message_id
        return reply


@pytest.fixture(scope="module")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The node's key and certificate, issued by a real CA, laid out as a deployment's."""
    root = tmp_path_factory.mktemp("federation")
    ca = CertificateAuthority.init(root / "ca")
    ca.issue("node", NODE, root / "credentials" / NODE)
    return root / "credentials" / NODE


@pytest.fixture
def start_node(tmp_path: Path, credentials: Path) -> Iterator[Callable[..., Node]]:
    started: list[tuple[Node, threading.Thread]] = []

    def start(**isolation: object) -> Node:
        runs: dict[str, RunBundle] = {}
        fleet = Fleet(heartbeat_interval=0.2, offline_after=60.0,
                      bundles=lambda node, run_id: runs.get(run_id))  # fmt: skip
        runner = NodeRunner(
            InMemoryConnection(fleet, NODE),
            node_config={},
            work_dir=tmp_path / "node",
            policy=NodePolicy(trust_server_apps=True),
            poll_wait=0.2,
            isolation=AppIsolation(secrets=(credentials,), **isolation),  # type: ignore[arg-type]
        )
        thread = threading.Thread(target=runner.run, daemon=True)
        thread.start()
        node = Node(fleet, runner, runs, tmp_path)
        started.append((node, thread))
        return node

    yield start
    for node, thread in started:
        node.runner.stop.set()
        thread.join(20)
        node.fleet.close()
        assert not thread.is_alive(), "the node did not stop"


def test_the_app_can_read_neither_the_nodes_key_nor_its_memory_nor_the_network(
    start_node: Callable[..., Node], credentials: Path, tmp_path: Path
) -> None:
    data = tmp_path / "hospital-data"
    data.mkdir()
    (data / "records.csv").write_text("age,bp\n61,140\n")
    elsewhere = tmp_path / "not-granted.txt"
    elsewhere.write_text("NOT-GRANTED")
    node = start_node(read_paths=(data,))
    node.add_run("exfil0001")
    key = credentials / f"{NODE}.key"
    paths = [key, credentials / "ca.crt", elsewhere, data / "records.csv"]

    reply = node.ask("exfil0001", action="probe", paths=[str(p) for p in paths], port=9)

    assert reply.error is None, reply.error
    assert reply.content is not None
    found = list(reply.content.config["found"])  # type: ignore[arg-type]
    assert found[:3] == ["refused:PermissionError"] * 3, found
    assert found[3] == "read:age,bp\n61,140\n", "the data the policy grants stays readable"
    assert found[4:6] == ["refused:PermissionError"] * 2, "the node's environment and memory"
    assert found[6] == "network:PermissionError", found
    key_text = key.read_text()
    body = key_text.split("-----")[2].strip()  # the base64 key material
    assert body and body[:40] not in repr(found)


def test_v2_of_a_module_runs_after_v1_under_the_same_name(
    start_node: Callable[..., Node],
) -> None:
    node = start_node()
    node.add_run("first0001", version=1)
    node.add_run("second001", version=2)

    first = node.ask("first0001")
    second = node.ask("second001")

    assert first.content is not None and second.content is not None, (first, second)
    assert first.content.metric_values["version"] == 1
    assert second.content.metric_values["version"] == 2


def test_client_state_persists_across_rounds_and_a_crash_of_the_app_process(
    start_node: Callable[..., Node],
) -> None:
    node = start_node()
    node.add_run("state0001")

    counts = []
    pids = set()
    for round_ in (1, 2, 3):
        reply = node.ask("state0001", round_)
        assert reply.content is not None, reply.error
        counts.append(reply.content.metric_values["count"])
        pids.add(reply.content.metric_values["pid"])
    died = node.ask("state0001", 4, action="die")
    after = node.ask("state0001", 5)

    assert counts == [1, 2, 3]
    assert len(pids) == 1, "one app process serves the run's rounds"
    assert died.error is not None
    assert died.error.code == ERROR_APP_PROCESS
    assert "exited with status 9" in died.error.reason, died.error.reason
    assert after.content is not None, after.error
    assert after.content.metric_values["count"] == 4, "a fresh process resumes the saved state"
    assert after.content.metric_values["pid"] not in pids


def test_a_dying_app_process_fails_its_task_and_the_node_goes_on(
    start_node: Callable[..., Node],
) -> None:
    node = start_node()
    node.add_run("dies00001")
    node.add_run("after0001", version=3)

    died = node.ask("dies00001", action="die")
    after = node.ask("after0001")

    assert died.error is not None and died.error.code == ERROR_APP_PROCESS
    assert "the run's app process exited with status 9" in died.error.reason
    assert after.content is not None, after.error
    assert after.content.metric_values["version"] == 3
    assert node.runner.tasks_done == 1


def test_an_app_process_that_died_between_tasks_fails_the_next_one_only(
    start_node: Callable[..., Node],
) -> None:
    node = start_node()
    node.add_run("later0001")

    first = node.ask("later0001", action="exit-later")
    time.sleep(1.0)
    next_one = node.ask("later0001", 2)
    then = node.ask("later0001", 3)

    assert first.content is not None, first.error
    assert next_one.error is not None and next_one.error.code == ERROR_APP_PROCESS
    assert "exited with status 7" in next_one.error.reason, next_one.error.reason
    assert then.content is not None, then.error


def test_an_app_over_its_memory_limit_gets_an_error_naming_the_limit(
    start_node: Callable[..., Node],
) -> None:
    node = start_node(limits=SandboxLimits(memory_bytes=1024**3))
    node.add_run("greedy001")

    reply = node.ask("greedy001", action="hoard")
    again = node.ask("greedy001", 2)

    assert reply.error is not None and reply.error.code == "MemoryError"
    assert "ran out of memory" in reply.error.reason and "1 GiB" in reply.error.reason
    assert again.content is not None, again.error


def test_a_secret_inside_a_tree_the_app_may_read_fails_the_task(
    start_node: Callable[..., Node], credentials: Path
) -> None:
    """A grant that covers the node's key is refused, not run: the key stays unreadable."""
    node = start_node(read_paths=(credentials.parent,))
    node.add_run("leaky0001")

    reply = node.ask("leaky0001")

    assert reply.error is not None and reply.error.code == ERROR_APP_PROCESS
    assert "which a sandboxed app may read" in reply.error.reason


def test_a_model_sized_task_and_reply_cross_to_and_from_the_app_as_shared_memory(
    start_node: Callable[..., Node],
) -> None:
    node = start_node()
    node.add_run("big00001")
    model = np.arange(5_000_000, dtype=np.float32)  # 20 MB: over SHARE_MIN_BYTES
    for round_ in (1, 2, 3):  # round 1 starts the app process; later rounds reuse blocks
        task = Message.create(run_id="big00001", dst=NODE, round=round_, kind=KIND,
                              content=Content.of(arrays=Arrays({"w": model}),
                                                 config={"action": "big"}))  # fmt: skip
        (reply,) = list(node.fleet.send_and_receive([task], timeout=120))
        assert reply.error is None, reply.error
        assert reply.content is not None
        np.testing.assert_array_equal(reply.content.arrays["model"]["w"], model + 1)
    assert reply.content is not None
    pid = int(reply.content.metric_values["pid"])
    app_maps = Path(f"/proc/{pid}/maps").read_text()
    # the app reads the node's block of its task and writes its reply into one of its own
    assert app_maps.count("memfd:consortium-") >= 2, app_maps
    # and the node reads that reply where it lies
    assert "memfd:consortium-" in Path("/proc/self/maps").read_text()
