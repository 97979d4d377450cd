"""Helpers of the PSI tests: run PSI over given id lists in simulation, read back each node."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from consortium import Content, Message
from consortium.client import ClientApp
from consortium.core.context import Context
from consortium.core.grid import Grid
from consortium.server import ServerApp, ServerContext
from consortium.simulation import run_simulation
from consortium.vertical import PsiSummary, aligned_indices, aligned_rows, register_psi, run_psi

#: the kind of the test task that reads a node's PSI result back
ECHO = "psi-test.echo"


@dataclass
class PsiRun:
    """What a simulated PSI run gave: the server's summary, each node's kept result."""

    summary: PsiSummary | None = None
    ids: dict[str, list[str]] = field(default_factory=dict)
    rows: dict[str, NDArray[np.int64]] = field(default_factory=dict)


def psi_client(sets: dict[str, Sequence[str]]) -> ClientApp:
    """A client app whose node ``n`` brings ``sets[n]``, answering ECHO with its result."""
    app = register_psi(ClientApp(), lambda context: sets[context.node_id])

    @app.handler(ECHO)
    def echo(message: Message, context: Context) -> Message:
        ids = aligned_rows(context)
        return message.reply(config={"ids": ids, "rows": aligned_indices(context).tolist()})

    return app


def simulate_psi(
    sets: dict[str, Sequence[str]],
    *,
    hub: str | None = None,
    chunk_size: int = 16,
    grid_wrapper: Callable[[Grid], Grid] | None = None,
    **simulation: Any,
) -> PsiRun:
    """PSI between the nodes of ``sets`` (the first is the hub unless ``hub`` says), then
    every node's aligned rows read back in a later task (its state kept between tasks)."""
    out = PsiRun()
    parties = list(sets)
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: ServerContext) -> None:
        out.summary = run_psi(
            grid, run_id=context.run_id, parties=parties, hub=hub, chunk_size=chunk_size,
            timeout=60,
        )  # fmt: skip
        tasks = [
            Message.create(run_id=context.run_id, dst=p, round=9, kind=ECHO, content=Content())
            for p in parties
        ]
        for reply in grid.send_and_receive(tasks, timeout=60):
            assert reply.content is not None, reply.error
            got = reply.content.config
            out.ids[reply.metadata.src] = [str(i) for i in got["ids"]]  # type: ignore[union-attr]
            out.rows[reply.metadata.src] = np.asarray(got["rows"], dtype=np.int64)

    client = simulation.pop("client_app", None) or psi_client(sets)
    run_simulation(server, client, node_ids=parties, grid_wrapper=grid_wrapper, **simulation)
    return out
