"""The server forwards a round's replies to its app process only a few ahead of what
the app has consumed (``reply_window.REPLIES_AHEAD``), so an app that folds slowly does not
gather every reply of the round in its memory: the replies wait in the server, where
the transfer budget counts them and holds back further uploads.

A real deployment (`consortium server`, `consortium node`, mutual TLS): the server
app sends ten tasks at once and the node answers each with 20 MB; the app leaves its
replies unread for a while, then consumes them. The peak of its process's own memory
(private pages, sampled from ``/proc`` by the test: the app may not read it) must grow
by less than four replies' worth (it grew by two, 44 MB); with every reply forwarded
at once it grew by all ten (196 MB). The server keeps the rest within its transfer
budget, which bounds them however many nodes answer.

With a transfer budget of two replies, the server receives every reply of the
round into two shared blocks of the app's, reused in turn: a forwarded reply
counts in the budget until the app says it consumed it, and the app gives its
block back as soon as it lets go of it, so the next upload is received into
that block. (Before, the budget let the next upload in as soon as the server had
forwarded the one before, while the app still held both: a third block.) With
a budget of one reply, into one block: the app lets go of each reply before it
asks for the next, and the server hears of that first.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from consortium.sandbox.confine import landlock_available

from .conftest import Deployment, writable_blocks, write_app

pytestmark = pytest.mark.skipif(not landlock_available(), reason="needs Linux Landlock")

NODE = "cleveland"
REPLY_MB = 20
TASKS = 10

APP = f"""
import os
import time

import numpy as np

from consortium import ClientApp, ServerApp
from consortium.core.arrays import Arrays
from consortium.core.history import RoundRecord
from consortium.core.message import Content, Message

client = ClientApp()
app = ServerApp()
SIZE = {REPLY_MB} * 1_000_000 // 4


@client.query()
def query(msg, context):
    value = float(msg.content.config["i"])
    return msg.reply(arrays=Arrays({{"w": np.full(SIZE, value, dtype=np.float32)}}))


def wait_for(name):
    deadline = time.monotonic() + 120
    while not os.path.exists(name) and time.monotonic() < deadline:
        time.sleep(0.05)


@app.main()
def main(grid, context):
    (node,) = grid.wait_for_nodes(1, 60)
    open("ready", "w").close()
    wait_for("begin")  # the test reads this process's memory before the round
    tasks = [Message.create(run_id=context.run_id, dst=node, round=1, kind="query",
                            content=Content.of(config={{"i": i}})) for i in range({TASKS})]
    index = {{t.metadata.message_id: i for i, t in enumerate(tasks)}}
    replies = grid.send_and_receive(tasks, timeout=120)
    time.sleep(5)  # a slow fold: the node has answered every task meanwhile
    exact = 0
    for reply in replies:
        w = reply.content.arrays["model"]["w"]
        expected = float(index[reply.metadata.reply_to])
        exact += int(w.shape == (SIZE,) and bool((w == expected).all()))
        del reply, w
    context.report(RoundRecord(round=1, central_metrics={{"exact": float(exact)}}))
    wait_for("go")  # the test reads this process's peak memory
"""

MANIFEST = """
[app]
name = "reply-pacing"
version = "1.0.0"
server = "paced:app"
client = "paced:client"
"""


def _private_mb(pid: int) -> float:
    """Memory of the process's own: pages no other process maps (the libraries it shares
    with other interpreters, and any memory it shares with the server, are left out)."""
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        return sum(int(line.split()[1]) for line in fh if line.startswith("Private_")) / 1024


class PeakPrivate(threading.Thread):
    """The peak of :func:`_private_mb`, sampled every 20 ms until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.02):
            self.peak = max(self.peak, _private_mb(self.pid))


def _start_when_ready(deployment: Deployment, app: Path) -> tuple[str, Path]:
    """Start a run of ``app``; once its server app is ready (its imports done, it waits
    for "begin" in its work folder), the run's id and that folder."""
    run_id = deployment.start_run(app, {}, seed=1)
    work = deployment.run_dir(run_id) / "work"
    deadline = time.monotonic() + 60
    while not (work / "ready").exists():
        assert time.monotonic() < deadline, deployment.log("server")
        time.sleep(0.05)
    return run_id, work


