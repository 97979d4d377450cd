"""What the Fleet service checks in a node's reply before receiving all of it: the
header's records against the server's limits, and that it is a reply at all; the
backend then judges it against its task (:class:`CheckedFleetBackend`)."""

from __future__ import annotations

from typing import Protocol

from consortium.core.errors import WireFormatError
from consortium.core.message import Metadata, peek_metadata
from consortium.core.records import RecordLimits, UnacceptableRecord
from consortium.transport.fleet_api import FleetBackend


class CheckedFleetBackend(FleetBackend, Protocol):
    """A FleetBackend that also judges replies before they are received, and counts
    the ones refused (the server's Fleet)."""

    #: what the Config and Metrics records of a node's message may hold
    record_limits: RecordLimits

    def admit_reply(self, node: str, meta: Metadata, size: int) -> str | None:
        """None to receive the reply; why not (late, duplicate); raises Refused."""

    def reply_buffer(self, run_id: str, size: int) -> memoryview | None:
        """Where to receive a reply of ``size`` bytes for ``run_id`` (None: anywhere)."""

    def count_refusal(self, node: str, reason: str) -> None:
        """Count a reply of ``node`` refused for ``reason``."""

    def transfer_stalled(self, node: str, task_id: str, reason: str) -> None:
        """The transfer of ``node``'s task (or of its reply to it) stopped moving and
        was cut off: the task fails for its round with ``reason`` (``task_id`` empty:
        a reply cut off before its header named its task; every task of the node)."""


class NotAReply(WireFormatError):
    """The first bytes of a pushed result are not those of a reply Message."""


def peek_reply(head: memoryview, limits: RecordLimits) -> Metadata | None:
    """The metadata of the reply whose first bytes are ``head`` (None: too few yet),
    its header checked against ``limits``; raises as :func:`decode_reply` would."""
    try:
        meta = peek_metadata(head, limits)
    except UnacceptableRecord:
        raise
    except WireFormatError as exc:
        raise NotAReply(f"not a Consortium message: {exc}") from exc
    if meta is not None and not meta.reply_to:
        raise NotAReply(
            "not a reply: a result must name the task it answers in reply_to "
            f"(got {meta.reply_to!r})"
        )
    return meta
