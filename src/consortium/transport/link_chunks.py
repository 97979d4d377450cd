"""Chunk sizes by link: a quarter of a chunk over a slow link, both ways.

A stream holds its chunk in the server for as long as the node's link takes to carry
it. A task to a node on a slow link (``transport/link_rates.py``) is sent in chunks of a
quarter, which take a quarter of a send place (``server/fleet_slots.py``); a download
found crawling goes on in them. With each task, the server tells the node the chunk
size to reply in (the task stream's initial metadata, :data:`REPLY_CHUNK_HEADER`; again
in its trailing metadata when the download just showed the link slow), reads the reply
as holding that much (:class:`~consortium.transport.fairness.ReceiveSlots`), and
refuses a chunk over it (:class:`~consortium.transport.chunks.ChunkTooLarge`).
"""

from __future__ import annotations

from collections.abc import Callable

from consortium.transport.chunks import CHUNK_SIZE
from consortium.transport.link_rates import LinkRates

#: Bytes per chunk of a task sent to a node on a slow link (``transport/link_rates.py``).
#: A download holds its chunk for as long as the link takes to carry it: a quarter of
#: a chunk lets four slow downloads share what one fast one holds, so that more nodes
#: than the server sends to at once (``server/fleet_slots.py``) are not sent their
#: task in waves; at 20 Mbit/s a chunk still moves in 0.4 s.
SLOW_LINK_CHUNK_SIZE = CHUNK_SIZE // 4

#: The metadata key of a task's stream (initial, and trailing when the download changed
#: it) telling the node the chunk size to send its reply in. The server reads the reply
#: of a node told a smaller size as holding that much less (``transport/fairness.py``),
#: and refuses a chunk over it.
REPLY_CHUNK_HEADER = "consortium-reply-chunk-bytes"


def send_chunk_size(slow_link: bool) -> int:
    """The chunk size a task is sent in: smaller to a node on a slow link."""
    return SLOW_LINK_CHUNK_SIZE if slow_link else CHUNK_SIZE


def told_chunk_size(value: str | bytes | None) -> int:
    """The reply chunk size a server's :data:`REPLY_CHUNK_HEADER` gives, within
    [:data:`SLOW_LINK_CHUNK_SIZE`, :data:`CHUNK_SIZE`]: no server makes a node's
    upload crawl in tiny chunks. None or not a number: :data:`CHUNK_SIZE`."""
    try:
        told = int(value) if value is not None else CHUNK_SIZE
    except ValueError:
        return CHUNK_SIZE
    return min(max(told, SLOW_LINK_CHUNK_SIZE), CHUNK_SIZE)


#: sets a gRPC call's initial or trailing metadata
Tell = Callable[[tuple[tuple[str, str], ...]], object]


class ReplyChunks:
    """What each node was last told to send its replies in (one entry per allow-listed
    node, kept for the server's life as its link rates are)."""

    def __init__(self, links: LinkRates) -> None:
        self._links = links
        self._told: dict[str, int] = {}

    def tell(self, node: str, tell: Tell, *, if_changed: bool = False) -> None:
        """Tell ``node`` (through ``tell``) the chunk size for its reply: smaller when its
        upload link is slow, as far as the server knows now (``if_changed``: only if that
        is not what it was told already)."""
        size = send_chunk_size(self._links.slow_upload(node))
        if if_changed and self._told.get(node) == size:
            return
        self._told[node] = size
        tell(((REPLY_CHUNK_HEADER, str(size)),))

    def told(self, node: str) -> int:
        """The chunk size ``node`` was told to reply in (the full one if never told)."""
        return self._told.get(node, CHUNK_SIZE)
