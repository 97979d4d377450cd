"""Every CLI command exits with the code docs/operations.md documents for each cause.

Each test runs the real ``consortium`` entry point in a subprocess. The
deployed ones use the deployment tests' fixtures (a CA, a `consortium server`
process, `consortium node` processes). A revoked node's exit 11 is in
tests/hostile/test_hostile_nodes_refused.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from consortium.transport.ca import CertificateAuthority
from deploy.conftest import Deployment, deployment, federation

__all__ = ["deployment", "federation"]  # the fixtures, re-exported for pytest

EXE = str(Path(sys.executable).parent / "consortium")

APP = """
import numpy as np

from consortium import Arrays, ClientApp, FedAvg, ServerApp, ServerConfig

client_app = ClientApp()


@client_app.train()
def train(msg, ctx):
    {train}


def _server(ctx):
    {server}
    strategy = FedAvg(
        init_fn=lambda rng: Arrays({{"w": rng.normal(size=4)}}),
        fraction_evaluate=0.0,
        min_available_nodes=int(ctx.run_config["min-nodes"]),
    )
    return ServerConfig(
        strategy, num_rounds=1, min_replies=int(ctx.run_config["min-nodes"]),
        round_timeout=30.0, node_wait=30.0,
    )


server_app = ServerApp(_server)
"""

MANIFEST = """
[app]
name = "{name}"
version = "1.0.0"
server = "{module}:server_app"
client = "{module}:client_app"

