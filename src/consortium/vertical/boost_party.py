"""What every party of vertical boosting computes on its own: bins, candidates, tree levels.

Each party cuts its own columns into at most ``vsb-bins`` bins (quantiles of
its own training rows, or one bin per distinct value when there are few) and
never sends the edges: a split candidate ``(column, b)`` sends a row left
when its value is at most edge ``b``. The candidates of a party are numbered
column by column, bin by bin; a passive party shows them to the label holder
only in a fresh secret order per node.

Trees grow level by level; the open nodes of level ``L`` are slots
``0 .. 2**L - 1`` and the children of slot ``j`` are ``2j`` (left) and
``2j + 1`` (right) — :func:`children` is the one rule the label holder, the
passive parties and the server all follow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import UpdateRejected
from consortium.core.records import Config
from consortium.vertical.boost_protocol import PARTY_LIST, PAYLOAD, BoostParams, IntArray
from consortium.vertical.logistic_paillier import PublicKey, unpack
from consortium.vertical.signed_keys import digests

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, eq=False)
class Bins:
    """A party's binned columns: the (private) edges and each row's bin."""

    edges: tuple[FloatArray, ...]  # per column: the candidates' thresholds, ascending
    train: IntArray  # (train rows, columns): bin of each training row
    test: IntArray  # (test rows, columns)

    @classmethod
    def of(cls, x_train: FloatArray, x_test: FloatArray, max_bins: int) -> Bins:
        edges = tuple(bin_edges(x_train[:, j], max_bins) for j in range(x_train.shape[1]))
        return cls(
            edges,
            np.stack([np.searchsorted(e, x_train[:, j]) for j, e in enumerate(edges)], axis=1),
            np.stack([np.searchsorted(e, x_test[:, j]) for j, e in enumerate(edges)], axis=1),
        )

    @property
    def candidates(self) -> list[tuple[int, int]]:
        """Every split candidate ``(column, edge)``, in the party's own numbering."""
        return [(j, b) for j, e in enumerate(self.edges) for b in range(len(e))]

    def goes_left(self, column: int, edge: int, test: bool = False) -> BoolArray:
        rows = self.test if test else self.train
        return np.asarray(rows[:, column] <= edge, dtype=bool)

    def first_alike(self, candidate: int, rows: BoolArray) -> tuple[int, int]:
        """The first candidate ``(column, edge)``, in the party's own numbering, that sends
        the same training ``rows`` (a node's) left as ``candidate`` does.

        Candidates that split a node's rows alike (thresholds with none of its rows
        between them) have the same sums, hence the same gain: which of them the label
        holder picks follows the secret order they were sent in, fresh every run, yet
        they route held-out rows differently. Splitting by the first of them makes the
        trees (and their held-out predictions) depend on the seed only, so a deployed
        run equals its simulation.
        """
        candidates = self.candidates
        column, edge = candidates[candidate]
        values = self.train[rows]
        want = values[:, column] <= edge
        for j, b in candidates:
            if np.array_equal(values[:, j] <= b, want):
                return j, b
        raise AssertionError("unreachable: the candidate itself splits its rows alike")


def bin_edges(column: FloatArray, max_bins: int) -> FloatArray:
    """At most ``max_bins - 1`` thresholds: every distinct value but the largest when
    there are few, else the distinct quantiles below the largest value."""
    values = np.unique(column)
    if values.size <= max_bins:
        return np.asarray(values[:-1], dtype=np.float64)
    cuts = np.unique(np.quantile(column, np.arange(1, max_bins) / max_bins))
    return np.asarray(cuts[cuts < values[-1]], dtype=np.float64)


def left_sums(values: FloatArray, rows: BoolArray, bins: Bins) -> FloatArray:
    """Per candidate, the sum of ``values`` over ``rows`` that go left (in the clear)."""
    out = []
    for j, edges in enumerate(bins.edges):
        per_bin = np.bincount(bins.train[rows, j], weights=values[rows], minlength=len(edges) + 1)
        out.append(np.cumsum(per_bin)[: len(edges)])
    return np.concatenate(out) if out else np.zeros(0)


