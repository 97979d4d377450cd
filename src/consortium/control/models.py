"""Which models of a run the REST API can hand out: a round's, and the app's own exports.

A deployed run keeps its final model (``runs/<id>/model.npz``) and the
checkpoints of its last :data:`~consortium.server.context.KEEP_CHECKPOINTS`
rounds (``runs/<id>/checkpoints/round-NNNNNN.ckpt``), not one model per round:
so ``?round=N`` finds round N's model only while its checkpoint is kept (the
last rounds of a run), and says which rounds are kept when it is not.

An app may export its final model in its own format too (``ServerConfig(
exporter=...)``, e.g. ``model.joblib`` for a scikit-learn app, see
``examples/fraud``): every ``model.<ext>`` file beside ``model.npz`` in the
run's folder is served as ``?format=<ext>``. Only the final model has them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

from consortium.control.views import ModelFormat
from consortium.core.errors import WireFormatError
from consortium.server.checkpoint import checkpoint_path, list_checkpoints, read_checkpoint
from consortium.server.run_files import MODEL_FILE

#: the formats the server makes from any model itself (the rest are the app's exports)
BUILT_IN: tuple[str, ...] = get_args(ModelFormat)
#: what ``?format=`` may name: a short lower-case file extension
FORMAT_PATTERN = r"^[a-z0-9]{1,16}$"
_EXPORT = re.compile(r"model\.([a-z0-9]{1,16})")


def run_dir(root: Path, run_id: str) -> Path:
    return root / "runs" / run_id


def kept_rounds(folder: Path) -> list[int]:
    """The rounds whose model is kept (as a checkpoint) in a run's folder, oldest first."""
    rounds = []
    for path in list_checkpoints(folder / "checkpoints"):
        match = re.fullmatch(r"round-(\d+)\.ckpt", path.name)
        if match:
            rounds.append(int(match[1]))
    return rounds


def round_model(folder: Path, rnd: int) -> bytes | None:
    """Round ``rnd``'s global model in the Arrays wire format, from its checkpoint; None
    when that checkpoint is not kept (or does not verify)."""
    path = checkpoint_path(folder / "checkpoints", rnd)
    if path.is_symlink() or not path.is_file():
        return None
    try:
        return read_checkpoint(path).arrays.to_bytes()
    except (OSError, WireFormatError):
        return None


def exports(folder: Path) -> dict[str, Path]:
    """The app's own exports of the final model in a run's folder, by format."""
    found: dict[str, Path] = {}
    if not folder.is_dir():
        return found
    for path in folder.iterdir():
        match = _EXPORT.fullmatch(path.name)
        exported = match is not None and match[1] not in BUILT_IN and path.name != MODEL_FILE
        if match is not None and exported and not path.is_symlink() and path.is_file():
            found[match[1]] = path
    return found


def formats(folder: Path) -> list[str]:
    """Every ``?format=`` a run's final model can be downloaded in."""
    return [*BUILT_IN, *sorted(exports(folder))]
