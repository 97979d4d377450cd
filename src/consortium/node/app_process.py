"""A run's client app process: ``python -m consortium.node.app_process FD``.

Started by :class:`~consortium.node.isolated.RunProcess`. It confines itself
(:func:`consortium.sandbox.child.enter`) before it imports the app, then
answers each ``task`` frame with a ``reply``: the task runner's reply
(:func:`~consortium.client.task.run_task`, with the node's ``--send-errors``
policy), how long the app took, and the full traceback for the node's log.
The run's client state lives here between rounds; after each task that did
not raise it is saved to the process's work folder, so a fresh process of the
same run (after a crash, an idle end or a node restart) resumes it. While a
task runs, the app may ask the node to sign or verify SecAgg+ keys
(:mod:`~consortium.node.identity_link`): the node's key never comes here.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from consortium.apps.loader import load_app
from consortium.client.app import ClientApp
from consortium.client.task import (
    ErrorDetail,
    TaskResult,
    failure_reply,
    format_traceback,
    run_task,
)
from consortium.core.context import Context, NodeState
from consortium.core.identity import host_identity
from consortium.core.message import Message
from consortium.core.records import config_copy
from consortium.core.state_codec import decode_state, encode_state
from consortium.node.identity_link import ChannelIdentity
from consortium.sandbox.channel import ChannelClosed
from consortium.sandbox.child import enter

#: the largest frame this side accepts: its parent, the node, bounds what it accepts itself
MAX_FRAME = 1 << 40

log = logging.getLogger("consortium.node.app")


class ClientRun:
    """The run's app, its settings and its client state, inside the app process."""

    def __init__(self, h: dict[str, Any]) -> None:
        self.node_id = str(h["node_id"])
        self.node_config = dict(h["node_config"])
        self.run_config = dict(h["run_config"])
        self.seed = int(h["seed"])
        self.send_errors: ErrorDetail = h["send_errors"]
        self.state_path = Path(str(h["state_path"]))
        self.saved = self.state_path.read_bytes() if self.state_path.exists() else b""
        self.state = self._saved_state()
        self.app: ClientApp | None = None
        self.load_error: Exception | None = None
        try:  # the user's code is imported here, after confinement
            self.app = load_app(str(h["entry"]), [str(h["app_dir"])])
        except Exception as exc:  # every task of the run is answered with it
            log.exception("the app could not be loaded")
            self.load_error = exc

    def run(self, task: Message) -> TaskResult:
        if self.app is None:
            assert self.load_error is not None
            exc = self.load_error
            return TaskResult(failure_reply(task, exc, self.send_errors), 0.0, raised=True,
                              traceback=format_traceback(exc))  # fmt: skip
        # configs of its own, as in simulation: what a task changes in them is not kept
        context = Context(node_id=self.node_id, node_config=config_copy(self.node_config),
                          run_config=config_copy(self.run_config), state=self.state,
                          seed=self.seed)  # fmt: skip
        result = run_task(self.app, task, context, error_detail=self.send_errors)
        if result.raised:  # the state the app may have half-changed is dropped
            self.state = self._saved_state()
            return result
        self.state = context.state
        if not self.state.is_empty():
            self.saved = encode_state(self.state)
            tmp = self.state_path.with_suffix(".tmp")
            tmp.write_bytes(self.saved)
            tmp.replace(self.state_path)
        elif self.saved:  # the app cleared its state: a restarted process must not revive it
            self.saved = b""
            self.state_path.unlink(missing_ok=True)
        return result

    def _saved_state(self) -> NodeState:
        return decode_state(self.saved) if self.saved else NodeState()


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    channel = enter(MAX_FRAME, in_place="copy-on-write")
    start = channel.recv()
    if start.kind != "start":
        log.error("expected 'start', got %r", start.kind)
        return 2
    # SecAgg+ signs with the node's certificate key, which stays with the node: ask it
    host_identity(ChannelIdentity(channel))
    run = ClientRun(start.header)
    while True:
        try:
            frame = channel.recv()
        except ChannelClosed:  # the node ended this process, or the node itself ended
            return 0
        if frame.kind != "task":
            log.error("expected a task, got %r", frame.kind)
            return 2
        task = Message.from_bytes(frame.payload)
        del frame  # the task's payload now lives as long as the task
        result = run.run(task)
        try:
            parts = result.reply.to_parts()
        except Exception as exc:  # a reply that cannot be encoded is the app's error
            result = TaskResult(failure_reply(task, exc, run.send_errors), result.seconds,
                                raised=True, traceback=format_traceback(exc))  # fmt: skip
            parts = result.reply.to_parts()
        header = {"seconds": result.seconds, "raised": result.raised,
                  "traceback": result.traceback}  # fmt: skip
        # a task read where it lies (copy-on-write) gives the node its block back with
        # the reply, unless the app keeps some of it: then with a later frame
        del task
        try:
            channel.send("reply", header, parts)
        except ChannelClosed:
            return 0
        del result, parts


if __name__ == "__main__":
    raise SystemExit(main())
