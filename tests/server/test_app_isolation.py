"""A coordinator's server app runs in its own confined process (issue 11, items 3 and 4).

Each test uploads an app bundle to a real :class:`RunManager` (SQLite store,
real Fleet) and checks what the app could and could not do from its process:
read the server's key or the CA key (no), reach the network (no), run the v2
of a module after v1 (yes), send a task for another run (refused), die or
exhaust its memory limit (the run fails with a clear error; the server goes on).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from consortium.apps.bundle import make_bundle
from consortium.sandbox.channel import ChannelError
from consortium.sandbox.confine import SandboxLimits, landlock_available
from consortium.server.fleet import Fleet
from consortium.server.isolation import host as app_host
from consortium.server.isolation.host import Isolation
from consortium.server.runs import RunManager
from consortium.server.store import RunStatus, StateStore, default_url

pytestmark = pytest.mark.skipif(
    not landlock_available(), reason="needs Linux Landlock (the server refuses to run apps)"
)

MANIFEST = """
[app]
name = "probe"
version = "{version}"
server = "probe_app:app"
client = "probe_app:client"

[run-config]
secret = ""
"""

PREAMBLE = """
import os
import socket

import numpy as np

from consortium import ClientApp, ServerApp
from consortium.core.history import RoundRecord

client = ClientApp()
app = ServerApp()


def try_read(path):
    try:
        with open(path, "rb") as fh:
            return "read:" + fh.read().decode(errors="replace")
    except OSError as exc:
        return "refused:" + type(exc).__name__
"""

EXFILTRATE = (
    PREAMBLE
    + """
@app.main()
def main(grid, context):
    secret = str(context.run_config["secret"])
    found = [
        try_read(secret),
        try_read(os.path.join(os.path.dirname(secret), "ca", "ca.key")),
        try_read(f"/proc/{os.getppid()}/environ"),
        try_read(f"/proc/{os.getppid()}/mem"),
        try_read(os.path.join(os.path.dirname(__file__), "consortium.toml")),
    ]
    try:
        socket.create_connection(("127.0.0.1", 9), timeout=2).close()
        found.append("network:connected")
    except OSError as exc:
        found.append("network:" + type(exc).__name__)
    raise RuntimeError("FOUND " + " | ".join(found))
"""
)

VERSIONED = (
    PREAMBLE
    + """
VERSION = {version}


@app.main()
def main(grid, context):
    context.report(RoundRecord(round=1, central_metrics={{"version": VERSION}}))
"""
)

FOREIGN_TASK = (
    PREAMBLE
    + """
from consortium.core.message import TRAIN, Content, Message


@app.main()
def main(grid, context):
    msg = Message.create(run_id="someone-elses-run", dst="a", round=1, kind=TRAIN,
                         content=Content.of(config={}))
    list(grid.send_and_receive([msg], timeout=5))
"""
)

DIES = PREAMBLE + "\n@app.main()\ndef main(grid, context):\n    os._exit(9)\n"

GREEDY = (
    PREAMBLE
    + """
