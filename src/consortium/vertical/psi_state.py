"""What PSI keeps on a node, in its ``context.state``, and how vertical code reads it.

The result of a session (:func:`aligned_rows`, :func:`aligned_indices`,
:func:`psi_result`) is kept under :data:`PSI_STATE_KEY`: an Arrays record
(the aligned rows and their ids) and a Config record (the session, the
counts). It stays on the node for the rest of the run: in simulation in the
engine's per-node state, in deployment in the run's app process and its
``state.bin`` (see ``docs/vertical.md``). It never travels to the server.

The aligned order is the intersection's ids sorted (Python string order), the
same on every party; ``aligned_indices`` gives, for each, the row of the
node's own ids list (``ids_fn``'s order) it came from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from consortium.core.arrays import Arrays
from consortium.core.context import Context, NodeState
from consortium.core.errors import ConfigError

__all__ = [
    "PSI_STATE_KEY",
    "PsiResult",
    "aligned_indices",
    "aligned_rows",
    "decode_ids",
    "encode_ids",
    "psi_result",
]

#: The key, in ``context.state.arrays`` and ``context.state.configs``, of a node's PSI result.
PSI_STATE_KEY = "consortium.psi"

_ROWS = "rows"
_IDS = "ids-utf8"
_ENDS = "ids-ends"


@dataclass(frozen=True, slots=True)
class PsiResult:
    """A node's view of a finished PSI session."""

    #: the session id the server gave it
    session: str
    #: the shared ids, in the aligned order (sorted): the same list on every party
    ids: list[str]
    #: for each shared id, its row in this node's ids list (ids_fn's order)
    rows: NDArray[np.int64]
    #: how many ids this node brought, and how many repeated ones it dropped
    input_size: int
    duplicates: int


def config_int(value: object) -> int:
    """A count this node itself wrote into a Config record, back as an int."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an int in the node's PSI state, got {value!r}")
    return value


def encode_ids(ids: Sequence[str]) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    """Strings as one UTF-8 buffer and the end offset of each (the wire takes no strings)."""
    raw = [s.encode() for s in ids]
    ends = np.cumsum([len(r) for r in raw], dtype=np.int64)
    return np.frombuffer(b"".join(raw), dtype=np.uint8).copy(), ends


def decode_ids(blob: NDArray[np.uint8], ends: NDArray[np.int64]) -> list[str]:
    """The inverse of :func:`encode_ids`."""
    data = blob.tobytes()
    starts = [0, *ends[:-1].tolist()] if len(ends) else []
    return [data[a:b].decode() for a, b in zip(starts, ends.tolist(), strict=True)]


def store_result(
    state: NodeState, session: str, ids: list[str], rows: NDArray[np.int64], input_size: int,
    duplicates: int,
) -> None:  # fmt: skip
    """Keep a finished session's result in ``state`` (replacing any earlier one)."""
    blob, ends = encode_ids(ids)
    state.arrays[PSI_STATE_KEY] = Arrays({_ROWS: rows.astype(np.int64), _IDS: blob, _ENDS: ends})
    state.configs[PSI_STATE_KEY] = {
        "session": session,
        "size": len(ids),
        "input-size": input_size,
        "duplicates": duplicates,
    }


def psi_result(context: Context) -> PsiResult:
    """This node's PSI result; raises :class:`ConfigError` when no session finished on it
    in this run."""
    arrays = context.state.arrays.get(PSI_STATE_KEY)
    config = context.state.configs.get(PSI_STATE_KEY)
    if arrays is None or config is None:
        raise ConfigError(
            f"node {context.node_id!r} has no PSI result in its state ({PSI_STATE_KEY!r}): "
            "run run_psi over this node first, in the same run"
        )
    return PsiResult(
        session=str(config["session"]),
        ids=decode_ids(arrays[_IDS], arrays[_ENDS]),
        rows=np.asarray(arrays[_ROWS], dtype=np.int64),
        input_size=config_int(config["input-size"]),
        duplicates=config_int(config["duplicates"]),
    )


def aligned_rows(context: Context) -> list[str]:
    """The ids this node shares with every other party, in the order common to all of them."""
    return psi_result(context).ids


def aligned_indices(context: Context) -> NDArray[np.int64]:
    """For each id of :func:`aligned_rows`, its row in this node's ids list (ids_fn's order):
    ``features[aligned_indices(context)]`` are the node's rows in the aligned order."""
    return psi_result(context).rows
