"""GET /api/v1/audit: the audit log through the REST API, for admins only by default,
with each read itself recorded (the dashboard's audit page reads it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from consortium.control.events import RunEvents
from consortium.control.serve import serve_api
from consortium.control.tokens import TokenAuthority
from consortium.server.fleet import Fleet
from consortium.server.runs import RunManager
from consortium.server.store import StateStore, default_url
from consortium.server.store.audit import AuditLog
from consortium.transport.authz import DEFAULT_POLICY

from .conftest import Api


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """A served API whose audit sink is the state store's hash-chained log."""
    workdir = tmp_path_factory.mktemp("server")
    store = StateStore(default_url(workdir))
    fleet = Fleet(heartbeat_interval=1.0, offline_after=60.0)
    events = RunEvents()
    runs = RunManager(fleet, workdir, store=store, run_observers=events.observers)
    server = serve_api("127.0.0.1:0", runs=runs, fleet=fleet, policy=DEFAULT_POLICY,
                       audit=AuditLog(store), workdir=workdir, events=events)  # fmt: skip
    tokens = TokenAuthority(workdir)
    handle = Api(server.url, workdir, tokens, runs, events)
    for role, name in (("admin", "alice"), ("researcher", "rita"), ("observer", "otto")):
        handle.token[role], _ = tokens.create(name=name, role=role, days=1)
    try:
        yield handle
    finally:
        server.stop()
        fleet.close()
        store.close()


def test_an_admin_reads_who_was_refused_and_the_read_is_recorded(logged: Api) -> None:
    refused = logged.call("POST", "/api/v1/runs", token=logged.token["observer"],
                          body={"app": "heart-disease"})  # fmt: skip
    assert refused.status == 403

    answer = logged.call("GET", "/api/v1/audit?actor=otto", token=logged.token["admin"])

    assert answer.status == 200, answer.body
    body = answer.json()
    (entry,) = body["entries"]
    assert (entry["actor"], entry["role"], entry["action"], entry["outcome"]) == (
        "otto", "observer", "run.start", "denied",
    )  # fmt: skip
    seq, digest = body["head"].split(":")
    assert int(seq) >= entry["seq"] and len(digest) == 64
    # reading the log is in the log, with what was asked
    again = logged.call("GET", "/api/v1/audit?action=audit.read", token=logged.token["admin"])
    reads = again.json()["entries"]
    assert reads[0]["actor"] == "alice" and reads[0]["detail"]["actor"] == "otto"


@pytest.mark.parametrize(("role", "status"), [("researcher", 403), ("observer", 403), (None, 401)])
def test_only_admins_read_the_audit_log(logged: Api, role: str | None, status: int) -> None:
    token = logged.token[role] if role is not None else None

    answer = logged.call("GET", "/api/v1/audit", token=token)

    assert answer.status == status, answer.body
    assert "error" in answer.json()


def test_a_bad_filter_names_its_field(logged: Api) -> None:
    answer = logged.call("GET", "/api/v1/audit?limit=0", token=logged.token["admin"])

    assert answer.status == 422 and answer.json()["error"]["field"].endswith("limit")