@app.main()
def main(grid, context):
    hoard = np.ones(3 * 1024**3 // 8)  # 3 GiB, over the 1 GiB limit
    raise RuntimeError(f"allocated {hoard.nbytes}")
"""
)


def _app(tmp_path: Path, name: str, code: str, version: str = "1.0.0") -> bytes:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "consortium.toml").write_text(MANIFEST.format(version=version))
    (folder / "probe_app.py").write_text(code)
    return make_bundle(folder)


@pytest.fixture
def secrets(tmp_path: Path) -> Path:
    """A server key and a CA key where a careless layout would have them: beside the state."""
    folder = tmp_path / "secrets"
    (folder / "ca").mkdir(parents=True)
    (folder / "server.key").write_text("-----BEGIN PRIVATE KEY----- SERVER-SECRET")
    (folder / "ca" / "ca.key").write_text("-----BEGIN PRIVATE KEY----- CA-SECRET")
    os.environ["CONSORTIUM_TEST_DB_PASSWORD"] = "ENV-SECRET"
    return folder / "server.key"


@pytest.fixture
def manager(tmp_path: Path, secrets: Path) -> Iterator[RunManager]:
    store = StateStore(default_url(tmp_path / "state"))
    fleet = Fleet(heartbeat_interval=0.2, offline_after=30.0)
    isolation = Isolation(limits=SandboxLimits(memory_bytes=1024**3), secrets=(secrets.parent,))
    runs = RunManager(fleet, tmp_path / "server", store=store, isolation=isolation)
    yield runs
    fleet.close()
    store.close()
    os.environ.pop("CONSORTIUM_TEST_DB_PASSWORD", None)


def _finish(runs: RunManager, bundle: bytes, config: dict[str, object] | None = None):  # type: ignore[no-untyped-def]
    run_id = runs.start_run(bundle, json.dumps(config or {}), seed=1)
    return runs.wait(run_id, timeout=60)


def test_an_uploaded_app_can_read_neither_key_nor_the_servers_memory_nor_the_network(
    manager: RunManager, tmp_path: Path, secrets: Path
) -> None:
    record = _finish(manager, _app(tmp_path, "exfil", EXFILTRATE), {"secret": str(secrets)})

    assert record.view.status is RunStatus.FAILED
    error = record.view.error or ""
    found = error.split("FOUND ", 1)[1].split(" | ")
    assert found[:4] == ["refused:PermissionError"] * 4, error
    assert found[4].startswith("read:"), "its own app folder stays readable"
    assert found[5] == "network:PermissionError", error
    for secret in ("SERVER-SECRET", "CA-SECRET", "ENV-SECRET"):
        assert secret not in error


def test_v2_of_a_module_runs_after_v1_under_the_same_name(
    manager: RunManager, tmp_path: Path
) -> None:
    first = _finish(manager, _app(tmp_path, "v1", VERSIONED.format(version=1)))
    second = _finish(manager, _app(tmp_path, "v2", VERSIONED.format(version=2), "2.0.0"))

    assert first.view.status is RunStatus.FINISHED, first.view.error
    assert second.view.status is RunStatus.FINISHED, second.view.error
    assert first.rounds[0].central_metrics == {"version": 1}
    assert second.rounds[0].central_metrics == {"version": 2}


DIVERGED = (
    PREAMBLE
    + """
@app.main()
def main(grid, context):
    nan, inf = float("nan"), float("inf")
    context.report(RoundRecord(round=1, central_metrics={"loss": nan, "grad_norm": inf}))
"""
)


def test_a_diverged_nan_loss_is_recorded_and_the_run_finishes(
    manager: RunManager, tmp_path: Path
) -> None:
    """A NaN loss is a result (training diverged), not a malformed record: the run ends
    normally with it, as it does without isolation."""
    record = _finish(manager, _app(tmp_path, "diverged", DIVERGED))

    assert record.view.status is RunStatus.FINISHED, record.view.error
    central = record.rounds[0].central_metrics
    assert math.isnan(central["loss"]) and central["grad_norm"] == math.inf


def test_a_task_for_another_run_is_refused_and_the_run_fails(
    manager: RunManager, tmp_path: Path
) -> None:
    record = _finish(manager, _app(tmp_path, "foreign", FOREIGN_TASK))

    assert record.view.status is RunStatus.FAILED
    assert "a task for run 'someone-elses-run'" in (record.view.error or "")


def test_an_app_process_that_dies_fails_its_run_and_the_server_goes_on(
    manager: RunManager, tmp_path: Path
) -> None:
    died = _finish(manager, _app(tmp_path, "dies", DIES))
    after = _finish(manager, _app(tmp_path, "after", VERSIONED.format(version=3)))

    assert died.view.status is RunStatus.FAILED
    assert "exited with status 9" in (died.view.error or "")
    assert after.view.status is RunStatus.FINISHED, after.view.error


def test_an_app_over_its_memory_limit_fails_with_memory_error(
    manager: RunManager, tmp_path: Path
) -> None:
    record = _finish(manager, _app(tmp_path, "greedy", GREEDY))

    assert record.view.status is RunStatus.FAILED
    assert "MemoryError" in (record.view.error or "")


def test_a_secret_inside_a_tree_the_app_may_read_refuses_the_run(tmp_path: Path) -> None:
    """A key kept inside the Python installation would be readable: the start is refused."""
    store = StateStore(default_url(tmp_path / "state"))
    fleet = Fleet(heartbeat_interval=0.2, offline_after=30.0)
    runs = RunManager(fleet, tmp_path / "server", store=store,
                      isolation=Isolation(secrets=(Path(os.__file__),)))  # fmt: skip
    try:
        with pytest.raises(Exception, match="which a sandboxed app may read"):
            runs.start_run(_app(tmp_path, "any", VERSIONED.format(version=1)), "{}", seed=1)
    finally:
        fleet.close()
        store.close()


IGNORES_STOP = (
    PREAMBLE
    + """
import time


@app.main()
def main(grid, context):
    while True:  # never checks context.stopping
        time.sleep(0.05)
"""
)


def test_an_app_that_ignores_stop_is_killed_after_the_grace_and_the_run_is_stopped(
    manager: RunManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app_host, "STOP_GRACE", 1.0)
    run_id = manager.start_run(_app(tmp_path, "stubborn", IGNORES_STOP), "{}", seed=1)
    assert manager.stop_run(run_id)
    record = manager.wait(run_id, timeout=30)

    assert record.view.status is RunStatus.STOPPED


WAITS_FOR_NODES = (
    PREAMBLE
    + """
@app.main()
def main(grid, context):
    grid.wait_for_nodes(5, timeout=300)  # no node will ever come
    raise RuntimeError("should have been stopped")
"""
)


def test_a_run_waiting_for_nodes_stops_at_once(manager: RunManager, tmp_path: Path) -> None:
    import time

    run_id = manager.start_run(_app(tmp_path, "waiting", WAITS_FOR_NODES), "{}", seed=1)
    time.sleep(1.0)  # the app is inside wait_for_nodes
    started = time.monotonic()
    assert manager.stop_run(run_id)
    record = manager.wait(run_id, timeout=30)

    assert record.view.status is RunStatus.STOPPED, record.view.error
    assert time.monotonic() - started < app_host.STOP_GRACE / 3


def test_a_relative_server_folder_runs_apps(
    tmp_path: Path, secrets: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = StateStore(default_url(tmp_path / "state"))
    fleet = Fleet(heartbeat_interval=0.2, offline_after=30.0)
    runs = RunManager(fleet, Path("server-data"), store=store,
                      isolation=Isolation(secrets=(secrets.parent,)))  # fmt: skip
    try:
        record = _finish(runs, _app(tmp_path, "rel", VERSIONED.format(version=7)))
    finally:
        fleet.close()
        store.close()
    assert record.view.status is RunStatus.FINISHED, record.view.error
    assert record.rounds[0].central_metrics == {"version": 7}


ASKS_FOR_NODES = (
    PREAMBLE
    + """
@app.main()
def main(grid, context):
    grid.wait_for_nodes(0, timeout=0.1)
    raise RuntimeError("the answer came")
"""
)


def test_an_answer_the_channel_cannot_frame_fails_the_run_instead_of_hanging_it(
    manager: RunManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An answer the channel refuses before it leaves (a header over MAX_HEADER_BYTES:
    a ``wait_for_nodes`` naming tens of thousands of nodes) reaches the app as an error
    and the run fails saying why. It was taken for the app process gone, and the app
    waited for its answer for ever. The refusal is injected: no test fleet is that big."""
    send = app_host.AppProcess._send

    def refusing(self, kind, rid, header, payload=b""):  # type: ignore[no-untyped-def]
        if kind == "result" and "nodes" in header:
            raise ChannelError("a 'result' frame's header of 1300000 bytes is too large")
        send(self, kind, rid, header, payload)

    monkeypatch.setattr(app_host.AppProcess, "_send", refusing)
    run_id = manager.start_run(_app(tmp_path, "refused", ASKS_FOR_NODES), "{}", seed=1)
    record = manager.wait(run_id, timeout=20)

    assert record.view.status is RunStatus.FAILED, record.view.status
    assert "header of 1300000 bytes is too large" in (record.view.error or "")
