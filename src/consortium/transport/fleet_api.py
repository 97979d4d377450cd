"""What the gRPC servicers need from the server, as interfaces (the server implements them).

The transport layer sits below the server: it turns RPCs into calls on these
protocols and never sees rounds, strategies or databases.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from consortium.core.errors import WireFormatError
from consortium.core.fleet_info import RunBundle
from consortium.core.message import Message
from consortium.transport.receive_budget import ReceiveBudget

__all__ = ["BanList", "ControlBackend", "FleetBackend", "RunBundle"]


class FleetBackend(Protocol):
    """The server's side of the node-facing API."""

    heartbeat_interval: float
    max_message_bytes: int
    #: what the transport may hold in transit (tasks being sent, replies not yet folded)
    transfer_budget: ReceiveBudget

    def hello(
        self, node: str, instance_id: str, *, version: str = "", organisation: str = ""
    ) -> None:
        """``node`` (authenticated) connected; a new ``instance_id`` means it restarted.
        ``version`` is the Consortium version it reports ("" unknown), ``organisation``
        its certificate's ``O=`` ("" none)."""

    def heartbeat(self, node: str) -> bool:
        """Record a heartbeat; False if the node must say hello again."""

    def next_task(
        self, node: str, wait: float, *, slow_link: bool = False
    ) -> tuple[str, list[bytes | bytearray | memoryview]] | None:
        """The node's next task as (message id, encoded parts), waiting up to ``wait`` s.
        ``slow_link``: the node's link is known to be slow (its model-sized task is not
        held to the few sent at once to fast links)."""

    def tasks_waiting(self) -> bool:
        """Whether a node's task waits for a send slot (others are being sent)."""

    def task_sent(self, message_id: str) -> None:
        """The task's stream to its node ended (sent, failed or abandoned)."""

    def task_crawls(self, message_id: str) -> None:
        """The task's stream turned out to run over a slow link: it no longer holds a
        place among the model-sized tasks sent at once to fast links."""

    def task_wanted(self, message_id: str) -> bool:
        """False once the task was withdrawn (round over, node lost): stop sending it."""

    def deliver(
        self, node: str, reply: Message, on_consumed: Callable[[], None] | None = None
    ) -> tuple[bool, str]:
        """A reply from ``node`` (decoded and checked to be a reply); (accepted, detail).

        If accepted, ``on_consumed`` is called once when the server is done with it.
        """

    def run_bundle(self, node: str, run_id: str) -> RunBundle | None:
        """The app bundle and config of ``run_id``, if ``node`` takes part in it."""

    def refused(self, node: str | None, peer: str, reason: str) -> None:
        """A call was refused; ``node`` names the federation's node that made it, when
        its certificate is ours but no longer accepted (revoked, expired, off the
        allow-list); ``peer`` is the caller's address."""


class ControlBackend(Protocol):
    """The server's side of the coordinator's API."""

    def start_run(self, bundle: bytes, run_config_json: str, seed: int) -> str: ...

    def list_runs(self) -> list[dict[str, Any]]: ...

    def show_run(self, run_id: str) -> dict[str, Any] | None: ...

    def stop_run(self, run_id: str) -> bool: ...

    def run_bundle(self, node: str, run_id: str) -> RunBundle | None:
        """The app of a run this server executes (the audit log records its name,
        version and digest when the run starts)."""

    def global_model(self, run_id: str) -> bytes | None:
        """The run's final global model, or before it ends its newest checkpointed one, in
        the Arrays wire format; None for an unknown run or one with no model yet."""


class BanList(Protocol):
    """The nodes this server refuses (``consortium fleet ban``), whatever their certificate."""

    def ban(self, name: str, reason: str, by: str) -> bool:
        """Refuse ``name`` from its next call on; False if it was banned already."""

    def unban(self, name: str) -> bool:
        """Let ``name`` back in; False if it was not banned."""

    def reason(self, name: str) -> str | None:
        """Why ``name`` is banned, or None when it is not."""


def decode_reply(payload: memoryview, max_bytes: int) -> Message:
    """The reply Message a node pushed in ``payload``; :class:`WireFormatError` if it is
    not one (every transport checks a pushed result with this)."""
    try:
        # the reassembled buffer belongs to this message alone: a fold may reuse it
        reply = Message.from_bytes(payload, max_bytes=max_bytes, exclusive=True)
    except WireFormatError as exc:
        raise WireFormatError(f"not a Consortium message: {exc}") from exc
    task = reply.metadata.reply_to
    if not isinstance(task, str) or not task:
        raise WireFormatError(
            f"not a reply: a result must name the task it answers in reply_to (got {task!r})"
        )
    return reply
