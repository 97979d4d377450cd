"""The one task runner: how a node runs a task, in simulation threads, worker processes
and the deployed node alike.

The runner calls the ClientApp (its mods, then the handler for the task's
kind), measures how long that took, and turns any exception into an error
reply carrying the traceback, so a failing app never takes its runner down.
What happens around it (building the Context, keeping the node's state,
reporting timing to the server) is the caller's.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass

from consortium.client.app import ClientApp
from consortium.core.context import Context
from consortium.core.message import Message

__all__ = ["TaskResult", "failure_reply", "run_task"]


@dataclass(frozen=True, slots=True)
class TaskResult:
    """What running one task gave: the reply to send, and how it went."""

    #: the app's reply, or an error reply with the traceback when the app raised
    reply: Message
    #: seconds spent in the app (mods and handler)
    seconds: float
    #: True when the app raised: ``reply`` is then the error reply, and the
    #: node state the app may have half-changed should not be trusted
    raised: bool


def run_task(app: ClientApp, message: Message, context: Context) -> TaskResult:
    """Run ``message`` through ``app`` on the node described by ``context``.

    Never raises for an error of the app (a mod or handler exception, a
    missing handler, a handler returning something else than a Message):
    those become ``message.error_reply(exception name, message, traceback)``.
    """
    started = time.perf_counter()
    try:
        reply = app(message, context)
    except Exception as exc:  # the app failed: report it, the runner goes on
        return TaskResult(failure_reply(message, exc), time.perf_counter() - started, raised=True)
    return TaskResult(reply, time.perf_counter() - started, raised=False)


def failure_reply(message: Message, exc: BaseException) -> Message:
    """The error reply telling the server that ``message`` failed with ``exc``.

    Carries the exception's class name, its message (or repr when it has
    none) and its formatted traceback.
    """
    return message.error_reply(
        type(exc).__name__, str(exc) or repr(exc), "".join(traceback.format_exception(exc))
    )