def test_a_slow_server_app_holds_a_few_replies_not_the_whole_round(
    deployment: Deployment, tmp_path: Path
) -> None:
    app = write_app(tmp_path / "paced", MANIFEST, {"paced": APP})
    deployment.start_server()
    deployment.start_node(NODE, app=app)
    run_id, work = _start_when_ready(deployment, app)
    app_pid = deployment.app_process("server", "consortium.server.isolation")
    before = _private_mb(app_pid)
    sampler = PeakPrivate(app_pid)
    sampler.start()
    (work / "begin").write_text("")
    deployment.wait_rounds(run_id, 1)
    sampler.done.set()
    sampler.join()
    grew = sampler.peak - before
    (work / "go").write_text("")
    info = deployment.wait_run(run_id, timeout=120)

    assert info["status"] == "finished", (info, deployment.log("server"), deployment.log(NODE))
    assert info["rounds"][0]["metrics"]["central_exact"] == TASKS, info["rounds"]
    # REPLIES_AHEAD forwarded and the one the app's loop still holds while it asks for more
    # (seen: two at the peak, 44 MB); every reply of the round would be ten
    assert grew < 4 * REPLY_MB, f"the app process's own memory grew by {grew:.0f} MB"


@pytest.mark.parametrize(("budget_replies", "blocks_wanted"), [(2.5, 2), (1.5, 1)])
def test_the_server_receives_a_rounds_replies_into_as_many_blocks_as_its_budget_admits(
    deployment: Deployment, tmp_path: Path, budget_replies: float, blocks_wanted: int
) -> None:
    """With a budget of two replies, into two blocks in turn; with one, into one: the
    app lets go of each reply before it asks for the next, and the server hears of it
    before that request, so the upload the request lets in finds the block free.
    (Before, the app's reader thread kept the last frame it read until the next one
    came, so the app gave a block back only once it held the next reply: with a
    budget of one reply, a second block.)"""
    app = write_app(tmp_path / "paced", MANIFEST, {"paced": APP})
    deployment.start_server("--transfer-budget-mb", str(int(budget_replies * REPLY_MB)))
    deployment.start_node(NODE, app=app)
    run_id, work = _start_when_ready(deployment, app)
    (work / "begin").write_text("")
    deployment.wait_rounds(run_id, 1)
    blocks = writable_blocks(deployment.procs["server"].pid)  # the app (and they) live
    (work / "go").write_text("")
    info = deployment.wait_run(run_id, timeout=120)

    assert info["status"] == "finished", (info, deployment.log("server"), deployment.log(NODE))
    assert info["rounds"][0]["metrics"]["central_exact"] == TASKS, info["rounds"]
    assert blocks == blocks_wanted, f"the server received {TASKS} replies into {blocks} blocks"


def test_a_reply_held_back_by_the_servers_budget_longer_than_the_stall_timeout_arrives(
    deployment: Deployment, tmp_path: Path
) -> None:
    """The app folds slowly (5 s) and the budget admits one reply and a half: the node's
    next upload waits for the budget after its first chunk, longer than the 2 s stall
    timeout. That wait is the server's, not the node's. (Before, the stall watch counted
    it and cut the honest upload off: "its reply stopped arriving for 2 s", and the run
    failed; with the default 60 s, any fold or slow upload ahead of it over a minute.)"""
    app = write_app(tmp_path / "paced", MANIFEST, {"paced": APP})
    budget_mb = str(int(1.5 * REPLY_MB))
    deployment.start_server("--transfer-budget-mb", budget_mb, "--stall-timeout", "2")
    deployment.start_node(NODE, app=app)
    run_id, work = _start_when_ready(deployment, app)
    (work / "begin").write_text("")
    deployment.wait_rounds(run_id, 1, timeout=60)
    (work / "go").write_text("")
    info = deployment.wait_run(run_id, timeout=60)

    assert info["status"] == "finished", (info, deployment.log("server"), deployment.log(NODE))
    assert info["rounds"][0]["metrics"]["central_exact"] == TASKS, info["rounds"]
    assert "cut off" not in deployment.log("server")
