"""Replaying a recorded completion order: an asynchronous run again, in simulation.

In deployment, which node finishes first depends on real speeds, so an
asynchronous run (FedBuff) is a function of the seed *and* the order in which
replies arrived. :class:`ReplayGrid` runs the same app against virtual nodes
and hands pushed tasks' replies back in a given order of node ids — the one a
deployed run recorded (:func:`completion_order`) — so the simulated run takes
the same decisions and ends with the same model, bit for bit.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from consortium.core.errors import ConfigError
from consortium.core.grid import GridWrapper
from consortium.core.history import History, Outcome
from consortium.core.message import Message
from consortium.simulation.grid import SimulationGrid


def completion_order(history: History) -> list[str]:
    """The node ids of a run's pulled replies, in the order they arrived.

    Timeouts are left out (nothing arrived); failed and rejected replies stay
    (they arrived and freed their node).
    """
    return [n.node_id for r in history.rounds for n in r.nodes if n.outcome is not Outcome.TIMEOUT]


class ReplayGrid(GridWrapper):
    """A Grid over ``inner``'s virtual nodes whose pushed tasks finish in ``order``.

    Each pushed task runs at once on its virtual node; :meth:`pull` returns
    the reply of the node next in ``order``. The clock counts pulled replies.
    Batches (``send_and_receive``) run as ``inner`` runs them.
    """

    def __init__(self, inner: SimulationGrid, order: Sequence[str]) -> None:
        super().__init__(inner)
        self.inner: SimulationGrid = inner
        self._order = deque(order)
        self._done: dict[str, deque[Message]] = {}
        self._pulled = 0

    def push(self, messages: Sequence[Message]) -> None:
        for message in messages:
            for reply in self.inner.send_and_receive([message], timeout=None):
                self._done.setdefault(message.metadata.dst, deque()).append(reply)

    def pull(self, timeout: float | None) -> Message | None:
        """The reply of the node next in the order; None once the order is used up."""
        if not self._order or not any(self._done.values()):
            return None
        node = self._order.popleft()
        waiting = self._done.get(node)
        if not waiting:
            raise ConfigError(
                f"the replayed order diverged at reply {self._pulled + 1}: node {node!r} "
                "has no task in flight (a different app, seed or config than the recording?)"
            )
        self._pulled += 1
        return waiting.popleft()

    def now(self) -> float:
        return float(self._pulled)

    def close(self) -> None:
        self.inner.close()
