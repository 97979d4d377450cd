"""``consortium server --http`` serves the REST API from its own process: lifecycle, reach.

Real servers (plain text on loopback: TLS is not what is tested here) with the
API process they start; what happens when either side is killed; the channel's
protocol refusing what it does not allow; Landlock keeping the server's key out
of the API process's reach.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from consortium.control.desk import ApiDesk
from consortium.control.ipc import MAX_FRAME, ProtocolError, recv_frame, take
from consortium.control.process import state_paths
from consortium.control.tokens import TokenAuthority
from consortium.server.fleet import Fleet
from consortium.server.runs import RunManager
from consortium.server.store import StateStore, default_url

WORKER = "consortium.control.worker"
#: in the server's environment, never in its API process's
SECRET_VAR = "CONSORTIUM_TEST_DB_PASSWORD"


def _start(workdir: Path, http: str = "127.0.0.1:0", *extra: str) -> subprocess.Popen[bytes]:
    """A server with the REST API; returns once its port file is written (API started)
    or it exited."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = open(workdir.parent / f"{workdir.name}.out", "wb")  # noqa: SIM115 - the child's
    proc = subprocess.Popen(
        [sys.executable, "-m", "consortium.cli.main", "server", "--insecure", "--allow", "n1",
         "--address", "127.0.0.1:0", "--http", http, "--workdir", str(workdir),
         "--no-tracking", "--port-file", str(workdir / "port"), *extra],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, SECRET_VAR: "hunter2"},
    )  # fmt: skip
    log.close()
    _until(lambda: (workdir / "port").exists() or proc.poll() is not None, 90, "server start")
    return proc


def _output(workdir: Path) -> str:
    return (workdir.parent / f"{workdir.name}.out").read_text(errors="replace")


def _until(done: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _workers(proc: subprocess.Popen[bytes]) -> list[psutil.Process]:
    try:
        children = psutil.Process(proc.pid).children()
    except psutil.NoSuchProcess:
        return []
    return [c for c in children if WORKER in " ".join(_cmdline(c))]


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


def _get(url: str, token: str | None = None) -> tuple[int, object]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


@pytest.fixture
def stopped() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Servers to kill (their process groups) if a test leaves them running."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_the_api_process_is_restarted_when_killed_and_stops_with_the_server(
    tmp_path: Path, stopped: list[subprocess.Popen[bytes]]
) -> None:
    workdir = tmp_path / "server"
    proc = _start(workdir)
    stopped.append(proc)
    assert proc.poll() is None, _output(workdir)
    url = (workdir / "api" / "url").read_text().strip()
    (first,) = _workers(proc)
    # a fresh interpreter, told nothing on its command line or in its environment
    assert SECRET_VAR not in first.environ()
    assert not any(str(workdir) in arg for arg in first.cmdline())
    token, _ = TokenAuthority(workdir).create(name="alice", role="admin", days=1)
    status, body = _get(f"{url}/api/v1/nodes", token)
    assert status == 200, body
    assert [(n["id"], n["status"]) for n in body["nodes"]] == [("n1", "offline")]  # type: ignore[index]
    # its refusals are in the server's audit chain (the API process cannot append to it)
    assert _get(f"{url}/api/v1/runs", "forged")[0] == 401
    status, audit = _get(f"{url}/api/v1/audit?action=run.list", token)
    assert [e["outcome"] for e in audit["entries"]] == ["denied"]  # type: ignore[index]

    first.kill()  # a crash: the server starts another on the same port
    _until(lambda: [w.pid for w in _workers(proc)] not in ([], [first.pid]), 30, "a restart")
    _until(lambda: _get(f"{url}/api/v1/health")[0] == 200, 30, "the restarted API")
    assert "the REST API process exited" in _output(workdir)
    (second,) = _workers(proc)

    proc.send_signal(signal.SIGTERM)  # stops the API process too
    assert proc.wait(60) == 0, _output(workdir)
    _until(lambda: not psutil.pid_exists(second.pid) or second.status() == "zombie", 10, "exit")


def test_a_killed_server_leaves_no_api_process_behind(
    tmp_path: Path, stopped: list[subprocess.Popen[bytes]]
) -> None:
    workdir = tmp_path / "server"
    proc = _start(workdir)
    stopped.append(proc)
    (worker,) = _workers(proc)
    proc.kill()  # no handler runs: the API process sees its channel close
    proc.wait(10)
    _until(lambda: not psutil.pid_exists(worker.pid) or worker.status() == "zombie", 15, "exit")


