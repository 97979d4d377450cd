"""A real `consortium server` and `consortium node` started from config files only.

The federation's CA and certificates come from the deployment tests' fixtures;
the processes start in a folder of their own, so the relative paths in the files
(the server's work dir and port file, the node's work dir) must resolve beside the
files. The node's ``[node.config]`` table must reach the app with its types: the
app fails its task otherwise, and the run with it.
"""

from __future__ import annotations

import json
import os
import subprocess

from deploy.conftest import EXE, NODES, Deployment, deployment, federation, wait_for

__all__ = ["deployment", "federation"]  # the fixtures, re-exported for pytest

APP = """
from consortium import Arrays, ClientApp, FedAvg, ServerApp, ServerConfig

client_app = ClientApp()


@client_app.train()
def train(msg, ctx):
    # what the node's config file says, with its TOML types
    assert ctx.node_config["center"] == "from-the-file", ctx.node_config
    assert ctx.node_config["epochs"] == 2, ctx.node_config
    return msg.reply(arrays=msg.content.model, metrics={"num_examples": 1})


server_app = ServerApp(lambda ctx: ServerConfig(
    FedAvg(init_fn=lambda rng: Arrays({"w": rng.normal(size=4)}), fraction_evaluate=0.0,
           min_available_nodes=1),
    num_rounds=1, min_replies=1, round_timeout=30.0, node_wait=30.0,
))
"""

MANIFEST = """
[app]
name = "configured"
version = "1.0.0"
server = "configured:server_app"
client = "configured:client_app"
"""


def spawn(dep: Deployment, name: str, args: list[str], env: dict[str, str]) -> None:
    """Start ``consortium ARGS`` in a folder of its own; the deployment kills it at teardown."""
    cwd = dep.workdir / f"{name}-cwd"
    cwd.mkdir()
    log = open(dep.workdir / f"{name}.out", "ab")  # noqa: SIM115 - closed with the process
    dep.procs[name] = subprocess.Popen(
        [EXE, *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd,
        env={**os.environ, **env},
    )  # fmt: skip


def test_a_server_and_a_node_from_config_files_finish_a_run(deployment: Deployment) -> None:
    fed, root = deployment.fed, deployment.workdir
    etc = root / "etc"
    etc.mkdir()
    server_toml = etc / "server.toml"
    server_toml.write_text(f"""
[server]
address = "127.0.0.1:0"
port-file = "port"
credentials = {json.dumps(str(fed.creds("localhost")))}
ca-dir = {json.dumps(str(fed.ca_dir))}
allow = {json.dumps(list(NODES))}
workdir = "server-state"
heartbeat = 0.3
tracking = false
""")
    # the environment overrides the file: only cleveland may join
    spawn(deployment, "server", ["server", "--config-file", str(server_toml)],
          {"CONSORTIUM_SERVER_ALLOW": "cleveland"})  # fmt: skip
    port_file = etc / "port"
    wait_for(lambda: port_file.exists() and port_file.read_text(), 60, "the server's port file")
    deployment.port = int(port_file.read_text())
    assert (etc / "server-state" / "server.log").exists()
    started = deployment.log("server")
    assert f"allowing 1 node(s); data in {etc / 'server-state'}" in started, started

    app = root / "configured"
    app.mkdir()
    (app / "consortium.toml").write_text(MANIFEST)
    (app / "configured.py").write_text(APP)
    node_toml = etc / "node.toml"
    node_toml.write_text(f"""
[node]
server = "127.0.0.1:{deployment.port}"
credentials = {json.dumps(str(fed.creds("cleveland")))}
app = [{json.dumps(str(app))}]
work-dir = "cleveland-work"

[node.config]
center = "from-the-file"
epochs = 2
""")
    done = subprocess.run([EXE, "config", "check", str(node_toml)], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    spawn(deployment, "cleveland", ["node", "--config-file", str(node_toml)], {})

    run_id = deployment.start_run(app, {}, seed=7)
    info = deployment.wait_run(run_id, timeout=120)
    assert info["status"] == "finished", (info, deployment.log("cleveland"))
    assert (etc / "cleveland-work" / "node.log").exists()
    assert not (root / "cleveland-cwd" / "node-data").exists()
