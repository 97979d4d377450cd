"""How fast each node's link is, as its last model-sized transfers measured it.

Whether a transfer that must wait is worth holding back depends on the node's
link: on loopback or a LAN, a large reply waiting for the transfer budget
uploads in seconds once let in, and waiting in memory is the cheapest thing to
do; over a hospital's 20 Mbit/s link the same reply takes minutes, and holding
it back makes the round wait for one upload after the other. The server
measures every node's link from what it moves anyway: each task it sends and
each reply it receives of at least :data:`LINK_SAMPLE_BYTES`, over the time
the transfer was moving (the time the server spent waiting on itself, for the
transfer budget, is left out). A node whose link moved under ``slow_below``
bytes a second is on a slow link:

* its reply, if the budget cannot take it yet, is received to disk at once
  (:mod:`consortium.transport.spill`), not after ``--spill-after`` seconds;
* its model-sized task does not count against the few model-sized tasks sent at
  once to fast nodes (``Fleet``'s send slots): on two cores, four fast downloads
  move the model as fast as twelve, but twelve slow links move it three times as
  fast as four. A download found crawling while it goes (the node's first, before
  its link was known) gives its place among the few to the next task.

A reply's own upload is the best guess for the next one; before any, the
node's last download stands for its link.
"""

from __future__ import annotations

import threading

#: a transfer of at least this many bytes measures its node's link (a smaller one is
#: mostly latency and the per-call cost)
LINK_SAMPLE_BYTES = 8 * 1024 * 1024
#: a transfer under way is judged only after moving this long: its first bytes fill
#: gRPC's and the kernel's buffers (several MiB) at once, whatever the link. Judged
#: sooner, a first round's downloads to slow links start sooner (24 nodes at 20 Mbit/s:
#: 93 s against 102 s with 2 s; docs/benchmarks.md, "Judging a first download after 1 s")
JUDGE_AFTER_SECONDS = 1.0
#: ``consortium server --slow-link-mbit``'s default: a link that moved a model-sized
#: transfer under this rate is slow. Under 100 Mbit/s a 100M-parameter model takes 30 s
#: or more each way, so a reply held back costs the round that much again; loopback and
#: LAN transfers move 10 to 100 times as fast, even while a server on two cores sends
#: to eight nodes at once
DEFAULT_SLOW_LINK_MBIT = 100.0


class LinkRates:
    """The rate (bytes a second) each node's last model-sized upload and download moved
    at; a node whose link is known and under ``slow_below`` is on a slow link (0: no
    link is ever slow)."""

    def __init__(self, slow_below: float) -> None:
        if not slow_below >= 0:
            raise ValueError(f"the slow-link rate must be >= 0 bytes a second, got {slow_below}")
        self.slow_below = slow_below
        self._uploads: dict[str, float] = {}
        self._downloads: dict[str, float] = {}
        self._lock = threading.Lock()

    def uploaded(self, node: str, nbytes: int, seconds: float) -> None:
        """``node``'s reply of ``nbytes`` took ``seconds`` of moving to arrive."""
        self._record(self._uploads, node, nbytes, seconds)

    def downloaded(self, node: str, nbytes: int, seconds: float) -> None:
        """``node`` read its task of ``nbytes`` in ``seconds`` of moving."""
        self._record(self._downloads, node, nbytes, seconds)

    def _record(self, rates: dict[str, float], node: str, nbytes: int, seconds: float) -> None:
        if nbytes >= LINK_SAMPLE_BYTES and seconds > 0:
            with self._lock:
                rates[node] = nbytes / seconds

    def upload_rate(self, node: str) -> float | None:
        """What ``node``'s next reply is likely to move at: its last upload's rate, or
        before any, its last download's; None when neither was measured."""
        return self._guess(node, self._uploads, self._downloads)

    def download_rate(self, node: str) -> float | None:
        """What ``node``'s next task is likely to move at (as :meth:`upload_rate`)."""
        return self._guess(node, self._downloads, self._uploads)

    def _guess(
        self, node: str, same_way: dict[str, float], other_way: dict[str, float]
    ) -> float | None:
        with self._lock:
            rate = same_way.get(node)
            return rate if rate is not None else other_way.get(node)

    def slow_upload(self, node: str) -> bool:
        """Whether ``node``'s replies are known to come over a slow link."""
        return self._slow(self.upload_rate(node))

    def slow_download(self, node: str) -> bool:
        """Whether ``node``'s tasks are known to go over a slow link."""
        return self._slow(self.download_rate(node))

    def _slow(self, rate: float | None) -> bool:
        return rate is not None and rate < self.slow_below

    def crawling(self, nbytes: int, seconds: float) -> bool:
        """Whether a transfer under way, ``nbytes`` moved in ``seconds`` so far, is on a
        slow link (a node's first, before its link was known)."""
        return (
            nbytes >= LINK_SAMPLE_BYTES
            and seconds >= JUDGE_AFTER_SECONDS
            and nbytes / seconds < self.slow_below
        )
