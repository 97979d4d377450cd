"""The rounds of recently shown runs, kept so that ``run show`` need not re-read them.

A round is written to the state store once, with all its node results, so
while a run's round count is the same the store holds the same rounds: the
cache answers from memory until the count moves. ``run show`` during a
200-node run read every node result through the ORM on each call (100+ ms)
before this.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from consortium.core.history import RoundRecord
from consortium.server.store import StateStore

#: how many runs' rounds are kept (the most recently shown)
HISTORY_CACHE_RUNS = 16


class RoundsCache:
    """A run's rounds from the store, unless read at the same round count before."""

    def __init__(self, store: StateStore, runs: int = HISTORY_CACHE_RUNS) -> None:
        self.store = store
        self.runs = runs
        self._lock = threading.Lock()
        #: run id -> (the round count they were read at, the rounds)
        self._histories: OrderedDict[str, tuple[int, list[RoundRecord]]] = OrderedDict()

    def get(self, run_id: str, rounds_done: int) -> list[RoundRecord]:
        with self._lock:
            cached = self._histories.get(run_id)
            if cached is not None and cached[0] == rounds_done:
                self._histories.move_to_end(run_id)
                return cached[1]
        rounds = self.store.run_history(run_id).rounds
        if len(rounds) == rounds_done:  # not a read between two writes: keep it
            with self._lock:
                self._histories[run_id] = (rounds_done, rounds)
                while len(self._histories) > self.runs:
                    self._histories.popitem(last=False)
        return rounds
