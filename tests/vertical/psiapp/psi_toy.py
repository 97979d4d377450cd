"""PSI between the parties the run config names, then each node's result read back.

The main runs :func:`run_psi`, then asks every party, in a later task, for the
aligned ids and rows it kept in its node state; it finishes with them as its
"model" (``<node>.ids``: the ids' UTF-8 bytes, ``<node>.ends``: where each ends,
``<node>.rows``: their rows), so a test can check what each node kept.
"""

from __future__ import annotations

import zlib

import numpy as np

from consortium import Arrays, Content, Message
from consortium.client import ClientApp
from consortium.core.context import Context
from consortium.core.grid import Grid
from consortium.core.history import RoundRecord
from consortium.server import ServerApp, ServerContext
from consortium.vertical import aligned_indices, aligned_rows, register_psi, run_psi
from consortium.vertical.psi_state import encode_ids

#: the kind of the task that reads a node's PSI result back
ECHO = "psi-toy.echo"
#: every party draws its ids from this many
UNIVERSE = 400


def party_ids(name: str) -> list[str]:
    """A party's ids: a seeded 60% of the universe, shuffled, with one id repeated."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    chosen = rng.permutation(UNIVERSE)[: UNIVERSE * 3 // 5]
    ids = [f"patient-{i:05d}" for i in chosen.tolist()]
    return [*ids, ids[0]]


def node_ids(context: Context) -> list[str]:
    return party_ids(str(context.node_config["center"]))


client_app = register_psi(ClientApp(), node_ids)


@client_app.handler(ECHO)
def echo(message: Message, context: Context) -> Message:
    blob, ends = encode_ids(aligned_rows(context))
    return message.reply(Content(arrays={"psi": Arrays(
        {"ids": blob, "ends": ends, "rows": aligned_indices(context)})}))  # fmt: skip


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: ServerContext) -> None:
    parties = str(context.run_config["parties"]).split(",")
    grid.wait_for_nodes(len(parties), timeout=120)
    summary = run_psi(
        grid, run_id=context.run_id, parties=parties,
        chunk_size=int(context.run_config["chunk-size"]), timeout=120,
    )  # fmt: skip
    metrics = {"psi.intersection": summary.intersection, "psi.round_trips": summary.round_trips,
               "psi.tagged": int(summary.tagged)}  # fmt: skip
    context.report(RoundRecord(1, train_metrics=metrics))
    tasks = [Message.create(run_id=context.run_id, dst=p, round=2, kind=ECHO, content=Content())
             for p in parties]  # fmt: skip
    kept = Arrays()
    for reply in grid.send_and_receive(tasks, timeout=120):
        assert reply.content is not None, reply.error
        for name, value in reply.content.arrays["psi"].items():
            kept[f"{reply.metadata.src}.{name}"] = value
    context.finish(kept)
