"""The issue's acceptance test: `consortium local` (real processes on loopback) driven by curl."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pytest

from consortium import ControlClient
from consortium.server.model_io import load_model

from .conftest import local_logs, start_local

HERE = Path(__file__).parent
HOSPITALS = {"cleveland", "hungarian", "switzerland", "va"}


@dataclass
class Local:
    proc: subprocess.Popen[bytes]
    directory: Path
    url: str
    token: str
    run_id: str
    out: Path

    def log(self) -> str:
        return (self.directory / "local.out").read_text(errors="replace")


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Local]:
    directory = tmp_path_factory.mktemp("local")
    out = tmp_path_factory.mktemp("curl")
    log = open(directory / "local.out", "wb")  # noqa: SIM115 - closed at teardown
    proc, url = start_local(directory, log)
    try:
        script = subprocess.run(
            ["bash", str(HERE / "curl_run.sh"), url, str(directory / "admin-token"), str(out)],
            capture_output=True, text=True, timeout=150,
        )  # fmt: skip
        assert script.returncode == 0, script.stderr + local_logs(directory)
        token = (directory / "admin-token").read_text().strip()
        yield Local(proc, directory, url, token, script.stdout.strip(), out)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


def test_curl_starts_a_run_reads_every_hospitals_metrics_and_downloads_the_model(
    local: Local,
) -> None:
    out = local.out
    nodes = json.loads((out / "nodes.json").read_text())["nodes"]
    assert {n["id"] for n in nodes if n["status"] == "online"} == HOSPITALS
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished", run
    assert run["rounds_done"] == 3 and run["started_by"] == "admin"
    assert run["app_name"] == "heart-disease" and len(run["app_sha256"]) == 64
    rounds = json.loads((out / "metrics.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    for r in rounds:
        assert r["metrics"], r  # the aggregated metrics
        for stage in ("train", "evaluate"):
            mine = [n for n in r["nodes"] if n["stage"] == stage]
            assert {n["node"] for n in mine} == HOSPITALS, (stage, r)
            assert all(n["outcome"] == "ok" and n["num_examples"] > 0 for n in mine)
            assert all(n["metrics"] and n["seconds"] > 0 for n in mine)
    assert all("auc" in n["metrics"] for n in rounds[-1]["nodes"] if n["stage"] == "evaluate")
    # the downloaded model is the run's final model, loaded with numpy alone
    with np.load(out / "model.npz", allow_pickle=False) as model:
        downloaded = {name: model[name] for name in model.files}
    final = load_model(local.directory / "server" / "runs" / local.run_id / "model.npz")
    assert downloaded.keys() == dict(final.items()).keys()
    assert all(np.array_equal(downloaded[k], final[k]) for k in downloaded)
    # the event stream the script waited on: every round, then the end
    events = (out / "events.txt").read_text()
    assert events.count("event: round_finished") == 3
    assert events.rstrip().splitlines()[-2] == "event: run_finished"
    # pushed as each round ended (the run's observers woke the stream), not found at the
    # 15 s keep-alive: a round of this run takes well under a second
    assert ": keep-alive" not in events


def test_the_sdk_reads_the_same_run(local: Local) -> None:
    import pandas

    client = ControlClient(local.url, local.token)
    assert local.token not in repr(client)
    table = pandas.DataFrame(client.metrics(local.run_id))
    per_node = table[table["node"].notna()]
    assert set(per_node["node"]) == HOSPITALS and set(per_node["round"]) == {1, 2, 3}
    assert {"loss", "num_examples", "seconds"} <= set(table.columns)
    events = list(client.events(local.run_id))  # a finished run: replayed, then the end
    assert [e["event"] for e in events] == ["round_finished"] * 3 + ["run_finished"]
    assert events[-1]["status"] == "finished"
    from safetensors.numpy import load

    tensors = load(client.download_model(local.run_id, format="safetensors"))
    final = load_model(local.directory / "server" / "runs" / local.run_id / "model.npz")
    assert all(np.array_equal(tensors[k], final[k]) for k in final)
    assert [r["run_id"] for r in client.runs()] == [local.run_id]


def test_it_prints_where_the_dashboard_is_and_serves_it_there(local: Local) -> None:
    printed = (local.directory / "local.out").read_text(errors="replace")
    assert f"dashboard: {local.url}/ " in printed
    with urllib.request.urlopen(f"{local.url}/", timeout=10) as page:
        assert page.status == 200 and b"<html" in page.read().lower()


def test_the_sdk_example_of_the_docs_runs(
    local: Local, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = (HERE.parents[1] / "docs" / "api.md").read_text()
    block = text.split("<!-- tested: sdk -->", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)  # it writes model.npz where it runs
    namespace = {"url": local.url, "token": local.token}
    exec(compile(block, "docs/api.md", "exec"), namespace)
    assert set(namespace["per_hospital"].columns) == HOSPITALS
    assert len(namespace["per_hospital"]) == 2
    with np.load(tmp_path / "model.npz", allow_pickle=False) as model:
        assert model.files


def test_sigterm_stops_every_process_it_started(local: Local) -> None:
    children = psutil.Process(local.proc.pid).children(recursive=True)
    assert len(children) >= 5  # the server and four nodes (and their app processes)
    local.proc.send_signal(signal.SIGTERM)
    assert local.proc.wait(60) == 0, local.log()
    _gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, alive
    assert "stopped the server and the nodes" in local.log()
