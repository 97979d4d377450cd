"""StoreObserver: the round loop's events, recorded in a StateStore."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from consortium.core.history import History, RoundRecord, RunInfo
from consortium.core.protocol import PARAM_SEED
from consortium.server.store.models import RunStatus

if TYPE_CHECKING:
    from consortium.server.store.store import StateStore

log = logging.getLogger("consortium.server.store")


class StoreObserver:
    """A :class:`~consortium.tracking.base.RunObserver` feeding one run into a store.

    A run created beforehand (``pending``, by the deployment server) is moved to
    ``running``; otherwise the run is created from :class:`RunInfo` (``app_name``
    and ``app_version`` may come in ``info.extra``). Like every observer it logs
    database errors and carries on, unless ``strict``: then a write is retried
    for the store's ``write_timeout`` and a write that still fails raises
    :class:`~consortium.core.errors.StateStoreError`, which ends the run (the
    deployment server's choice: a run must not go on without its record). With
    ``record_end=False`` the run's end is left to the caller: the deployment
    server records it itself, with the error that ended the run and whether it
    was stopped or interrupted.
    """

    def __init__(self, store: StateStore, *, strict: bool = False, record_end: bool = True) -> None:
        self.store = store
        self.strict = strict
        self.record_end = record_end
        self.run_id: str | None = None

    def on_run_start(self, info: RunInfo) -> None:
        self.run_id = info.run_id
        self._guard("the run start", lambda: self._start(info))

    def on_round_end(self, record: RoundRecord) -> None:
        run_id = self._run_id()
        self._guard(
            f"round {record.round} of run {run_id}",
            lambda: self.store.record_round(run_id, record),
        )

    def on_run_end(self, history: History, *, failed: bool) -> None:
        if not self.record_end:
            return
        run_id = self._run_id()
        status = RunStatus.FAILED if failed else RunStatus.FINISHED
        error = "the round loop stopped with an error; see the server log" if failed else None
        self._guard("the run end", lambda: self.store.set_run_status(run_id, status, error=error))

    def _start(self, info: RunInfo) -> None:
        if self.store.get_run(info.run_id) is None:
            seed = info.params.get(PARAM_SEED, 0)
            self.store.create_run(
                run_id=info.run_id,
                app_name=str(info.extra.get("app_name", "")),
                app_version=str(info.extra.get("app_version", "")),
                config=info.params,
                seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else 0,
                num_rounds=info.num_rounds,
            )
        self.store.set_run_status(info.run_id, RunStatus.RUNNING, num_rounds=info.num_rounds)

    def _run_id(self) -> str:
        if self.run_id is None:
            raise RuntimeError("StoreObserver got a round or run end before on_run_start")
        return self.run_id

    def _guard(self, what: str, action: Callable[[], None]) -> None:
        if self.strict:
            self.store.persist(what, action)
            return
        try:
            action()
        except Exception:
            log.exception("state store %s: could not record %s", self.store.safe_url, what)