[run-config]
min-nodes = 2
"""

#: what the leaky app's exception says: private data that must not leave the silo
SECRET = "patient 4711"
LEAK = f'raise ValueError("{SECRET} has a blood pressure of 190/120")'
TRAIN_OK = 'return msg.reply(arrays=msg.content.model, metrics={"num_examples": 1})'


def make_app(root: Path, name: str, *, train: str = TRAIN_OK, server: str = "pass") -> Path:
    """An app folder whose client trains with ``train`` and whose server_fn starts with
    ``server`` (one statement each)."""
    module = name.replace("-", "_")
    app = root / name
    app.mkdir()
    (app / "consortium.toml").write_text(MANIFEST.format(name=name, module=module))
    (app / f"{module}.py").write_text(APP.format(train=train, server=server))
    return app


def consortium(*args: str, env: dict[str, str] | None = None, timeout: float = 120):  # type: ignore[no-untyped-def]
    """Run the CLI in a folder of its own (a node writes node-data/ where it starts)."""
    return subprocess.run(
        [EXE, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        cwd=tempfile.mkdtemp(prefix="consortium-cli-"),
    )


def simulate(app: Path, tmp_path: Path, *extra: str):  # type: ignore[no-untyped-def]
    return consortium(
        "simulate", str(app), "--nodes", "2", "--run-dir", str(tmp_path / "run"),
        "--no-tracking", "--no-progress", "--no-plot", *extra,
    )  # fmt: skip


# -- 0 and 2: every command, a good and a malformed call ------------------------------
def test_help_and_version_exit_0() -> None:
    for args in (["--help"], ["--version"], ["run", "--help"], ["ca", "--help"]):
        assert consortium(*args).returncode == 0, args


def test_a_malformed_app_config_exits_2_naming_the_field(tmp_path: Path) -> None:
    app = tmp_path / "broken"
    app.mkdir()
    (app / "consortium.toml").write_text('[app]\nname = "broken"\nversion = "1"\nserver = "a:b"\n')
    for args in (["simulate", str(app)], ["run", "start", str(app), "--server", "127.0.0.1:1",
                                          "--insecure"]):  # fmt: skip
        done = consortium(*args)
        assert done.returncode == 2, done.stderr
        assert "missing field 'app.client'" in done.stderr and "Traceback" not in done.stderr


def test_bad_options_exit_2(tmp_path: Path) -> None:
    calls = [
        ["simulate", str(tmp_path / "nowhere")],
        ["demo", "--no-such-option"],
        ["ca", "init", "surplus-argument"],
        ["ca", "revoke", "nobody", "--dir", str(tmp_path / "no-ca")],
        ["server", "--address", "127.0.0.1:0", "--workdir", str(tmp_path / "s")],  # no --allow
        ["server", "--allow", "a", "--insecure", "--unread-mb", "0"],
        ["node", "--server", "127.0.0.1:1", "--insecure", "--send-errors", "everything"],
        ["node", "--server", "127.0.0.1:1", "--insecure"],  # --insecure needs --name
        ["run", "list", "--server", "127.0.0.1:1", "--credentials", str(tmp_path / "none")],
        ["run", "show", "x", "--server", "127.0.0.1:1", "--credentials", str(tmp_path / "none")],
        ["run", "stop", "x", "--server", "127.0.0.1:1", "--credentials", str(tmp_path / "none")],
    ]
    for args in calls:
        done = consortium(*args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr, args


def test_a_ca_that_exists_already_exits_2(tmp_path: Path) -> None:
    assert consortium("ca", "init", "--dir", str(tmp_path / "ca")).returncode == 0
    again = consortium("ca", "init", "--dir", str(tmp_path / "ca"))
    assert again.returncode == 2 and "already exists" in again.stderr


# -- 5, 7, 8, 9 in simulation ----------------------------------------------------------
def test_a_simulated_run_whose_nodes_all_fail_exits_5(tmp_path: Path) -> None:
    done = simulate(make_app(tmp_path, "leaky", train=LEAK), tmp_path)
    assert done.returncode == 5, done.stderr
    assert "ValueError" in done.stderr


def test_a_strategy_outside_its_guarantees_exits_7(tmp_path: Path) -> None:
    server = "FedAvg(fraction_train=2.0)"
    done = simulate(make_app(tmp_path, "bad-strategy", server=server), tmp_path)
    assert done.returncode == 7, done.stderr
    assert "fraction_train must be within [0, 1]" in done.stderr


def test_an_unknown_data_set_exits_8(tmp_path: Path) -> None:
    server = (
        "__import__('consortium.datasets.heart_disease').datasets.heart_disease.load_center('mars')"
    )
    done = simulate(make_app(tmp_path, "no-data", server=server), tmp_path)
    assert done.returncode == 8, done.stderr
    assert "unknown heart-disease center 'mars'" in done.stderr


def test_a_missing_optional_dependency_exits_9(tmp_path: Path) -> None:
    # a Python without gRPC: the deployment commands name the extra to install
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['grpc'] = None\n")
    env = {"PYTHONPATH": str(tmp_path)}
    for args in (["node", "--server", "127.0.0.1:1", "--insecure", "--name", "a"],
                 ["run", "list", "--server", "127.0.0.1:1", "--insecure"]):  # fmt: skip
        done = consortium(*args, env=env)
        assert done.returncode == 9, (args, done.stderr)
        assert "pip install 'consortium[deploy]'" in done.stderr


# -- 10, 11, 5 against a deployment -----------------------------------------------------
def test_an_unreachable_server_exits_10(deployment: Deployment) -> None:
    alice = str(deployment.fed.creds("alice"))
    for args in (["run", "list"], ["run", "show", "x"], ["run", "stop", "x"]):
        done = consortium(*args, "--server", "127.0.0.1:1", "--credentials", alice, timeout=60)
        assert done.returncode == 10, (args, done.stderr)
        assert "unreachable" in done.stderr


def test_an_unknown_run_exits_10(deployment: Deployment) -> None:
    port = deployment.start_server()
    alice = str(deployment.fed.creds("alice"))
    done = consortium(
        "run", "show", "nope", "--server", f"127.0.0.1:{port}", "--credentials", alice
    )
    assert done.returncode == 10 and "NOT_FOUND" in done.stderr, done.stderr


def test_a_refused_identity_exits_11(deployment: Deployment) -> None:
    port = deployment.start_server()
    server = f"127.0.0.1:{port}"
    # a node's certificate on the coordinator's API: the wrong role
    node_creds = str(deployment.fed.creds("cleveland"))
    done = consortium("run", "list", "--server", server, "--credentials", node_creds)
    assert done.returncode == 11 and "expected admin" in done.stderr, done.stderr
    # a node of this CA that the server does not allow: it stops at once, saying why
    stranger = f"stranger-{uuid.uuid4().hex[:8]}"
    creds = deployment.workdir / stranger
    CertificateAuthority.load(deployment.fed.ca_dir).issue("node", stranger, creds)
    started = time.monotonic()
    done = consortium(
        "node", "--server", server, "--credentials", str(creds),
        "--work-dir", str(deployment.workdir / "stranger-node"), timeout=60,
    )  # fmt: skip
    assert done.returncode == 11, done.stdout + done.stderr
    assert time.monotonic() - started < 30
    last = done.stderr.strip().splitlines()[-1]  # after the node's own log lines
    assert last.startswith("error: the server refused this node"), done.stderr
    assert "not on this server's allow-list" in last and "--allow" in last  # why, what to do
    assert "Traceback" not in done.stderr


def test_a_failed_run_exits_5_and_private_error_text_stays_on_the_node(
    deployment: Deployment, tmp_path: Path
) -> None:
    """`run start --wait` reports progress and exits 5; the node's exception text reaches
    the server only with --send-errors traceback, and the node's log has it either way."""
    app = make_app(tmp_path, "leaky", train=LEAK)
    port = deployment.start_server()
    plain, open_ = "cleveland", "hungarian"
    start_node(deployment, plain, app)
    admin = ["--server", f"127.0.0.1:{port}", "--credentials", str(deployment.fed.creds("alice"))]
    done = consortium("run", "start", str(app), *admin, "--run-config", "min-nodes=1", "--wait")
    assert done.returncode == 5, done.stdout + done.stderr
    run_id = done.stdout.splitlines()[0]
    assert re.search(f"^run {run_id}: (pending|running)$", done.stderr, re.M), done.stderr
    assert f"run {run_id} failed" in done.stderr and "ValueError" in done.stderr
    assert SECRET not in done.stdout + done.stderr
    info = deployment.fed.admin(port).show_run(run_id)
    assert info["status"] == "failed" and "ValueError" in info["error"]
    assert SECRET not in json.dumps(info)
    assert SECRET not in deployment.log("server")
    for db in (deployment.workdir / "server").glob("state.db*"):
        assert SECRET.encode() not in db.read_bytes(), db
    node_log = deployment.log(plain)
    assert SECRET in node_log and "Traceback (most recent call last)" in node_log
    # a node that sends its tracebacks, on purpose
    start_node(deployment, open_, app, "--send-errors", "traceback")
    done = consortium("run", "start", str(app), *admin, "--wait")  # min-nodes 2: both
    assert done.returncode == 5, done.stdout + done.stderr
    info = deployment.fed.admin(port).show_run(done.stdout.splitlines()[0])
    assert SECRET in info["error"], info
    assert "Traceback" in deployment.log(open_)


