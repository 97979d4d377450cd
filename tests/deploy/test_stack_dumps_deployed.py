"""``kill -USR1 PID`` prints every thread's stack of a server, a node and their app
processes, and each goes on as before (``core/stack_dumps.py``; operations.md,
"A process that seems stuck"). The stacks of ``consortium server`` and ``consortium
node`` go to their stderr, an app process's to its ``app.log``."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from consortium.core.stack_dumps import STACK_DUMP_SIGNAL
from consortium.sandbox.confine import landlock_available

from .conftest import PLUS_ONE_APP, PLUS_ONE_MAIN, Deployment, wait_for, write_app

pytestmark = pytest.mark.skipif(not landlock_available(), reason="needs Linux Landlock")

NODE = "cleveland"
#: what faulthandler writes for each thread of a process: "Thread 0x... (most recent call first):"
THREAD_LINE = "(most recent call first):"

APP = PLUS_ONE_APP + PLUS_ONE_MAIN

MANIFEST = """
[app]
name = "stack-dumps"
version = "1.0.0"
server = "dumps:app"
client = "dumps:client"
"""


def test_sigusr1_prints_every_threads_stack_and_each_process_goes_on(
    deployment: Deployment, tmp_path: Path
) -> None:
    app = write_app(tmp_path / "dumps", MANIFEST, {"dumps": APP})
    deployment.start_server()
    deployment.start_node(NODE, app=app)
    run_id = deployment.start_run(app, {"size": 1000}, seed=1)
    deployment.wait_rounds(run_id, 1)
    node_runs = deployment.workdir / "nodes" / NODE
    server_app = deployment.app_process("server", "consortium.server.isolation")
    logs = {  # each process, and where its stacks go
        deployment.procs["server"].pid: lambda: deployment.log("server"),
        deployment.procs[NODE].pid: lambda: deployment.log(NODE),
        server_app: lambda: (deployment.run_dir(run_id) / "app.log").read_text(errors="replace"),
        deployment.app_process(NODE, "consortium.node.app_process"): lambda: "".join(
            p.read_text(errors="replace") for p in node_runs.rglob("app.log")
        ),
    }
    before = {pid: read().count(THREAD_LINE) for pid, read in logs.items()}
    for pid in logs:
        os.kill(pid, STACK_DUMP_SIGNAL)
    for pid, read in logs.items():
        wait_for(lambda read=read, pid=pid: read().count(THREAD_LINE) > before[pid], 10,
                 f"the stacks of process {pid}")  # fmt: skip
    time.sleep(0.5)  # a process the signal would end (its default) would be gone by now
    assert all(deployment.procs[name].poll() is None for name in ("server", NODE))
    # the server's stacks show its run's thread, the app's its own main
    assert "host.py" in deployment.log("server")
    assert "app_process.py" in logs[server_app]()

    (deployment.run_dir(run_id) / "work" / "go").write_text("")
    info = deployment.wait_run(run_id, timeout=60)
    assert info["status"] == "finished", (info, deployment.log("server"))
    assert info["rounds"][0]["metrics"][f"central_{NODE}"] == 1.0
