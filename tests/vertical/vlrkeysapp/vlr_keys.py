"""Vertical LR on synthetic rows, driven by a server program that swaps a key.

Every party holds the same 60 ids (no PSI needed) and two seeded columns; the
first party holds the labels. The server program relays the first forward task
to the second party with the third party's mask key replaced by one of its own
(what a server would do to remove the second party's masks), and finishes
with the reason the run stopped, so a test can check who refused what.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence

import numpy as np

from consortium import Arrays, Content, Message
from consortium.client import ClientApp
from consortium.core.context import Context
from consortium.core.errors import RoundFailed
from consortium.core.grid import Grid, GridWrapper
from consortium.server import ServerApp, ServerContext
from consortium.vertical.logistic import (
    PartyData,
    VerticalLRParams,
    register_vertical_lr,
    run_vertical_lr,
)
from consortium.vertical.logistic_masks import new_key
from consortium.vertical.logistic_protocol import KIND_FORWARD, PAYLOAD, PEERS

IDS = [f"row-{i:03d}" for i in range(60)]
LABEL_HOLDER = "cleveland"


def party(context: Context) -> PartyData:
    rng = np.random.default_rng(zlib.crc32(context.node_id.encode()))
    x = rng.normal(size=(len(IDS), 2))
    y = (x[:, 0] > 0).astype(np.int64) if context.node_id == LABEL_HOLDER else None
    return PartyData(ids=IDS, x=x, feature_names=("f0", "f1"), y=y)


client_app = ClientApp()
register_vertical_lr(client_app, party, lambda context: IDS)


class SwappingGrid(GridWrapper):
    """The run's grid, except that the first forward task to ``victim`` carries the
    server's own mask key in place of the last passive party's."""

    def __init__(self, inner: Grid, victim: str) -> None:
        super().__init__(inner)
        self.victim = victim
        _, self.key = new_key()

    def send_and_receive(
        self, messages: Sequence[Message], *, timeout: float | None
    ) -> Iterator[Message]:
        return self.inner.send_and_receive([self._swap(m) for m in messages], timeout=timeout)

    def push(self, messages: Sequence[Message]) -> None:
        self.inner.push([self._swap(m) for m in messages])

    def _swap(self, message: Message) -> Message:
        meta, content = message.metadata, message.content
        if meta.kind != KIND_FORWARD or meta.dst != self.victim or content is None:
            return message
        payload = Arrays(dict(content.arrays[PAYLOAD]))
        peers = payload[PEERS].copy()
        peers[-1] = self.key
        payload[PEERS] = peers
        return Message(meta, content=Content({**content.arrays, PAYLOAD: payload},
                                             dict(content.configs)))  # fmt: skip


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: ServerContext) -> None:
    parties = str(context.run_config["parties"]).split(",")
    grid.wait_for_nodes(len(parties), timeout=120)
    params = VerticalLRParams.from_config(context.run_config)
    run_vertical_lr(SwappingGrid(grid, parties[1]), context, params, parties)  # RoundFailed
    raise RoundFailed("the swapped key was not refused")
