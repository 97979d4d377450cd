"""The observer interface the round loop reports to (tracking, progress, plots)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from consortium.core.history import History, RoundRecord, RunInfo


@runtime_checkable
class RunObserver(Protocol):
    """Receives a run's life: start, each finished round, end.

    Observers must not raise for ordinary problems (a full disk for plots, a
    slow tracking store); they log and carry on, because losing a federated
    round to a tracking hiccup is never what a user wants.
    """

    def on_run_start(self, info: RunInfo) -> None: ...

    def on_round_end(self, record: RoundRecord) -> None: ...

    def on_run_end(self, history: History, *, failed: bool) -> None: ...


class Observers:
    """Fans each event out to several observers, in order."""

    def __init__(self, observers: Sequence[RunObserver] = ()) -> None:
        self._observers = list(observers)

    def on_run_start(self, info: RunInfo) -> None:
        for o in self._observers:
            o.on_run_start(info)

    def on_round_end(self, record: RoundRecord) -> None:
        for o in self._observers:
            o.on_round_end(record)

    def on_run_end(self, history: History, *, failed: bool) -> None:
        for o in self._observers:
            o.on_run_end(history, failed=failed)
