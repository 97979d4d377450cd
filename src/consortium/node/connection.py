"""NodeConnection: what a node needs from its link to the server, whatever carries it.

The node process (:class:`~consortium.node.runner.NodeRunner`) sees the server
only through this protocol. Two implementations: the gRPC
:class:`~consortium.transport.grpc_client.FleetClient` (deployment, structurally:
it imports nothing from here) and
:class:`~consortium.node.memory.InMemoryConnection` (tests, one process).

Every method raises :class:`~consortium.core.errors.ServerUnavailable` when the
server could not be reached (worth retrying after a pause),
:class:`~consortium.core.errors.NodeRefused` when the server refused this node
for who it is (revoked, expired, not allow-listed, wrong role: the node stops),
and another :class:`~consortium.core.errors.TransportError` when the server
refused the call for what it is (retrying the same call cannot help).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from consortium.core.fleet_info import RunBundle, Welcome
from consortium.transport.chunks import Allocate

#: A contiguous piece of an encoded message.
Buffer = bytes | bytearray | memoryview


class NodeConnection(Protocol):
    """A node's connection to the server: say hello, stay alive, pull tasks, push results."""

    #: the largest task this node accepts; the runner sets it to the server's limit
    max_message_bytes: int

    @property
    def address(self) -> str:
        """Where the server is, for log lines."""
        ...

    def hello(self, version: str, instance_id: str) -> Welcome:
        """Announce this node process (a new ``instance_id`` means it restarted)."""
        ...

    def heartbeat(self) -> bool:
        """Tell the server this node is alive; False if it must say hello again."""
        ...

    def pull_task(self, wait: float, allocate: Allocate | None = None) -> Buffer | None:
        """The next task (an encoded Message), or None if none came within ``wait`` s;
        ``allocate`` chooses where it is received (see
        :data:`~consortium.transport.chunks.Allocate`)."""
        ...

    def push_result(self, parts: Sequence[Buffer], message_id: str) -> tuple[bool, str]:
        """Send a reply (an encoded Message, in parts); (accepted, the server's detail).

        Not accepted means delivered but judged useless (late, duplicate, the round
        is over): the node goes on and does not send it again.
        """
        ...

    def get_run(self, run_id: str) -> RunBundle:
        """The app bundle and config of ``run_id``."""
        ...

    def close(self) -> None:
        """Let go of the connection; no call is made after this."""
        ...
