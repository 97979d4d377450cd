"""What the vertical protocols' tests drive a run with: a run log and a recording grid."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from consortium.core.grid import Grid, GridWrapper
from consortium.core.history import RoundRecord
from consortium.core.message import Message


class RunLog:
    """The RunContext a protocol needs: an id and the reported rounds."""

    run_id = "vertical-test"

    def __init__(self) -> None:
        self.rounds: list[RoundRecord] = []

    def report(self, record: RoundRecord) -> None:
        self.rounds.append(record)


class Recording(GridWrapper):
    """A Grid that keeps every message the server sends and receives in a batch."""

    def __init__(self, inner: Grid) -> None:
        super().__init__(inner)
        self.sent: list[Message] = []
        self.received: list[Message] = []

    def send_and_receive(
        self, messages: Sequence[Message], *, timeout: float | None
    ) -> Iterator[Message]:
        self.sent += messages
        for reply in self.inner.send_and_receive(messages, timeout=timeout):
            self.received.append(reply)
            yield reply
