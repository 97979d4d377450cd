"""Workflows: server programs over the Grid, built from small parts.

* :mod:`~consortium.server.workflow.tasks` — online nodes, task messages, the initial model;
* :mod:`~consortium.server.workflow.replies` — judging and validating replies into updates;
* :mod:`~consortium.server.workflow.rounds` — the synchronous round loop (``ServerConfig``);
* :mod:`~consortium.server.workflow.fedbuff` — asynchronous FedBuff (``AsyncServerConfig``);
* :mod:`~consortium.server.workflow.secagg` — the round loop over SecAgg+ secure aggregation
  (``SecAggPlusWorkflow``; import it from there: it needs ``cryptography``, the ``privacy``
  extra, which ``import consortium`` must not load).

Reporting, checkpoints and the final model are the :class:`ServerContext`'s.
A workflow sees the grid, strategies and observers, never the transport.
"""

from __future__ import annotations

from consortium.core.grid import Grid
from consortium.server.config import AsyncServerConfig, ServerConfig
from consortium.server.context import ServerContext
from consortium.server.workflow.fedbuff import FedBuffWorkflow
from consortium.server.workflow.replies import ReplyCollector, judge_reply, validated_update
from consortium.server.workflow.rounds import RoundWorkflow
from consortium.server.workflow.tasks import (
    online_nodes,
    query_initial_model,
    task_message,
    task_messages,
)

__all__ = [
    "FedBuffWorkflow",
    "ReplyCollector",
    "RoundWorkflow",
    "judge_reply",
    "online_nodes",
    "query_initial_model",
    "run_config",
    "task_message",
    "task_messages",
    "validated_update",
]


def run_config(config: ServerConfig | AsyncServerConfig, grid: Grid, ctx: ServerContext) -> None:
    """Run the built-in workflow that ``config`` describes."""
    if isinstance(config, AsyncServerConfig):
        FedBuffWorkflow(config)(grid, ctx)
    else:
        RoundWorkflow(config)(grid, ctx)
