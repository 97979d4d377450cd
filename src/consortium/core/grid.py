"""Grid: how a server program reaches nodes, whatever carries the messages.

A :class:`Grid` is the only door between a server's program (a ``ServerApp``
main, a workflow such as the round loop or FedBuff) and the nodes. The
simulation engine implements it in memory, the deployment server over gRPC;
the program cannot tell which, so the same main runs in both.

Two ways to talk to nodes:

* :meth:`Grid.send_and_receive` — a batch of tasks, their replies as a lazy
  stream **in a deterministic order** — the order the tasks were sent; on a
  simulated clock, the order they finish in simulated time — so a fold over
  them gives the same bits on every run, ending when all answered or the
  timeout passed;
* :meth:`Grid.push` and :meth:`Grid.pull` — send and forget, then take
  replies one at a time **in the order they finished** (asynchronous
  protocols such as FedBuff). :meth:`Grid.now` is the clock those replies are
  timed on: simulated seconds in a simulated-time grid, wall-clock seconds
  otherwise.

A node that fails answers with an error reply (``Message.error``); a node that
is lost answers with an error reply too, as soon as the grid knows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from consortium.core.message import Message


class Grid(Protocol):
    """Sends task messages to nodes and hands back their replies."""

    def node_ids(self) -> list[str]:
        """The nodes that can receive tasks now, sorted."""
        ...

    def wait_for_nodes(self, count: int, timeout: float) -> list[str]:
        """Wait (at most ``timeout`` seconds) until ``count`` nodes are online.

        Returns the nodes online when it returns, which may be fewer than
        ``count``; the caller decides whether that is a failure. A grid whose
        nodes are always there returns at once. While it waits, a deployment
        grid logs who is online and how long it has waited.
        """
        ...

    def send_and_receive(
        self, messages: Sequence[Message], *, timeout: float | None
    ) -> Iterator[Message]:
        """Deliver ``messages`` and yield replies in the order the tasks were sent
        (a simulated-time grid: in simulated completion order).

        A node that fails yields an error reply; a node that misses the
        ``timeout`` (seconds) yields nothing. The iterator ends when every
        message was answered or the timeout passed. A deployed server keeps the
        replies the program has not consumed yet within its transfer budget, and
        further uploads wait for room: consume each call's replies as they come,
        not after waiting on another call's.
        """
        ...

    def push(self, messages: Sequence[Message]) -> None:
        """Start ``messages``' tasks on their nodes; returns at once.

        Their replies come back through :meth:`pull`.
        """
        ...

    def pull(self, timeout: float | None) -> Message | None:
        """The next reply to a pushed task to finish (a failed node gives an error reply).

        Returns None when nothing finished within ``timeout`` seconds of
        :meth:`now`, or at once when no pushed task is in flight. A task may
        be answered after its program stopped waiting for it: check
        ``reply_to`` against what you sent.
        """
        ...

    def now(self) -> float:
        """The grid clock, in seconds (the one :meth:`pull` timeouts are measured on)."""
        ...


class GridWrapper:
    """A :class:`Grid` that passes every call to ``inner``.

    Subclass it to watch or change what crosses a grid (a recording, a replay,
    an attack in a test, a compromised server in a hostile-server test) and
    override only what changes; the rest of the protocol stays delegated.
    """

    def __init__(self, inner: Grid) -> None:
        self.inner = inner

    def node_ids(self) -> list[str]:
        return self.inner.node_ids()

    def wait_for_nodes(self, count: int, timeout: float) -> list[str]:
        return self.inner.wait_for_nodes(count, timeout)

    def send_and_receive(
        self, messages: Sequence[Message], *, timeout: float | None
    ) -> Iterator[Message]:
        return self.inner.send_and_receive(messages, timeout=timeout)

    def push(self, messages: Sequence[Message]) -> None:
        self.inner.push(messages)

    def pull(self, timeout: float | None) -> Message | None:
        return self.inner.pull(timeout)

    def now(self) -> float:
        return self.inner.now()
