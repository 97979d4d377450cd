"""The SDK's plumbing against a real API: uploads, errors as exceptions, an unreachable server.
(Runs, metrics, events and models through the SDK: test_local.py, on a real federation.)"""

from __future__ import annotations

import socket

import pytest

from consortium import ControlClient
from consortium.control import ApiRequestError
from consortium.core.errors import ServerUnavailable, TransportError

from .conftest import HEART, Api


def test_upload_list_and_errors(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    client = ControlClient(api.url + "/", api.token["researcher"])
    assert client.health()["status"] == "ok"
    entry = client.upload_app(HEART)  # a folder: bundled on the way
    assert entry["name"] == "heart-disease" and entry["uploaded_by"] == "rita"
    assert entry["sha256"] in {a["sha256"] for a in client.apps()}
    with pytest.raises(ApiRequestError) as missing:
        client.run("0123456789ab")
    assert missing.value.status == 404 and missing.value.code == "not-found"
    assert isinstance(missing.value, TransportError)
    with pytest.raises(ApiRequestError) as refused:
        ControlClient(api.url, api.token["observer"]).upload_app(HEART)
    assert refused.value.status == 403 and "observer 'otto'" in str(refused.value)
    monkeypatch.setenv("CONSORTIUM_TOKEN", api.token["observer"])
    assert isinstance(ControlClient(api.url).runs(), list)  # the token from the environment
    monkeypatch.delenv("CONSORTIUM_TOKEN")
    with pytest.raises(ApiRequestError) as anonymous:
        ControlClient(api.url).runs()
    assert anonymous.value.status == 401


def test_an_unreachable_server_is_server_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there once closed
    with pytest.raises(ServerUnavailable, match="cannot reach the API"):
        ControlClient(f"http://127.0.0.1:{port}", "x").health()
