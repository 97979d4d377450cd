"""The REST API's contract tests again, with the API served from its own process.

The server's objects (fleet, run manager, store, audit sink) live in this test
process, as ``consortium server`` holds them; the API is a real
``python -m consortium.control.worker`` process that reads the store itself and
asks this process for the rest over the channel (``consortium.control.process``).
The tests of ``test_api``, ``test_model_formats`` and the store replay of
``test_events`` run unchanged against it (their ``api`` fixture is this
module's); a wake-up pushed across the channel is tested here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest

from consortium.apps.bundle import BundleLimits
from consortium.control.events import RunEvents
from consortium.control.process import RunNotices, start_api
from consortium.control.tokens import TokenAuthority
from consortium.core.audit import AuditEvent
from consortium.core.history import History
from consortium.server.fleet import Fleet
from consortium.server.runs import RunManager
from consortium.server.store import RunStatus, StateStore, default_url
from consortium.transport.authz import DEFAULT_POLICY

from .conftest import Api
from .test_api import *  # noqa: F403 - the contract, collected again here
from .test_api import bundle  # noqa: F401 - its fixture
from .test_events import _events, _round, test_a_finished_run_is_replayed_from_the_store  # noqa: F401
from .test_model_formats import *  # noqa: F403


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    workdir = tmp_path_factory.mktemp("server")
    store = StateStore(default_url(workdir))
    fleet = Fleet(heartbeat_interval=1.0, offline_after=60.0, max_message_bytes=2**30)
    notices = RunNotices()
    runs = RunManager(fleet, workdir, store=store, run_observers=notices.observers)
    fleet.set_bundles(runs.run_bundle)
    recorded: list[AuditEvent] = []
    served = start_api("127.0.0.1:0", hub=notices, runs=runs, fleet=fleet, policy=DEFAULT_POLICY,
                       audit=recorded.append, bans=None, state_url=default_url(workdir),
                       state_timeout=30.0, secrets=[])  # fmt: skip
    tokens = TokenAuthority(workdir)
    # the hub is the server's end of the channel here (no ``watching``: that is the API's)
    handle = Api(served.url, workdir, tokens, runs, cast(RunEvents, notices), recorded)
    for role, name in (("admin", "alice"), ("researcher", "rita"), ("observer", "otto")):
        handle.token[role], _ = tokens.create(name=name, role=role, days=1)
    try:
        yield handle
    finally:
        runs.interrupt(10)
        served.stop()
        fleet.close()
        store.close()


def test_a_round_end_crosses_to_the_api_process_and_wakes_its_streams(api: Api) -> None:
    store = api.runs.store
    run_id = store.create_run(app_name="heart-disease", app_version="1", num_rounds=1)
    store.set_run_status(run_id, RunStatus.RUNNING)
    feed = cast(RunNotices, api.events).observers(run_id)[0]

    def run() -> None:
        time.sleep(1.0)  # the stream is open (its keep-alive is 15 s away)
        store.record_round(run_id, _round(1))
        feed.on_round_end(_round(1))
        feed.on_run_end(History(), failed=False)
        time.sleep(0.2)
        store.set_run_status(run_id, RunStatus.FINISHED)

    thread = threading.Thread(target=run)
    thread.start()
    started = time.monotonic()
    events: list[tuple[str, dict[str, Any]]] = _events(api, run_id)
    thread.join()
    assert [name for name, _ in events] == ["round_finished", "node_failed", "run_finished"]
    assert time.monotonic() - started < 5  # woken by the notice, not at the keep-alive


def test_audit_events_of_the_api_process_reach_the_servers_sink(api: Api) -> None:
    before = len(api.audit)
    answer = api.call("GET", "/api/v1/runs", token="not-a-token")
    assert answer.status == 401
    refused = api.audit[before:]
    assert [(e.action, e.outcome, e.detail["via"]) for e in refused] == [
        ("run.list", "denied", "rest")
    ]


def test_a_bundle_over_the_limit_is_refused_with_413(api: Api, bundle: bytes) -> None:  # noqa: F811
    """(test_api's, with the API process told the smaller limit.)"""
    runs = api.runs
    small = start_api("127.0.0.1:0", hub=RunNotices(), runs=runs, fleet=runs.fleet,
                      policy=DEFAULT_POLICY, audit=api.audit.append, bans=None,
                      state_url=default_url(api.workdir), state_timeout=30.0, secrets=[],
                      limits=BundleLimits(max_bundle_bytes=len(bundle) - 1))  # fmt: skip
    try:
        answer = Api(small.url, api.workdir, api.tokens, api.runs, api.events).call(
            "POST", "/api/v1/apps", token=api.token["admin"], data=bundle,
            headers={"Content-Type": "application/octet-stream"},
        )  # fmt: skip
    finally:
        small.stop()
    assert answer.status == 413, answer.body
    assert answer.json()["error"]["code"] == "too-large"
    assert api.find("app.upload", "alice", "failed")[-1].detail["error"].startswith("the bundle")