def gains(g: float, h: float, gl: FloatArray, hl: FloatArray, params: BoostParams) -> FloatArray:
    """XGBoost's split gain of each candidate; ``-inf`` where a child is too light."""
    gr, hr = g - gl, h - hl
    lam = params.l2
    gain = gl**2 / (hl + lam) + gr**2 / (hr + lam) - g**2 / (h + lam)
    light = (hl < params.min_child_weight) | (hr < params.min_child_weight)
    return np.where(light, -np.inf, gain)


def leaf_value(g: float, h: float, params: BoostParams) -> float:
    """The leaf's weight, shrunk by the learning rate: ``-lr * G / (H + lambda)``."""
    return -params.lr * g / (h + params.l2)


def children(assign: IntArray, split: Sequence[int], left: npt.ArrayLike) -> IntArray:
    """The next level's slots: rows of split slot ``split[k]`` go to ``2 split[k]`` where
    ``left[k]`` is set, else to ``2 split[k] + 1``; every other row leaves the tree (-1)."""
    out = np.full_like(assign, -1)
    left = np.asarray(left, dtype=bool)
    for k, node in enumerate(split):
        here = assign == node
        out[here & left[k]] = 2 * node
        out[here & ~left[k]] = 2 * node + 1
    return out


def assignment_digest(assign: IntArray, assign_test: IntArray) -> bytes:
    """What the label holder signs of a level's assignment: its training and held-out
    rows' slots, as little-endian int64 (one encoding whatever the machine)."""
    return digests(*(np.ascontiguousarray(a, dtype="<i8").tobytes() for a in (assign, assign_test)))


def partition_digest(left: npt.ArrayLike, left_test: npt.ArrayLike) -> bytes:
    """What a passive party signs of its partition: its rows going left, as 0/1 bytes."""
    return digests(*(np.asarray(a, dtype=np.uint8).tobytes() for a in (left, left_test)))


def ciphertext_pairs(value: object, rows: int, key: PublicKey, what: str) -> list[int]:
    """A peer's ``(rows, 2, ciphertext bytes)`` uint8 array, each below ``n**2``, flat."""
    width = key.ciphertext_bytes
    if not isinstance(value, np.ndarray) or value.dtype != np.uint8 or value.ndim != 3:
        raise UpdateRejected(f"{what} must be a 3-D uint8 array")
    if value.shape != (rows, 2, width):
        raise UpdateRejected(f"{what} must have shape {(rows, 2, width)}, got {value.shape}")
    return unpack(value.reshape(rows * 2, width), count=rows * 2, width=width,
                  below=key.nsquare, what=what)  # fmt: skip


# -- the party's state between tasks (kept on the node, never sent) -------------------------
#: the node-state Config record of the run's parties (as told at setup) and label holder
KEYS_RECORD = "vsb.keys"


def saved(context: Context) -> tuple[Arrays, Config]:
    return context.state.arrays.get(PAYLOAD, Arrays()), context.state.configs.get(PAYLOAD, {})


def save(context: Context, arrays: Arrays, config: Config) -> None:
    """Replace the saved records (never edit them in place: a failed task keeps the old)."""
    context.state.arrays[PAYLOAD] = arrays
    context.state.configs[PAYLOAD] = config


def save_parties(context: Context, parties: list[str]) -> None:
    """Keep the run's parties as the setup task named them (the label holder signs over them)."""
    context.state.configs[KEYS_RECORD] = {PARTY_LIST: list(parties)}


def parties_of(context: Context) -> list[str]:
    """The run's parties this party was told at setup."""
    parties = context.state.configs.get(KEYS_RECORD, {}).get(PARTY_LIST)
    if not isinstance(parties, list):
        raise UpdateRejected("no parties: the run's setup did not reach this party")
    return [str(n) for n in parties]


def step_of(config: Config) -> tuple[int, int, str]:
    """The saved progress: tree, level and the last step's name."""
    tree, level, phase = config.get("tree", 0), config.get("level", 0), config.get("phase", "")
    assert isinstance(tree, int) and isinstance(level, int) and isinstance(phase, str)
    return tree, level, phase
