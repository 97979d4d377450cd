"""The one task runner: how a node runs a task, in simulation threads, worker processes
and the deployed node alike.

The runner calls the ClientApp (its mods, then the handler for the task's
kind), measures how long that took, and turns any exception into an error
reply, so a failing app never takes its runner down. What happens around it
(building the Context, keeping the node's state, reporting timing to the
server, logging the full traceback) is the caller's.

How much of an exception the error reply carries is the caller's choice, an
:data:`ErrorDetail`, because an exception's text can quote the data it failed
on (a patient record) and the reply leaves the silo:

* ``"type"``: the exception's class name and a fixed message; the deployed
  node's default (``consortium node --send-errors``);
* ``"message"``: the class name and the exception's text;
* ``"traceback"``: the text and the whole formatted traceback; what
  simulation sends (:data:`SIMULATION_ERROR_DETAIL`: one machine, whose run
  log shows the traceback anyway).
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from typing import Literal

from consortium.client.app import ClientApp
from consortium.core.context import Context
from consortium.core.message import Message

__all__ = [
    "ERROR_DETAILS",
    "SIMULATION_ERROR_DETAIL",
    "ErrorDetail",
    "TaskResult",
    "failure_reply",
    "format_traceback",
    "run_task",
]

#: How much of an exception an error reply carries (see the module docstring).
ErrorDetail = Literal["type", "message", "traceback"]
#: Every :data:`ErrorDetail`, from the least to the most revealing.
ERROR_DETAILS: tuple[ErrorDetail, ...] = ("type", "message", "traceback")
#: What simulation sends: the whole traceback (every node runs on this one machine).
SIMULATION_ERROR_DETAIL: ErrorDetail = "traceback"


@dataclass(frozen=True, slots=True)
class TaskResult:
    """What running one task gave: the reply to send, and how it went."""

    #: the app's reply, or an error reply (as detailed as asked) when the app raised
    reply: Message
    #: seconds spent in the app (mods and handler)
    seconds: float
    #: True when the app raised: ``reply`` is then the error reply, and the
    #: node state the app may have half-changed should not be trusted
    raised: bool
    #: the full formatted traceback when the app raised, whatever the reply
    #: carries: for the node's own log ("" when it did not raise)
    traceback: str = ""


def run_task(
    app: ClientApp,
    message: Message,
    context: Context,
    *,
    error_detail: ErrorDetail = SIMULATION_ERROR_DETAIL,
) -> TaskResult:
    """Run ``message`` through ``app`` on the node described by ``context``.

    Never raises for an error of the app (a mod or handler exception, a
    missing handler, a handler returning something else than a Message):
    those become an error reply carrying ``error_detail`` of the exception
    (:func:`failure_reply`), and the full traceback in ``TaskResult.traceback``.
    """
    started = time.perf_counter()
    try:
        reply = app(message, context)
    except Exception as exc:  # the app failed: report it, the runner goes on
        return TaskResult(
            failure_reply(message, exc, error_detail),
            time.perf_counter() - started,
            raised=True,
            traceback=format_traceback(exc),
        )
    return TaskResult(reply, time.perf_counter() - started, raised=False)


def failure_reply(
    message: Message, exc: BaseException, detail: ErrorDetail = SIMULATION_ERROR_DETAIL
) -> Message:
    """The error reply telling the server that ``message`` failed with ``exc``.

    Its code is always the exception's class name. Its reason and traceback
    depend on ``detail``: ``"type"`` a fixed message naming the class (the
    exception's text may quote private data; it stays in the node's log),
    ``"message"`` the class name and the exception's text, ``"traceback"``
    the text (or repr when it has none) and the formatted traceback.
    """
    name = type(exc).__name__
    if detail == "type":
        return message.error_reply(name, f"the task raised {name}; details are in the node's log")
    if detail == "message":
        return message.error_reply(name, f"{name}: {exc}" if str(exc) else repr(exc))
    return message.error_reply(name, str(exc) or repr(exc), format_traceback(exc))


def format_traceback(exc: BaseException) -> str:
    """``exc`` and its traceback, formatted as Python prints them."""
    return "".join(traceback.format_exception(exc))
