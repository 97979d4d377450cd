"""The REST API over real HTTP: who may do what, JSON errors, and the audit log of writes."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from consortium.apps.bundle import make_bundle
from consortium.control.tokens import TokenAuthority

from .conftest import HEART, Api

#: every write endpoint: (method, path, JSON body or raw bundle bytes)
RUN = "0123456789ab"


def _writes(bundle: bytes) -> list[tuple[str, str, dict[str, Any] | bytes, str]]:
    """(method, path, body, audit action) of every write and of the model download."""
    return [
        ("POST", "/api/v1/apps", bundle, "app.upload"),
        ("POST", "/api/v1/runs", {"app": "heart-disease"}, "run.start"),
        ("POST", f"/api/v1/runs/{RUN}/stop", {}, "run.stop"),
        ("GET", f"/api/v1/runs/{RUN}/model", {}, "model.download"),
    ]


def _send(api: Api, method: str, path: str, body: Any, token: str | None) -> Any:
    if isinstance(body, bytes):
        return api.call(method, path, token=token, data=body,
                        headers={"Content-Type": "application/octet-stream"})  # fmt: skip
    return api.call(method, path, token=token, body=body if method == "POST" else None)


@pytest.fixture(scope="module")
def bundle() -> bytes:
    return make_bundle(HEART)


def test_health_needs_no_token_and_the_schema_is_served(api: Api) -> None:
    answer = api.call("GET", "/api/v1/health")
    assert answer.status == 200 and answer.json()["status"] == "ok"
    schema = api.call("GET", "/openapi.json").json()
    for path in ("/api/v1/runs", "/api/v1/runs/{run_id}/metrics", "/api/v1/runs/{run_id}/events",
                 "/api/v1/apps", "/api/v1/nodes", "/api/v1/runs/{run_id}/model"):  # fmt: skip
        assert path in schema["paths"], path


@pytest.mark.parametrize("index", range(4), ids=["upload-app", "start-run", "stop-run", "model"])
def test_every_write_refuses_callers_without_a_valid_token(
    api: Api, bundle: bytes, index: int
) -> None:
    method, path, body, action = _writes(bundle)[index]
    revoked, rinfo = api.tokens.create(name="gone", role="admin", days=1)
    api.tokens.revoke(rinfo.id)
    two_days_ago = TokenAuthority(api.workdir, clock=lambda: time.time() - 2 * 86400)
    expired, _ = two_days_ago.create(name="old", role="admin", days=1)
    forged = api.token["admin"][:-4] + (
        "AAAA" if not api.token["admin"].endswith("AAAA") else "BBBB"
    )
    before = len(api.audit)
    refusals = [(None, "no token"), ("not-a-token", "not a Consortium API token"),
                (forged, "signature"), (revoked, "revoked"), (expired, "expired")]  # fmt: skip
    for token, why in refusals:
        answer = _send(api, method, path, body, token)
        assert answer.status == 401, (token, answer.body)
        error = answer.json()["error"]
        assert error["code"] == "unauthenticated" and why in error["message"]
        assert answer.headers.get("www-authenticate") == "Bearer"
    refused = api.audit[before:]
    assert [e.action for e in refused] == [action] * 5
    assert all(e.outcome == "denied" and e.actor.startswith("(127.0.0.1:") for e in refused)


@pytest.mark.parametrize("index", range(4), ids=["upload-app", "start-run", "stop-run", "model"])
def test_every_write_refuses_an_observer_with_403(api: Api, bundle: bytes, index: int) -> None:
    method, path, body, action = _writes(bundle)[index]
    answer = _send(api, method, path, body, api.token["observer"])
    assert answer.status == 403, answer.body
    error = answer.json()["error"]
    assert error["code"] == "forbidden"
    assert "observer 'otto'" in error["message"] and "may only read-runs" in error["message"]
    denied = api.find(action, "otto", "denied")
    assert denied and denied[-1].role == "observer" and denied[-1].detail["via"] == "rest"


def test_an_observer_reads_but_cannot_start_a_run(api: Api, bundle: bytes) -> None:
    observer = api.token["observer"]
    for path in ("/api/v1/runs", "/api/v1/nodes", "/api/v1/apps"):
        assert api.call("GET", path, token=observer).status == 200, path
    nodes = api.call("GET", "/api/v1/nodes", token=observer).json()["nodes"]
    assert all(n["status"] in ("online", "offline") for n in nodes)
    answer = api.call("POST", "/api/v1/runs", token=observer, body={"app": "heart-disease"})
    assert answer.status == 403
    assert api.find("run.start", "otto", "denied")
    # reads need a token too
    assert api.call("GET", "/api/v1/runs").status == 401
    assert api.call("GET", f"/api/v1/runs/{RUN}/metrics").status == 401


def test_a_researcher_uploads_starts_shows_and_stops_a_run(api: Api, bundle: bytes) -> None:
    researcher = api.token["researcher"]
    uploaded = api.call("POST", "/api/v1/apps", token=researcher, data=bundle,
                        headers={"Content-Type": "application/octet-stream"})  # fmt: skip
    assert uploaded.status == 201, uploaded.body
    entry = uploaded.json()
    assert (entry["name"], entry["version"], entry["size"]) == (
        "heart-disease",
        "1.0.0",
        len(bundle),
    )
    assert entry["uploaded_by"] == "rita"
    assert entry["run_config"]["num-rounds"] >= 1 and "lr" in entry["run_config"]  # its defaults
    listed = api.call("GET", "/api/v1/apps", token=api.token["observer"]).json()["apps"]
    assert entry["sha256"] in {a["sha256"] for a in listed}
    start = {"app": "heart-disease", "run_config": {"num-rounds": 2}, "seed": 5}
    started = api.call("POST", "/api/v1/runs", token=researcher, body=start)
    assert started.status == 201, started.body
    run_id = started.json()["run_id"]
    shown = api.call("GET", f"/api/v1/runs/{run_id}", token=api.token["observer"]).json()
    assert shown["app_sha256"] == entry["sha256"] and shown["app_name"] == "heart-disease"
    assert shown["started_by"] == "rita" and shown["started_by_role"] == "researcher"
    assert shown["run_config"]["num-rounds"] == 2 and shown["seed"] == 5
    assert shown["status"] in ("pending", "running")
    stopped = api.call("POST", f"/api/v1/runs/{run_id}/stop", token=researcher)
    assert stopped.status == 200 and stopped.json() == {"run_id": run_id, "stopped": True}
    for action in ("app.upload", "run.start", "run.stop"):
        ok = api.find(action, "rita", "ok")
        assert ok and ok[-1].role == "researcher", action
    assert api.find("run.start", "rita", "ok")[-1].run_id == run_id
    assert api.find("run.start", "rita", "ok")[-1].detail["bundle_sha256"] == entry["sha256"]


def test_bad_requests_get_a_json_error_naming_the_field(api: Api, bundle: bytes) -> None:
    admin = api.token["admin"]
    cases: list[tuple[str, str, Any, int, str]] = [
        ("POST", "/api/v1/runs", {"app": "no-such-app"}, 404, "app"),
        ("POST", "/api/v1/runs", {"app": "heart-disease", "colour": 1}, 422, "colour"),
        ("POST", "/api/v1/runs", {"app": "heart-disease", "nodes": ["va"]}, 422, "nodes"),
        ("POST", "/api/v1/runs", {"app": "heart-disease", "run_config": {"bogus": 1}}, 422,
         "run_config"),
        ("POST", "/api/v1/runs", {"app": "heart-disease", "seed": -1}, 422, "seed"),
        ("POST", f"/api/v1/runs/{RUN}/stop", None, 404, "run_id"),
        ("GET", f"/api/v1/runs/{RUN}", None, 404, "run_id"),
        ("GET", f"/api/v1/runs/{RUN}/metrics", None, 404, "run_id"),
        ("GET", f"/api/v1/runs/{RUN}/events", None, 404, "run_id"),
        ("GET", f"/api/v1/runs/{RUN}/model", None, 404, "run_id"),
        ("GET", f"/api/v1/runs/{RUN}/model?format=x.npz", None, 422, "format"),
        ("GET", f"/api/v1/runs/{RUN}/model?round=0", None, 422, "round"),
    ]  # fmt: skip
    api.call("POST", "/api/v1/apps", token=admin, data=bundle,
             headers={"Content-Type": "application/octet-stream"})  # fmt: skip
    for method, path, body, status, field in cases:
        answer = api.call(method, path, token=admin, body=body)
        assert answer.status == status, (path, body, answer.body)
        error = answer.json()["error"]
        assert error["status"] == status and error.get("field", "").endswith(field), error
    junk = api.call("POST", "/api/v1/apps", token=admin, data=b"not a zip at all")
    assert junk.status == 422 and junk.json()["error"]["field"] == "body"
    assert api.find("app.upload", "alice", "failed")
    missing = api.call("GET", "/api/v1/no-such-endpoint", token=admin)
    assert missing.status == 404 and missing.json()["error"]["status"] == 404


def test_tokens_never_reach_the_logs(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = api.token["observer"]
    api.call("POST", "/api/v1/runs", token=secret, body={"app": "heart-disease"})
    api.call("GET", "/api/v1/runs", token=secret + "x")
    api.call("GET", f"/api/v1/runs?token={secret}", token="nope")
    assert caplog.records, "the refusals were logged"
    assert all(secret not in r.getMessage() for r in caplog.records)
    assert all(secret not in repr(e) for e in api.audit)


def test_a_bundle_over_the_limit_is_refused_with_413(api: Api, bundle: bytes) -> None:
    from consortium.apps.bundle import BundleLimits
    from consortium.control.serve import serve_api
    from consortium.transport.authz import DEFAULT_POLICY

    small = serve_api("127.0.0.1:0", runs=api.runs, fleet=api.runs.fleet, policy=DEFAULT_POLICY,
                      audit=api.audit.append, workdir=api.workdir, events=api.events,
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
