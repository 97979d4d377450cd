"""Model-sized tasks and replies cross between each process and its app process as
shared memory (``sandbox/shared_blocks.py``), in a real deployment: `consortium
server` and `consortium node` over mutual TLS, each app confined in a process of its
own. The server app sends a 20 MB model three rounds running; the node's app returns
it plus one. Every reply must arrive exact; each of the four processes must have
mapped shared blocks: the node's task and the node's reply (received into blocks of
its app process / written into the app's own), the server app's model (read by the
server where the app wrote it) and the reply (received by the server into a block of
its app process, which reads it there). Read from ``/proc/PID/maps`` while the
server app waits at its end: the apps themselves may not read ``/proc``."""

from __future__ import annotations

from pathlib import Path

import pytest

from consortium.sandbox.confine import landlock_available

from .conftest import PLUS_ONE_APP, PLUS_ONE_MAIN, Deployment, writable_blocks, write_app

pytestmark = pytest.mark.skipif(not landlock_available(), reason="needs Linux Landlock")

NODE = "cleveland"

APP = PLUS_ONE_APP + PLUS_ONE_MAIN

MANIFEST = """
[app]
name = "shared-memory"
version = "1.0.0"
server = "big:app"
client = "big:client"
"""


def _shared_maps(pid: int) -> int:
    with open(f"/proc/{pid}/maps") as fh:
        return sum("memfd:consortium-" in line for line in fh)


def test_model_sized_messages_cross_to_the_apps_as_shared_memory_and_arrive_exact(
    deployment: Deployment, tmp_path: Path
) -> None:
    app = write_app(tmp_path / "big", MANIFEST, {"big": APP})
    deployment.start_server()
    deployment.start_node(NODE, app=app)
    run_id = deployment.start_run(app, {"rounds": 3}, seed=1)
    deployment.wait_rounds(run_id, 3)
    maps = {
        "server": _shared_maps(deployment.procs["server"].pid),
        "server app": _shared_maps(deployment.app_process("server", "consortium.server.isolation")),
        "node": _shared_maps(deployment.procs[NODE].pid),  # reads the app's reply where it lies
        "node app": _shared_maps(deployment.app_process(NODE, "consortium.node.app_process")),
    }
    node_blocks = writable_blocks(deployment.procs[NODE].pid)
    (deployment.run_dir(run_id) / "work" / "go").write_text("")
    info = deployment.wait_run(run_id, timeout=120)

    assert info["status"] == "finished", (info, deployment.log("server"), deployment.log(NODE))
    rounds = info["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert all(r["metrics"][f"central_{NODE}"] == 1.0 for r in rounds), rounds
    # each app maps its parent's block (task or reply) and writes what it sends into one
    # of its own, which its parent reads where it lies
    assert all(count >= 2 for count in maps.values()), maps
    # the node's app maps its task copy-on-write and gives the block back with its
    # reply: one block received every round's task
    assert node_blocks == 1, f"the node made {node_blocks} blocks for 3 tasks"
