"""Checkpoints written in the background, so the next round need not wait for the disk.

A round's checkpoint is prepared on the round loop's thread (history and
strategy state serialised: they change in later rounds) and written by one
background thread while the next round runs. At most one write is in flight:
submitting the next one, and finishing the run, first wait for it. A failed
write is raised on the round loop's thread at that point, so a run whose
checkpoints cannot be written still fails, one round later.

A crash before a background write completes leaves the previous round's
checkpoint as the newest valid one; resuming then repeats one more round,
with the same result, since every round is a function of (seed, round, model,
strategy state).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from consortium.server.checkpoint import PreparedCheckpoint, write_checkpoint

#: Called with (round, path) once a checkpoint file is in place.
OnCheckpoint = Callable[[int, Path], None]


class TransferBudget(Protocol):
    """The transport's budget of bytes in transit (``ReceiveBudget``)."""

    def hold_outgoing(self, nbytes: int) -> None: ...

    def release_outgoing(self, nbytes: int) -> None: ...


class CheckpointWriter:
    """One background thread at a time writing a :class:`PreparedCheckpoint`.

    While it writes, the model counts against the transport's budget (if one
    is given): the next round's replies then wait for the write rather than
    pile up beside a model that only the writer still holds.
    """

    def __init__(
        self,
        on_written: OnCheckpoint | None = None,
        *,
        background: bool = True,
        budget: TransferBudget | None = None,
    ) -> None:
        self.on_written = on_written
        self.background = background
        self.budget = budget
        self._thread: threading.Thread | None = None
        self._job: PreparedCheckpoint | None = None
        self._error: BaseException | None = None

    def submit(self, prepared: PreparedCheckpoint) -> None:
        """Start writing ``prepared`` (after the previous write finished)."""
        self.wait()
        if not self.background:
            self._write(prepared)
            self._raise_error()
            return
        if self.budget is not None:
            held, budget = prepared.arrays.nbytes, self.budget
            budget.hold_outgoing(held)
            prepared.on_data_written = lambda: budget.release_outgoing(held)
        # handed over through an attribute, not the thread's args: the write drops
        # its only reference before giving the budget back
        self._job = prepared
        self._thread = threading.Thread(target=self._run, name=f"checkpoint-{prepared.round}")
        del prepared
        self._thread.start()

    def _run(self) -> None:
        prepared, self._job = self._job, None
        assert prepared is not None
        self._write(prepared)

    def wait(self) -> None:
        """Block until the write in flight (if any) is done; raise its error, if any."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._raise_error()

    def _raise_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _write(self, prepared: PreparedCheckpoint) -> None:
        try:
            path = write_checkpoint(prepared)
            if self.on_written is not None:
                self.on_written(prepared.round, path)
        except BaseException as exc:  # handed to the round loop's thread
            self._error = exc
        finally:
            prepared.data_written()  # no-op if done; gives the budget back on failure
