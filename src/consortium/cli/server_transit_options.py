"""``consortium server``'s limits on what moves between it and its nodes: the memory in
transit, the size of a reply, how slow a transfer may be, and the disk a waiting reply
may be received into (``consortium.transport``: receive_budget, fairness, stall, spill)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

from consortium.transport.fairness import UNREAD_BYTES
from consortium.transport.link_rates import DEFAULT_SLOW_LINK_MBIT
from consortium.transport.receive_budget import DEFAULT_TRANSFER_BUDGET_MB
from consortium.transport.spill import DEFAULT_SPILL_AFTER_SECONDS, DEFAULT_SPILL_MB
from consortium.transport.stall import DEFAULT_MIN_RATE_MBIT, DEFAULT_STALL_TIMEOUT

F = TypeVar("F", bound=Callable[..., object])

_OPTIONS = (
    click.option(
        "--transfer-budget-mb",
        type=click.IntRange(min=1),
        default=DEFAULT_TRANSFER_BUDGET_MB,
        show_default=True,
        help="Memory for models in transit: the model being sent, replies being received or "
        "waiting to be folded. Replies beyond it wait (the nodes are held by flow control); "
        "one is let in whatever its size once nothing else is. Raise it to let large "
        "replies overlap, a model more of memory each.",
    ),
    click.option(
        "--unread-mb",
        type=click.IntRange(min=1),
        default=UNREAD_BYTES // 1024**2,
        show_default=True,
        help="Memory the replies nodes have sent but the server has not read yet may hold, "
        "all nodes together (HTTP/2 windows of 256 KiB to 4 MiB each). More makes rounds "
        "of many nodes faster; each node's share is this divided by the allow-list.",
    ),
    click.option(
        "--reply-factor",
        type=click.FloatRange(min=1.0),
        default=4.0,
        show_default=True,
        help="Largest reply a node may send: this many times the model its task carries, "
        "plus 16 MiB; a larger reply is refused when it starts.",
    ),
    click.option(
        "--stall-timeout",
        type=click.FloatRange(min=0.1),
        default=DEFAULT_STALL_TIMEOUT,
        show_default=True,
        help="Seconds a transfer (a task to a node, a node's reply) may make no progress "
        "before it is cut off and only that node's task fails.",
    ),
    click.option(
        "--min-rate-mbit",
        type=click.FloatRange(min=0.0),
        default=DEFAULT_MIN_RATE_MBIT,
        show_default=True,
        help="Megabits a second a transfer must move, averaged over --stall-timeout, while "
        "other transfers wait behind it (for a send or receive slot, or the transfer "
        "budget); a slower one is cut off and only its node's task fails. 0: no floor.",
    ),
    click.option(
        "--spill-mb",
        type=click.IntRange(min=0),
        default=DEFAULT_SPILL_MB,
        show_default=True,
        help="Disk a node's reply may be received into when the transfer budget cannot take "
        "it (at once from a node on a slow link, after --spill-after seconds from others), "
        "all such replies together: on slow links large replies then upload at once, not "
        "one after the other. 0: they wait.",
    ),
    click.option(
        "--spill-after",
        type=click.FloatRange(min=0.0),
        default=DEFAULT_SPILL_AFTER_SECONDS,
        show_default=True,
        help="Seconds a reply from a node not known to be on a slow link waits for the "
        "transfer budget before it is received to disk.",
    ),
    click.option(
        "--slow-link-mbit",
        type=click.FloatRange(min=0.0),
        default=DEFAULT_SLOW_LINK_MBIT,
        show_default=True,
        help="A node whose last model-sized transfer (8 MiB or more) moved under this many "
        "megabits a second is on a slow link: its reply spills at once when it must wait, "
        "its task goes out and its reply comes back in chunks of 1 MiB, each taking a "
        "quarter of a place among the transfers at once, and its model-sized task goes "
        "beside the few sent to fast links. 0: no link is slow.",
    ),
    click.option(
        "--spill-dir",
        type=click.Path(file_okay=False, path_type=Path),
        help="Folder for those replies (default WORKDIR/spill); their files are unlinked "
        "as soon as they are opened.",
    ),
)


def transit_options(command: F) -> F:
    """Add the transit options to ``command``, in the order of ``--help``."""
    for option in reversed(_OPTIONS):
        command = option(command)
    return command
