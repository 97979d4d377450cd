"""The node's app process keeps the client state on disk (state.bin) across restarts,
and forgets it when the app clears it: a process started again must not revive it.
What a task changes in its context's configs is not kept: the state is the one place a
node keeps something across tasks, as in simulation."""

from __future__ import annotations

from pathlib import Path

from consortium.core import Content
from consortium.core.message import Message
from consortium.node.app_process import ClientRun

APP = """
from consortium import ClientApp
from consortium.core.records import Config

app = ClientApp()

@app.handler("remember")
def remember(message, context):
    context.state.configs["memo"] = Config({"value": 1})
    return message.reply(metrics={"had": float("memo" in context.state.configs)})

@app.handler("forget")
def forget(message, context):
    context.state.configs.clear()
    return message.reply(metrics={"had": 0.0})

@app.handler("ask")
def ask(message, context):
    return message.reply(metrics={"had": float("memo" in context.state.configs)})

@app.handler("meddle")
def meddle(message, context):
    had = len(context.run_config["tags"]) + len(context.node_config["tags"])
    context.run_config["tags"].append("x")
    context.node_config["tags"].append("x")
    context.run_config["lr"] = 5.0
    return message.reply(metrics={"had": float(had)})
"""


def _run(tmp_path: Path) -> ClientRun:
    header = {"node_id": "n1", "node_config": {"tags": ["a"]}, "run_config": {"tags": ["a"]},
              "seed": 1,
              "send_errors": "type", "state_path": str(tmp_path / "state.bin"),
              "entry": "memo_app:app", "app_dir": str(tmp_path)}  # fmt: skip
    return ClientRun(header)


def _had(run: ClientRun, kind: str) -> float:
    task = Message.create(run_id="r", dst="n1", round=1, kind=kind, content=Content())
    reply = run.run(task).reply
    assert reply.content is not None, reply
    return float(reply.content.metric_values["had"])


def test_a_cleared_state_is_not_revived_by_a_restarted_app_process(tmp_path: Path) -> None:
    (tmp_path / "memo_app.py").write_text(APP)
    first = _run(tmp_path)
    _had(first, "remember")
    assert (tmp_path / "state.bin").exists()
    assert _had(_run(tmp_path), "ask") == 1.0  # a new process reads it back
    _had(first, "forget")
    assert not (tmp_path / "state.bin").exists()
    assert _had(_run(tmp_path), "ask") == 0.0


def test_what_a_task_changes_in_its_configs_reaches_no_later_task(tmp_path: Path) -> None:
    (tmp_path / "memo_app.py").write_text(APP)
    run = _run(tmp_path)
    assert [_had(run, "meddle") for _ in range(3)] == [2.0, 2.0, 2.0]
    assert run.run_config == {"tags": ["a"]} and run.node_config == {"tags": ["a"]}
