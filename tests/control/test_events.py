"""The run event stream (Server-Sent Events): replayed from the store, pushed when a run moves."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from typing import Any

from consortium.core.history import History, NodeResult, Outcome, RoundRecord
from consortium.server.store import RunStatus

from .conftest import Api


def _round(n: int) -> RoundRecord:
    nodes = [NodeResult("cleveland", "train", Outcome.OK, {"loss": 0.5}, 100, seconds=0.2),
             NodeResult("va", "train", Outcome.TIMEOUT, reason="no reply in 30 s")]  # fmt: skip
    return RoundRecord(n, train_metrics={"loss": 0.5}, nodes=nodes, seconds=0.3)


def _events(api: Api, run_id: str, after: int = 0) -> list[tuple[str, dict[str, Any]]]:
    request = urllib.request.Request(f"{api.url}/api/v1/runs/{run_id}/events?after={after}")
    request.add_header("Authorization", f"Bearer {api.token['observer']}")
    out, name = [], ""
    with urllib.request.urlopen(request, timeout=20) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for raw in response:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                out.append((name, json.loads(line[6:])))
    return out


def test_a_finished_run_is_replayed_from_the_store(api: Api) -> None:
    store = api.runs.store
    run_id = store.create_run(app_name="heart-disease", app_version="1", num_rounds=2)
    store.set_run_status(run_id, RunStatus.RUNNING)
    for n in (1, 2):
        store.record_round(run_id, _round(n))
    store.set_run_status(run_id, RunStatus.FINISHED)
    events = _events(api, run_id)
    assert [name for name, _ in events] == ["round_finished", "node_failed"] * 2 + ["run_finished"]
    first = events[0][1]
    assert first["round"] == 1 and first["metrics"] == {"train_loss": 0.5}
    assert {n["node"] for n in first["nodes"]} == {"cleveland", "va"}
    failed = events[1][1]
    assert (failed["node"], failed["outcome"], failed["reason"]) == (
        "va",
        "timeout",
        "no reply in 30 s",
    )
    assert events[-1][1] == {"run_id": run_id, "status": "finished", "error": "", "rounds_done": 2}
    # a reconnect skips what it saw
    replay = _events(api, run_id, after=1)
    assert (replay[0][0], replay[0][1]["round"]) == ("round_finished", 2)
    assert [name for name, _ in _events(api, run_id, after=2)] == ["run_finished"]


def test_a_running_run_is_pushed_as_it_moves_not_at_the_keepalive(api: Api) -> None:
    store = api.runs.store
    run_id = store.create_run(app_name="heart-disease", app_version="1", num_rounds=1)
    store.set_run_status(run_id, RunStatus.RUNNING)
    # what RunManager hands the run's app process: the per-run observers
    feed = api.events.observers(run_id)[0]

    def run() -> None:
        while api.events.watching(run_id) == 0:  # the stream is open
            time.sleep(0.01)
        time.sleep(0.2)
        store.record_round(run_id, _round(1))  # the store's observer, then the feed
        feed.on_round_end(_round(1))
        feed.on_run_end(History(), failed=False)
        time.sleep(0.2)
        store.set_run_status(run_id, RunStatus.FINISHED)  # RunManager, after the app ends

    thread = threading.Thread(target=run)
    thread.start()
    started = time.monotonic()
    events = _events(api, run_id)
    thread.join()
    assert [name for name, _ in events] == ["round_finished", "node_failed", "run_finished"]
    assert time.monotonic() - started < 5  # woken, not found at the 15 s keep-alive
    deadline = time.monotonic() + 5
    while api.events.watching(run_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert api.events.watching(run_id) == 0  # the stream let go of its watcher
