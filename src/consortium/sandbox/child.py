"""The child's side: receive the spec, confine this process, say ``ready``.

A sandboxed entry point (``python -m consortium.server.app_process`` and the
node's) calls :func:`enter` first thing, before it imports user code.
"""

from __future__ import annotations

import sys

from consortium.core.stack_dumps import dump_stacks_on_signal
from consortium.sandbox.channel import SHARED_FLAG, Channel, InPlace
from consortium.sandbox.confine import SandboxSpec, confine


def enter(max_payload: int, *, in_place: InPlace | None = None) -> Channel:
    """The channel to the parent (fd in ``argv[1]``), once this process is confined.

    With shared memory (spawn's ``shared``), large payloads cross in blocks; with
    ``in_place`` a payload the parent sends in one block range is read where it lies
    instead of copied out (see :class:`~consortium.sandbox.channel.Channel`)."""
    dump_stacks_on_signal()  # kill -USR1 PID: every thread's stack into the process's log
    shared = sys.argv[2:3] == [SHARED_FLAG]
    channel = Channel.from_fd(int(sys.argv[1]), max_payload=max_payload,
                              peer="parent" if shared else None,
                              in_place=in_place)  # fmt: skip
    frame = channel.recv()
    if frame.kind != "spec":
        raise SystemExit(f"sandbox: expected the spec, got {frame.kind!r}")
    try:
        confine(SandboxSpec.from_json(frame.header["spec"]))
    except Exception as exc:
        channel.send("error", {"error": f"{type(exc).__name__}: {exc}"})
        raise SystemExit(3) from exc
    channel.send("ready")
    return channel
