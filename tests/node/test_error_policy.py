"""What of an app's exception leaves the silo: the node's ``send_errors`` setting.

By default the server learns the exception's type and a fixed message; the
exception's text (which can quote a patient record) and the traceback stay in
the node's own log. ``message`` and ``traceback`` send more, on purpose.
Simulation sends the whole traceback, as its explicit default.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from consortium.apps.bundle import bundle_digest, make_bundle
from consortium.client.task import SIMULATION_ERROR_DETAIL, ErrorDetail, failure_reply
from consortium.core.arrays import Arrays
from consortium.core.fleet_info import RunBundle
from consortium.core.message import Content, Message
from consortium.node.memory import InMemoryConnection
from consortium.node.runner import NodePolicy, NodeRunner
from consortium.server.fleet import Fleet

NODE = "hospital-a"
RUN_ID = "errors0001"
APP_NAME = "leaky"
SECRET = "patient 4711"

CLIENT_CODE = f'''
from consortium.client import ClientApp

client_app = ClientApp()


@client_app.train()
def train(msg, context):
    raise ValueError("{SECRET} has a blood pressure of 190/120")
'''

MANIFEST = f"""
[app]
name = "{APP_NAME}"
version = "1.0.0"
server = "leaky:client_app"
client = "leaky:client_app"
"""


def task() -> Message:
    model = Arrays({"w": np.zeros(4, dtype=np.float32)})
    return Message.create(
        run_id=RUN_ID, dst=NODE, round=1, kind="train", content=Content.of(arrays=model)
    )


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    app = tmp_path_factory.mktemp("leaky-app")
    (app / "consortium.toml").write_text(MANIFEST)
    (app / "leaky.py").write_text(CLIENT_CODE)
    return app


@pytest.fixture
def fleet(app_dir: Path) -> Iterator[Fleet]:
    bundle = make_bundle(app_dir)
    run = RunBundle(
        run_id=RUN_ID,
        app_name=APP_NAME,
        app_version="1.0.0",
        client_entry="leaky:client_app",
        bundle=bundle,
        bundle_sha256=bundle_digest(bundle),
        run_config_json="{}",
        seed=1,
    )
    made = Fleet(
        heartbeat_interval=0.2,
        offline_after=60.0,
        bundles=lambda node, run_id: run if run_id == RUN_ID else None,
    )
    yield made
    made.close()


def failed_reply(
    fleet: Fleet, app_dir: Path, tmp_path: Path, send_errors: ErrorDetail | None
) -> Message:
    """The reply the server gets from a node running the leaky app."""
    conn = InMemoryConnection(fleet, NODE)
    runner = NodeRunner(
        conn,
        node_config={},
        work_dir=tmp_path / "node",
        policy=NodePolicy(local_apps={APP_NAME: app_dir}),
        poll_wait=0.2,
        **({} if send_errors is None else {"send_errors": send_errors}),
    )
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    try:
        (reply,) = list(fleet.send_and_receive([task()], timeout=30))
    finally:
        runner.stop.set()
        thread.join(10)
    assert reply.error is not None
    return reply


def node_log(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.name == "consortium.node")


def test_by_default_only_the_type_leaves_the_silo(
    fleet: Fleet, app_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="consortium.node")
    reply = failed_reply(fleet, app_dir, tmp_path, None)
    assert reply.error is not None
    assert reply.error.code == "ValueError"
    assert "ValueError" in reply.error.reason and "node's log" in reply.error.reason
    assert SECRET not in reply.error.reason + reply.error.traceback
    assert reply.error.traceback == ""
    logged = node_log(caplog)  # the node's operator sees everything
    assert SECRET in logged and "Traceback (most recent call last)" in logged
    assert "only the exception type" in logged


def test_message_sends_the_text_but_no_traceback(
    fleet: Fleet, app_dir: Path, tmp_path: Path
) -> None:
    reply = failed_reply(fleet, app_dir, tmp_path, "message")
    assert reply.error is not None
    assert reply.error.reason.startswith(f"ValueError: {SECRET}")
    assert reply.error.traceback == ""


def test_traceback_sends_everything(
    fleet: Fleet, app_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="consortium.node")
    reply = failed_reply(fleet, app_dir, tmp_path, "traceback")
    assert reply.error is not None
    assert SECRET in reply.error.reason
    assert "Traceback" in reply.error.traceback and SECRET in reply.error.traceback
    assert "Traceback (most recent call last)" in node_log(caplog)


def test_simulation_sends_the_traceback_by_default() -> None:
    assert SIMULATION_ERROR_DETAIL == "traceback"
    try:
        raise ValueError(SECRET)
    except ValueError as exc:
        reply = failure_reply(task(), exc)
    assert reply.error is not None and SECRET in reply.error.traceback
