"""The chunk size each node sends its replies in: smaller over a slow link.

A reply's stream holds its chunk in the server for as long as the node's link takes to
carry it. With each task, the server tells the node the chunk size to reply in (the
task stream's initial metadata, :data:`~consortium.transport.chunks.REPLY_CHUNK_HEADER`;
again in its trailing metadata when the download just showed the link slow), reads the
reply as holding that much (:class:`~consortium.transport.fairness.ReceiveSlots`: a
quarter of a slot over a slow link), and refuses a chunk over it
(:class:`~consortium.transport.chunks.ChunkTooLarge`).
"""

from __future__ import annotations

from collections.abc import Callable

from consortium.transport.chunks import CHUNK_SIZE, REPLY_CHUNK_HEADER, send_chunk_size
from consortium.transport.link_rates import LinkRates

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
