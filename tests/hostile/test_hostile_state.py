"""State you can rely on: real `consortium server` processes (mutual TLS) shut down, killed,
robbed of their database, locked out of it, and started twice."""

from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from consortium.server import load_model
from consortium.server.runs import CRASHED, SHUT_DOWN
from deploy.conftest import EXE, NODES, SLOW_APP
from deploy.test_deployment import _simulate_slow_app

from .conftest import Deployment, wait_for

ROUNDS, SEED = 5, 21


def _checkpoint(dep: Deployment, run_id: str, rnd: int) -> Path:
    return dep.run_dir(run_id) / "checkpoints" / f"round-{rnd:06d}.ckpt"


def _start(dep: Deployment, *extra: str, delay: float = 0.6) -> str:
    dep.start_server(*extra)
    for name in NODES:
        dep.start_node(name)
    return dep.start_run(SLOW_APP, {"num-rounds": ROUNDS, "delay": delay}, seed=SEED)


def _show(dep: Deployment, run_id: str) -> dict[str, Any]:
    admin = dep.fed.admin(dep.port)
    try:
        return admin.show_run(run_id)
    finally:
        admin.close()


def _terminate_server(dep: Deployment) -> int:
    proc = dep.procs.pop("server")
    proc.send_signal(signal.SIGTERM)
    return proc.wait(90)


def _server_log(dep: Deployment) -> str:
    return (dep.workdir / "server" / "server.log").read_text(errors="replace")


def test_sigterm_interrupts_the_run_and_resume_interrupted_finishes_it_bit_identical(
    deployment: Deployment,
) -> None:
    run_id = _start(deployment)
    wait_for(lambda: _checkpoint(deployment, run_id, 2).exists(), 120, "checkpoint 2")
    assert _terminate_server(deployment) == 0, deployment.log("server")
    assert f"run {run_id} interrupted" in deployment.log("server")
    # restarted without --resume-interrupted: the run stays interrupted, the log says how
    deployment.start_server()
    info = _show(deployment, run_id)
    assert (info["status"], info["error"]) == ("interrupted", SHUT_DOWN), info
    assert 2 <= info["rounds_done"] < ROUNDS
    assert f"--resume {run_id}" in _server_log(deployment)
    assert _terminate_server(deployment) == 0
    # ...and with it, the run goes on and ends as if nothing had happened
    deployment.start_server("--resume-interrupted")
    info = deployment.wait_run(run_id)
    assert info["status"] == "finished", info
    assert sorted(r["round"] for r in info["rounds"]) == list(range(1, ROUNDS + 1))
    model = load_model(deployment.run_dir(run_id) / "model.npz")
    assert model.equals(_simulate_slow_app(ROUNDS, SEED))


def test_kill_9_leaves_the_run_interrupted_with_the_command_that_resumes_it(
    deployment: Deployment,
) -> None:
    run_id = _start(deployment)
    wait_for(lambda: _checkpoint(deployment, run_id, 1).exists(), 120, "checkpoint 1")
    deployment.kill("server")
    deployment.start_server()
    info = _show(deployment, run_id)
    assert (info["status"], info["error"]) == ("interrupted", CRASHED), info
    line = next(ln for ln in _server_log(deployment).splitlines() if f"run {run_id} was" in ln)
    assert f"--resume {run_id}" in line and "--resume-interrupted" in line


def test_a_deleted_database_fails_the_run_clearly_and_the_server_keeps_serving(
    deployment: Deployment, tmp_path: Path
) -> None:
    db = tmp_path / "db" / "state.db"
    run_id = _start(deployment, "--state", f"sqlite:///{db}", "--state-timeout", "1")
    wait_for(lambda: _checkpoint(deployment, run_id, 1).exists(), 120, "checkpoint 1")
    shutil.rmtree(db.parent)
    failed = f"run {run_id} failed: the state store sqlite:///{db} could not record"
    wait_for(lambda: failed in _server_log(deployment), 60, "the run to fail")
    assert f"the state database {db} is gone" in _server_log(deployment)
    admin = deployment.fed.admin(deployment.port)
    try:  # the server answers, and says why it cannot show runs
        with pytest.raises(Exception, match=f"StateStoreError: the state database {db} is gone"):
            admin.list_runs()
    finally:
        admin.close()
    assert deployment.procs["server"].poll() is None
    assert not _checkpoint(deployment, run_id, ROUNDS).exists()  # it did not run on blind


# A short lock (1 s, under --state-timeout 3) is waited out. A long one is held until the server
# says the run failed, so that no round's timing can let the run slip past it.
@pytest.mark.parametrize("long_lock", [False, True], ids=["short", "long"])
def test_a_locked_database_is_waited_for_then_fails_the_run(
    deployment: Deployment, long_lock: bool
) -> None:
    run_id = _start(deployment, "--state-timeout", "3", delay=0.3)
    wait_for(lambda: _checkpoint(deployment, run_id, 1).exists(), 120, "checkpoint 1")
    db = deployment.workdir / "server" / "state.db"
    failed = f"run {run_id} failed: the state store sqlite:///{db.resolve()} could not record"
    locked = threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        locked.set()
        if long_lock:
            wait_for(lambda: failed in _server_log(deployment), 120, "the run to fail")
        else:
            time.sleep(1.0)
        conn.execute("ROLLBACK")
        conn.close()

    holder = threading.Thread(target=hold)
    holder.start()
    assert locked.wait(30)
    holder.join()
    info = deployment.wait_run(run_id)
    if not long_lock:
        assert info["status"] == "finished", info
    else:
        assert info["status"] == "failed", info
        assert f"the state store sqlite:///{db.resolve()} could not record" in info["error"]
        assert "database is locked" in info["error"]


def test_a_second_server_on_the_same_port_or_workdir_is_refused(
    deployment: Deployment, tmp_path: Path
) -> None:
    port = deployment.start_server()
    base = [EXE, "server", "--insecure", "--allow", "a"]
    same_port = subprocess.run(
        [*base, "--address", f"127.0.0.1:{port}", "--workdir", str(tmp_path / "other")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert same_port.returncode == 10, same_port.stderr
    assert f"could not listen on 127.0.0.1:{port}" in same_port.stderr
    workdir = deployment.workdir / "server"
    same_dir = subprocess.run(
        [*base, "--address", "127.0.0.1:0", "--workdir", str(workdir)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert same_dir.returncode == 12, same_dir.stderr
    pid = deployment.procs["server"].pid
    assert f"another consortium server (pid {pid}) is using the state directory" in (
        same_dir.stderr
    )
    assert deployment.procs["server"].poll() is None  # the first one is unharmed
