"""Sending work to nodes: online nodes, task messages, the initial model.

The first parts of every workflow: wait until enough nodes are online, turn a
strategy's instructions into task messages, and get the initial global model
(from the strategy, or by asking one node for its parameters).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from consortium.core.arrays import Arrays
from consortium.core.errors import RoundFailed
from consortium.core.grid import Grid
from consortium.core.message import CONFIG, MODEL, QUERY, Content, Message
from consortium.server.context import ServerContext
from consortium.strategy.base import Instruction

log = logging.getLogger("consortium.server")


def online_nodes(grid: Grid, need: int, wait: float) -> list[str]:
    """The grid's online nodes, after waiting up to ``wait`` seconds for ``need`` of them.

    Fewer than ``need`` is logged and returned: the strategy's sampling then
    fails with a message saying how many it needs. ``wait`` = 0 takes the
    nodes there are.
    """
    nodes = grid.wait_for_nodes(need, wait) if wait > 0 else grid.node_ids()
    if len(nodes) < need:
        log.warning(
            "only %d of the %d nodes the strategy needs are online%s: %s",
            len(nodes), need, f" after waiting {wait:.0f} s" if wait > 0 else "",
            ", ".join(nodes) or "none",
        )  # fmt: skip
    return nodes


def task_message(
    ctx: ServerContext, node: str, step: int, kind: str, content: Content, timeout: float | None
) -> Message:
    """A task for ``node``; its deadline (wall clock) is ``timeout`` seconds from now."""
    deadline = time.time() + timeout if timeout else None
    return Message.create(
        run_id=ctx.run_id, dst=node, round=step, kind=kind, content=content, deadline=deadline
    )


def instruction_content(instruction: Instruction) -> Content:
    """An instruction as message content: the model, further records and the config."""
    records = instruction.records
    return Content(
        {MODEL: instruction.arrays, **records} if records else {MODEL: instruction.arrays},
        {CONFIG: instruction.config},
        {},
    )  # positional, and no unpacking of empty records: made once per node-task


def task_messages(
    ctx: ServerContext,
    step: int,
    kind: str,
    instructions: Sequence[Instruction],
    timeout: float | None,
) -> list[Message]:
    """One task per instruction, in the instructions' order."""
    return [
        task_message(ctx, i.node_id, step, kind, instruction_content(i), timeout)
        for i in instructions
    ]


def query_initial_model(grid: Grid, ctx: ServerContext, timeout: float | None) -> Arrays:
    """Ask the first online node (sorted by id) for its parameters."""
    nodes = sorted(grid.node_ids())
    if not nodes:
        raise RoundFailed("no node is available to provide initial parameters")
    msg = task_message(ctx, nodes[0], 0, QUERY, Content.of(Arrays(), {}), timeout)
    for reply in grid.send_and_receive([msg], timeout=timeout):
        if reply.metadata.reply_to != msg.metadata.message_id:
            continue
        if reply.error is not None:
            raise RoundFailed(
                f"node {reply.metadata.src} could not provide initial parameters: "
                f"{reply.error.reason}\n{reply.error.traceback}"
            )
        assert reply.content is not None
        if reply.content.model is not None:
            log.info("initial parameters from node %s", reply.metadata.src)
            return reply.content.model
    raise RoundFailed(f"node {nodes[0]} sent no initial parameters")