def start_node(deployment: Deployment, name: str, app: Path, *extra: str) -> None:
    """A `consortium node` process for ``name`` running the local ``app``."""
    args = [
        EXE, "node", "--server", f"127.0.0.1:{deployment.port}",
        "--credentials", str(deployment.fed.creds(name)), "--app", str(app),
        "--work-dir", str(deployment.workdir / "nodes" / name), *extra,
    ]  # fmt: skip
    log = open(deployment.workdir / f"{name}.out", "ab")  # noqa: SIM115 - closed with the process
    deployment.procs[name] = subprocess.Popen(
        args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


# -- 0, 11, 12: the audit log ------------------------------------------------------------
def test_audit_verify_exits_0_11_on_a_broken_log_and_12_without_a_database(
    tmp_path: Path,
) -> None:
    from sqlalchemy import create_engine, text

    from consortium.core.audit import RUN_START, AuditEvent
    from consortium.server.store import StateStore, default_url
    from consortium.server.store.append_only import trigger_names
    from consortium.server.store.audit import AuditLog

    workdir = tmp_path / "server-data"
    with StateStore(default_url(workdir)) as store:
        for actor in ("alice", "bob", "carol"):
            AuditLog(store).append(AuditEvent(actor=actor, action=RUN_START))
    done = consortium("audit", "verify", "--workdir", str(workdir))
    assert done.returncode == 0 and "audit log ok: 3 entries" in done.stdout, done.stderr
    engine = create_engine(default_url(workdir))
    with engine.begin() as conn:  # a database admin rewrites who started a run
        for trigger in trigger_names("audit_log"):
            conn.execute(text(f"DROP TRIGGER IF EXISTS {trigger}"))
        conn.execute(text("UPDATE audit_log SET actor = 'mallory' WHERE seq = 2"))
    engine.dispose()
    done = consortium("audit", "verify", "--workdir", str(workdir))
    assert done.returncode == 11, done.stdout + done.stderr
    assert "audit log broken at entry 2" in done.stderr and "Traceback" not in done.stderr
    done = consortium("audit", "verify", "--workdir", str(tmp_path / "nowhere"))
    assert done.returncode == 12 and "no state database at" in done.stderr, done.stderr
