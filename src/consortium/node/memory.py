"""InMemoryConnection: a node talking to a FleetBackend in the same process, with no network.

It does what the gRPC path does between the node and the server, minus the
sockets: messages cross as chunk streams (copied into a buffer of the
receiver's own, integrity- and size-checked by the same
:class:`~consortium.transport.chunks.Reassembler`), a reply is decoded and
checked to be a reply before the backend sees it, and the server's transfer
budget is held as it would be. :meth:`InMemoryConnection.down` and
:meth:`~InMemoryConnection.up` simulate an outage: meanwhile every call raises
:class:`~consortium.core.errors.ServerUnavailable`, and so does a transfer
that is under way when the server goes down. :meth:`InMemoryConnection.refuse`
makes the server refuse the node as the gRPC server does a revoked certificate:
the backend hears of it (``FleetBackend.refused``) and every call raises
:class:`~consortium.core.errors.NodeRefused`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from consortium.core.errors import (
    NodeRefused,
    ServerUnavailable,
    TransportError,
    WireFormatError,
)
from consortium.core.fleet_info import RunBundle, Welcome
from consortium.core.message import Message
from consortium.node.connection import Buffer
from consortium.transport.chunks import (
    Allocate,
    PayloadTooLarge,
    Reassembler,
    Refused,
    iter_chunks,
)
from consortium.transport.fleet_api import FleetBackend, decode_reply

#: The longest a pull waits for a task, as the gRPC service caps it.
MAX_PULL_WAIT = 60.0


class InMemoryConnection:
    """A :class:`~consortium.node.connection.NodeConnection` straight to ``backend``.

    ``node_name`` is the identity the server sees, as a certificate would give it.
    """

    def __init__(
        self, backend: FleetBackend, node_name: str, *, max_message_bytes: int = 16 * 1024**3
    ) -> None:
        self.address = f"memory:{node_name}"
        self.max_message_bytes = max_message_bytes
        self._backend = backend
        self._node = node_name
        self._reachable = threading.Event()
        self._reachable.set()
        self._closed = False
        #: why the server refuses this node now (None: it does not)
        self._refusal: str | None = None

    # -- outages ---------------------------------------------------------------------
    def down(self) -> None:
        """The server becomes unreachable: calls raise ServerUnavailable until :meth:`up`."""
        self._reachable.clear()

    def up(self) -> None:
        """The server is reachable again (with whatever state it kept meanwhile)."""
        self._reachable.set()

    def refuse(self, reason: str) -> None:
        """The server refuses this node from now on, for ``reason`` (e.g. its certificate
        was revoked): every call raises NodeRefused, as gRPC's UNAUTHENTICATED does."""
        self._refusal = reason

    # -- NodeConnection --------------------------------------------------------------
    def close(self) -> None:
        self._closed = True

    def hello(self, version: str, instance_id: str) -> Welcome:
        self._check(f"hello to {self.address}")
        self._backend.hello(self._node, instance_id, version=version)
        return Welcome(
            node_id=self._node,
            heartbeat_interval=self._backend.heartbeat_interval,
            max_message_bytes=self._backend.max_message_bytes,
        )

    def heartbeat(self) -> bool:
        self._check("heartbeat")
        return self._backend.heartbeat(self._node)

    def pull_task(self, wait: float, allocate: Allocate | None = None) -> memoryview | None:
        what = "pulling a task"
        self._check(what)
        task = self._backend.next_task(self._node, min(max(float(wait), 0.0), MAX_PULL_WAIT))
        if task is None:
            return None
        message_id, parts = task
        del task
        rebuild = Reassembler(self.max_message_bytes, allocate=allocate)
        try:
            for chunk in iter_chunks(parts, message_id):
                self._check(what)  # an outage cuts the stream: the task is lost in transit
                if not self._backend.task_wanted(message_id):
                    raise TransportError(f"{what} failed (CANCELLED): the task was withdrawn")
                rebuild.feed(chunk)
            return rebuild.result()
        finally:
            self._backend.task_sent(message_id)

    def push_result(self, parts: Sequence[Buffer], message_id: str) -> tuple[bool, str]:
        what = "sending a result"
        self._check(what)
        rebuild = Reassembler(self._backend.max_message_bytes, self._backend.transfer_budget)
        accepted = False
        try:
            reply = self._receive(rebuild, parts, message_id, what)
            try:
                accepted, detail = self._backend.deliver(self._node, reply, rebuild.consumed)
            except Refused as exc:  # the status the gRPC service would answer with
                raise TransportError(f"{what} failed ({exc.status}): {exc}") from exc
        finally:
            if not accepted:
                rebuild.close()
        return accepted, detail

    def get_run(self, run_id: str) -> RunBundle:
        what = f"fetching run {run_id}"
        self._check(what)
        bundle = self._backend.run_bundle(self._node, run_id)
        if bundle is None:
            raise TransportError(f"{what} failed (NOT_FOUND): no run {run_id!r} for {self._node!r}")
        return bundle

    # -- internals -------------------------------------------------------------------
    def _check(self, what: str) -> None:
        """Raise as a network call would if the connection is closed or the server down."""
        if self._closed:
            raise TransportError(f"{what} failed: the connection is closed")
        if not self._reachable.is_set():
            raise ServerUnavailable(
                f"{what} failed (UNAVAILABLE): the server is unreachable (simulated outage)"
            )
        if self._refusal is not None:
            self._backend.refused(self._node, self.address, self._refusal)
            raise NodeRefused(f"{what} failed (UNAUTHENTICATED): {self._refusal}")

    def _receive(
        self, rebuild: Reassembler, parts: Sequence[Buffer], message_id: str, what: str
    ) -> Message:
        """The reply, received and checked as the gRPC service does (``PushResult``)."""
        try:
            for chunk in iter_chunks(parts, message_id):
                self._check(what)
                rebuild.feed(chunk)
            payload = rebuild.result()
        except PayloadTooLarge as exc:
            raise TransportError(f"{what} failed (RESOURCE_EXHAUSTED): {exc}") from exc
        except WireFormatError as exc:
            raise TransportError(f"{what} failed (DATA_LOSS): {exc}") from exc
        try:
            return decode_reply(payload, self._backend.max_message_bytes)
        except WireFormatError as exc:
            raise TransportError(f"{what} failed (INVALID_ARGUMENT): {exc}") from exc
