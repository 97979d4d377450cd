"""The node keeps WORKDIR/status.json: connected, retrying through an outage, stopped when
refused; ``healthy_until`` runs out CONTACT_GRACE after the server last answered."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from consortium.node.status import CONTACT_GRACE, START_GRACE, STATUS_FILE, WRITE_EVERY, NodeStatus

from .conftest import Link, RunningNode, wait_for


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _file(folder: Path) -> dict[str, Any]:
    data = json.loads((folder / STATUS_FILE).read_text())
    assert isinstance(data, dict)
    return data


def test_health_runs_out_after_the_last_contact_and_at_once_when_stopped(tmp_path: Path) -> None:
    clock = Clock()
    status = NodeStatus(tmp_path, "server:9092", clock=clock)
    start = _file(tmp_path)
    assert start["state"] == "starting" and start["healthy_until"] == 1000.0 + START_GRACE
    clock.now = 1010.0
    status.connected("hospital-a")
    on = _file(tmp_path)
    assert (on["state"], on["node"], on["since"]) == ("connected", "hospital-a", 1010.0)
    assert on["healthy_until"] == 1010.0 + CONTACT_GRACE
    # contacts that change nothing else reach the file at most every WRITE_EVERY seconds
    clock.now = 1011.0
    status.heard(0)
    assert _file(tmp_path)["last_contact"] == 1010.0 and status.read()["last_contact"] == 1011.0
    clock.now = 1010.0 + WRITE_EVERY + 1
    status.heard(3)
    later = _file(tmp_path)
    assert later["tasks_done"] == 3 and later["healthy_until"] == clock.now + CONTACT_GRACE
    # an outage: retrying, and healthy only until the grace after the last contact ends
    contact = clock.now
    clock.now += 20
    status.retrying("server unreachable: connection refused")
    down = _file(tmp_path)
    assert down["state"] == "retrying" and "connection refused" in down["error"]
    assert down["healthy_until"] == contact + CONTACT_GRACE and down["since"] == clock.now
    status.stopped("refused by the server: revoked")
    assert _file(tmp_path)["healthy_until"] == 0.0 and _file(tmp_path)["state"] == "stopped"
    status.stopped()  # the shutdown that follows keeps why it stopped
    assert "revoked" in _file(tmp_path)["error"]


def test_an_unwritable_folder_does_not_stop_the_node(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    status = NodeStatus(blocker / "node", "server:9092")  # cannot be created: logged once
    status.connected("hospital-a")
    assert status.read()["state"] == "connected"


def test_a_running_node_reports_connected_retrying_and_stopped(
    link: Link, start_node: Callable[[], RunningNode]
) -> None:
    node = start_node()
    folder = node.runner.work_dir

    def state() -> dict[str, Any]:
        return _file(folder) if (folder / STATUS_FILE).exists() else {}

    wait_for(lambda: state().get("state") == "connected", "status: connected")
    assert state()["node"] == "hospital-a" and state()["healthy_until"] > time.time()
    link.outage()
    wait_for(lambda: state().get("state") == "retrying", "status: retrying")
    assert state()["error"] and state()["healthy_until"] <= time.time() + CONTACT_GRACE
    link.restore()
    wait_for(lambda: state().get("state") == "connected", "status: connected again")
    link.refuse("certificate 'hospital-a' was revoked")
    node.thread.join(15)
    stopped = state()
    assert stopped["state"] == "stopped" and stopped["healthy_until"] == 0.0
    assert "refused" in stopped["error"], stopped
