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

from consortium.server.checkpoint import PreparedCheckpoint, write_checkpoint

#: Called with (round, path) once a checkpoint file is in place.
OnCheckpoint = Callable[[int, Path], None]


class CheckpointWriter:
    """One background thread at a time writing a :class:`PreparedCheckpoint`."""

    def __init__(self, on_written: OnCheckpoint | None = None, *, background: bool = True) -> None:
        self.on_written = on_written
        self.background = background
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, prepared: PreparedCheckpoint) -> None:
        """Start writing ``prepared`` (after the previous write finished)."""
        self.wait()
        if not self.background:
            self._write(prepared)
            self._raise_error()
            return
        self._thread = threading.Thread(
            target=self._write, args=(prepared,), name=f"checkpoint-{prepared.round}"
        )
        self._thread.start()

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