def test_a_port_in_use_is_a_clear_error_at_start(
    tmp_path: Path, stopped: list[subprocess.Popen[bytes]]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        workdir = tmp_path / "server"
        proc = _start(workdir, http=f"127.0.0.1:{port}")
        stopped.append(proc)
        assert proc.wait(60) != 0
    assert f"--http: cannot listen on 127.0.0.1:{port}" in _output(workdir)
    assert not (workdir / "port").exists()


def test_api_in_process_serves_it_from_the_servers_own_process(
    tmp_path: Path, stopped: list[subprocess.Popen[bytes]]
) -> None:
    workdir = tmp_path / "server"
    proc = _start(workdir, "127.0.0.1:0", "--api-in-process")
    stopped.append(proc)
    url = (workdir / "api" / "url").read_text().strip()
    assert _get(f"{url}/api/v1/health")[0] == 200, _output(workdir)
    assert _workers(proc) == []
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, _output(workdir)


def test_the_channel_refuses_what_its_protocol_does_not_allow(tmp_path: Path) -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall((MAX_FRAME + 1).to_bytes(4, "big"))
        with pytest.raises(ProtocolError, match="over the limit"):
            recv_frame(ours)
        theirs.sendall((2).to_bytes(4, "big") + b"[]")
        with pytest.raises(ProtocolError, match="JSON object"):
            recv_frame(ours)
    with pytest.raises(ProtocolError, match="seed: expected int, got bool"):
        take({"seed": True}, "seed", int)
    store = StateStore(default_url(tmp_path))
    fleet = Fleet(heartbeat_interval=1.0, offline_after=60.0, max_message_bytes=2**20)
    try:
        desk = ApiDesk(RunManager(fleet, tmp_path, store=store), fleet, lambda e: None, None)
        start = {"run_config": "{}", "seed": 1, "nodes": None}
        with pytest.raises(ProtocolError, match="sha256"):  # never a path
            desk.handle("start_run", {**start, "sha256": "../../server.key"})
        with pytest.raises(ProtocolError, match="op: no request 'ban'"):
            desk.handle("ban", {"name": "n1"})
        event = {"actor": "a", "action": "x", "outcome": "maybe", "role": "", "detail": {},
                 "organisation": "", "run_id": "", "target": ""}  # fmt: skip
        with pytest.raises(ProtocolError, match="outcome"):
            desk.handle("audit", {"event": event})
        assert desk.handle("presence", {}) == {"online": [], "missing": []}
    finally:
        fleet.close()
        store.close()


def test_the_api_process_cannot_read_the_servers_key(tmp_path: Path) -> None:
    from consortium.sandbox.confine import landlock_available

    if not landlock_available():
        pytest.skip("this kernel has no Landlock: the API process runs unconfined")
    workdir, keys = tmp_path / "server", tmp_path / "keys"
    keys.mkdir()
    (keys / "server.key").write_text("PRIVATE")
    StateStore(default_url(workdir)).close()
    read, write = state_paths(workdir, default_url(workdir), [keys])
    (workdir / "runs" / "model.npz").write_text("model")
    settings = {"workdir": str(workdir), "state_url": default_url(workdir), "state_timeout": 5.0,
                "policy": {"roles": {}, "grants": [], "admins": None, "source": "test"},
                "max_bundle_bytes": 1, "read_paths": read, "write_paths": write,
                "confine": True}  # fmt: skip
    probe = f"""
import sys
from consortium.control.settings import ApiSettings
from consortium.control.worker import confine
confine(ApiSettings.from_json({settings!r}))
print(open({str(workdir / "runs" / "model.npz")!r}).read())
open({str(workdir / "api" / "apps.jsonl")!r}, "a").write("x")
try:
    open({str(keys / "server.key")!r}).read()
except PermissionError:
    print("denied")
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["model", "denied"]


def test_a_secret_in_the_databases_folder_keeps_the_folder_out_of_reach(tmp_path: Path) -> None:
    StateStore(default_url(tmp_path)).close()
    read, write = state_paths(tmp_path, default_url(tmp_path), [tmp_path / "creds"])
    assert str(tmp_path.resolve()) not in write  # only the database's files
    assert str((tmp_path / "state.db").resolve()) in write
    assert read == [str((tmp_path / "runs").resolve())]
