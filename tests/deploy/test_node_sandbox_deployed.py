"""Issue 11 on a real node: the coordinator's client app, run by `consortium node` with
its CA-issued certificate, tries to read the node's private key and to reach the
network; the node runs it in a confined process, so it does neither."""

from __future__ import annotations

from pathlib import Path

import pytest

from consortium.sandbox.confine import landlock_available

from .conftest import Deployment

pytestmark = pytest.mark.skipif(not landlock_available(), reason="needs Linux Landlock")

NODE = "cleveland"

PROBE = """
import os
import socket

from consortium import ClientApp, ServerApp
from consortium.core.message import Content, Message

client = ClientApp()
app = ServerApp()


def grab(path):
    try:
        with open(path) as fh:
            return fh.read()
    except OSError as exc:
        return f"<{type(exc).__name__}>"


@client.query()
def query(msg, context):
    found = {"node-key": grab(str(context.run_config["node-key"])),
             "environ": grab(f"/proc/{os.getppid()}/environ")}
    try:
        socket.create_connection(("127.0.0.1", int(context.run_config["port"])), 2).close()
        found["network"] = "connected"
    except OSError as exc:
        found["network"] = f"<{type(exc).__name__}>"
    return msg.reply(config={k: str(v) for k, v in found.items()})


@app.main()
def main(grid, context):
    (node,) = grid.wait_for_nodes(1, 60)
    task = Message.create(run_id=context.run_id, dst=node, round=1, kind="query",
                          content=Content.of(config={}))
    (reply,) = list(grid.send_and_receive([task], timeout=60))
    raise RuntimeError(f"FOUND {reply.content.config if reply.content else reply.error}")
"""

MANIFEST = """
[app]
name = "node-probe"
version = "1.0.0"
server = "probe:app"
client = "probe:client"

[run-config]
node-key = ""
port = 0
"""


def test_a_client_app_reads_neither_the_node_key_nor_the_network(
    deployment: Deployment, tmp_path: Path
) -> None:
    app = tmp_path / "probe"
    app.mkdir()
    (app / "consortium.toml").write_text(MANIFEST)
    (app / "probe.py").write_text(PROBE)
    port = deployment.start_server()
    deployment.start_node(NODE, app=app)
    key = deployment.fed.creds(NODE) / f"{NODE}.key"
    run_id = deployment.start_run(app, {"node-key": str(key), "port": port}, seed=1)
    info = deployment.wait_run(run_id, timeout=120)

    error = info["error"] or ""
    assert "FOUND" in error, (error, deployment.log(NODE))
    assert "'node-key': '<PermissionError>'" in error, error
    assert "'environ': '<PermissionError>'" in error, error
    assert "'network': '<PermissionError>'" in error, error
    assert "PRIVATE KEY" not in error and key.read_text()[40:80] not in error
    app_log = deployment.workdir / "nodes" / NODE / "runs" / run_id / "app.log"
    assert app_log.exists(), "the app ran in its own process, logging beside its work folder"
