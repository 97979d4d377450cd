"""A run's Server-Sent Events as its streams send them: bytes built once for all of them."""

from __future__ import annotations

import bisect


class Timeline:
    """A run's events as its streams send them, bytes built once for all of them: each
    recorded round's frame (its ``round_finished`` and ``node_failed`` events), in round
    order, and the run's ``run_finished`` once it has ended. Never changed once built: a
    change of the run builds a new one from this one (:meth:`extended`)."""

    #: the distinct resume points whose chunk is kept (streams are mostly at the same one)
    KEPT_CHUNKS = 16

    def __init__(
        self, rounds: tuple[int, ...] = (), frames: tuple[bytes, ...] = (), end: bytes = b""
    ) -> None:
        self.rounds = rounds
        self.frames = frames
        #: the run's ``run_finished`` event (b"": the run has not ended)
        self.end = end
        self._chunks: dict[int, bytes] = {}

    @property
    def last(self) -> int:
        """The highest round recorded (0: none yet)."""
        return self.rounds[-1] if self.rounds else 0

    def extended(self, new: list[tuple[int, bytes]], end: bytes) -> Timeline:
        """This timeline with rounds ``new`` (number and frame, after :attr:`last`) and
        the run's end (b"": none yet)."""
        if not new and end == self.end:
            return self
        rounds = self.rounds + tuple(n for n, _ in new)
        return Timeline(rounds, self.frames + tuple(f for _, f in new), end)

    def since(self, sent: int) -> bytes:
        """What a stream that has sent the rounds up to ``sent`` sends now, as one write:
        the later rounds' frames and the run's end (b"": nothing new)."""
        chunk = self._chunks.get(sent)
        if chunk is None:
            start = bisect.bisect_right(self.rounds, sent)
            chunk = b"".join(self.frames[start:]) + self.end
            if len(self._chunks) < self.KEPT_CHUNKS:
                self._chunks[sent] = chunk
        return chunk
