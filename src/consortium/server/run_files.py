"""A deployed run's files on the server: its checkpoints as the store records them, the
model files its app leaves, and what ``run download`` serves."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from consortium.core.errors import WireFormatError
from consortium.core.history import round_to_json
from consortium.core.records import RecordLimits, UnacceptableRecord
from consortium.server.checkpoint import (
    Checkpoint,
    checkpoint_digest,
    list_checkpoints,
    load_checkpoint,
    read_checkpoint,
)
from consortium.server.isolation.wire import round_from_json
from consortium.server.model_io import load_model
from consortium.server.store import StateStore

log = logging.getLogger("consortium.server")

#: the final model a finished run leaves in its folder
MODEL_FILE = "model.npz"


def checkpoint_recorder(store: StateStore, run_id: str) -> Callable[[int, Path], None]:
    """Called once each checkpoint is on disk: kept in the store, shown by ``run show``."""

    def record(rnd: int, path: Path) -> None:
        try:
            digest = checkpoint_digest(path)
        except Exception as exc:  # just written: only a file removed meanwhile fails
            log.warning("run %s: could not read checkpoint %s: %s", run_id, path, exc)
            return
        try:
            store.record_checkpoint(run_id, rnd, str(path), digest)
        except Exception as exc:
            log.warning("state store: could not record checkpoint %s: %s", path, exc)

    return record


def load_app_checkpoint(directory: Path, run_id: str, limits: RecordLimits) -> Checkpoint | None:
    """The newest checkpoint in ``directory`` that verifies *and* passes the checks a
    round from a live app process passes, or None.

    The run's app process wrote these files, so they are as untrusted as its reports:
    its rounds go into the store on resume (:func:`restore_rounds`), so each is read back
    through :func:`~consortium.server.isolation.wire.round_from_json` (metric counts, key
    lengths, node results), and a checkpoint of another run is refused. A refused file is
    skipped like a torn one, with a warning naming why.
    """
    for path in reversed(list_checkpoints(directory)):
        try:
            checkpoint = read_checkpoint(path)
            if checkpoint.run_id not in (None, run_id):
                raise UnacceptableRecord(f"it belongs to run {checkpoint.run_id!r}")
            for rnd in checkpoint.history.rounds:
                round_from_json(round_to_json(rnd), limits)
        except (OSError, WireFormatError, UnacceptableRecord) as exc:
            log.warning("run %s: skipping checkpoint %s: %s", run_id, path, exc)
            continue
        return checkpoint
    return None


def restore_rounds(store: StateStore, run_id: str, checkpoint: Checkpoint | None) -> None:
    """Record the rounds a resumed run's checkpoint holds that the store lacks (a write
    that failed before the crash, or a database that never saw the run)."""
    if checkpoint is None:
        return
    recorded = {r.round for r in store.list_rounds(run_id)}
    for rnd in checkpoint.history.rounds:
        if rnd.round in recorded:
            continue
        try:
            store.record_round(run_id, rnd)
        except Exception as exc:  # the checkpoint, not this record, is what resumes
            log.warning("state store: could not restore round %d of run %s: %s",
                        rnd.round, run_id, exc)  # fmt: skip


def publish_model_files(files: list[Path], run_dir: Path) -> None:
    """Put the final model files the app left in its work folder in the run's folder
    (``runs/<id>/model.npz``, where operators and ``run download`` find them): a hard
    link, or a copy across file systems, taken once the app's process has ended."""
    for path in files:
        target = run_dir / path.name
        try:
            target.unlink(missing_ok=True)
            try:
                os.link(path, target)
            except OSError:
                shutil.copyfile(path, target)
        except OSError as exc:
            log.warning("could not publish %s to %s: %s", path, target, exc)


def final_model_bytes(run_dir: Path) -> bytes | None:
    """The run's published final model, else its newest verified checkpoint's, in the
    Arrays wire format; None when it has neither yet."""
    final = run_dir / MODEL_FILE
    if not final.is_symlink() and final.is_file():
        return load_model(final).to_bytes()
    checkpoint = load_checkpoint(run_dir / "checkpoints")
    return None if checkpoint is None else checkpoint.arrays.to_bytes()
