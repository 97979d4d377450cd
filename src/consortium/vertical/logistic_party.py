"""A vertical-LR party's own view: its aligned, split, standardised rows and its state.

Everything here runs on the node and reads only the node's own data: the
rows the PSI left (in the order common to all parties), split into train and
test by a keyed hash of each id (the same split on every party), each column
standardised with the party's own training mean and deviation. Nothing of it
is sent anywhere; the handlers send logits, ciphertexts and masked numbers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import ConfigError, UpdateRejected
from consortium.core.message import Message
from consortium.core.records import Config
from consortium.vertical.logistic_protocol import (
    ACTIVE,
    ITERATION,
    PARTIES,
    PASSIVE,
    PAYLOAD,
    FloatArray,
    VerticalLRParams,
)

IntArray = npt.NDArray[np.int64]
_STD_EPSILON = 1e-9


@dataclass(frozen=True, eq=False)
class PartyData:
    """What one party holds: its rows by id, its columns, and (label holder only) labels."""

    ids: Sequence[str]
    x: FloatArray  # (rows, features), raw: the party standardises them itself
    feature_names: tuple[str, ...]
    y: IntArray | None = None  # 0/1 labels: present on the label holder only

    def __post_init__(self) -> None:
        rows = len(self.ids)
        if self.x.ndim != 2 or self.x.shape[0] != rows:
            raise ConfigError(f"party data: x must have shape (rows={rows}, features)")
        if self.x.shape[1] != len(self.feature_names) or self.x.shape[1] == 0:
            raise ConfigError("party data: one feature name per column, at least one column")
        if not np.isfinite(self.x).all():
            raise ConfigError("party data: x holds NaN or infinity")
        if len(set(self.ids)) != rows:
            raise ConfigError("party data: row ids must be unique")
        if self.y is not None and (self.y.shape != (rows,) or not np.isin(self.y, (0, 1)).all()):
            raise ConfigError(f"party data: y must be {rows} labels of 0 or 1")

    @property
    def role(self) -> str:
        return ACTIVE if self.y is not None else PASSIVE


#: The node's data for this run (typically read from its node config).
DataFn = Callable[[Context], PartyData]
#: The ids of the rows every party shares, in the order common to all (the PSI's output).
AlignedFn = Callable[[Context], Sequence[str]]


@dataclass(frozen=True, eq=False)
class LocalView:
    """The party's standardised train and test rows (and labels, on the label holder)."""

    role: str
    feature_names: tuple[str, ...]
    x_train: FloatArray
    x_test: FloatArray
    y_train: IntArray | None
    y_test: IntArray | None

    @property
    def features(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def train_rows(self) -> int:
        return int(self.x_train.shape[0])


#: One protocol step on a party: the task, the node's context, its rows and the settings.
Step = Callable[[Message, Context, "LocalView", VerticalLRParams], Message]


def local_view(data: PartyData, aligned: Sequence[str], params: VerticalLRParams) -> LocalView:
    """Align the party's rows to the shared order, split them, standardise its columns."""
    position = {row_id: i for i, row_id in enumerate(data.ids)}
    missing = [row_id for row_id in aligned if row_id not in position]
    if missing:
        raise ConfigError(f"{len(missing)} aligned ids are not in this party's data")
    if len(set(aligned)) != len(aligned):
        raise ConfigError("the aligned ids repeat")
    rows = np.asarray([position[row_id] for row_id in aligned], dtype=np.int64)
    # a row is held out by a keyed hash of its id: every party, and a central baseline,
    # splits the same whatever order the PSI returned
    held_out = np.asarray([_unit(params.split_seed, row_id) < params.test_fraction
                           for row_id in aligned], dtype=bool)  # fmt: skip
    test, train = rows[held_out], rows[~held_out]
    if train.shape[0] < 2:
        raise ConfigError(
            f"vertical LR needs at least 2 shared training rows, got {train.shape[0]}"
        )
    x = data.x.astype(np.float64)
    mean = x[train].mean(axis=0)
    std = x[train].std(axis=0) + _STD_EPSILON
    y = data.y
    return LocalView(
        role=data.role,
        feature_names=data.feature_names,
        x_train=(x[train] - mean) / std,
        x_test=(x[test] - mean) / std,
        y_train=None if y is None else y[train],
        y_test=None if y is None else y[test],
    )


def _unit(seed: int, row_id: str) -> float:
    """A number in [0, 1) that only the seed and the id decide."""
    digest = hashlib.blake2b(row_id.encode(), digest_size=8, key=seed.to_bytes(8, "big")).digest()
    return int.from_bytes(digest, "big") / 2.0**64


# -- the party's state between tasks (kept on the node, never sent) -------------------------
def saved_arrays(context: Context) -> Arrays:
    """The party's saved arrays (weights, momentum, key or masks); empty before setup."""
    return context.state.arrays.get(PAYLOAD, Arrays())


def saved_config(context: Context) -> Config:
    return context.state.configs.get(PAYLOAD, {})


def save(context: Context, arrays: Arrays, config: Config) -> None:
    """Replace the saved state with new records (never edited in place: a failed task
    keeps the old ones)."""
    context.state.arrays[PAYLOAD] = arrays
    context.state.configs[PAYLOAD] = config


#: the node-state Config record of the run's parties, as this party was told at setup
KEYS_RECORD = "vlr.keys"


def save_parties(context: Context, parties: list[str]) -> None:
    """Keep the run's parties as the setup task named them (every party signs over them)."""
    context.state.configs[KEYS_RECORD] = {PARTIES: list(parties)}


def parties_of(context: Context) -> list[str]:
    """The run's parties this party was told at setup (what every statement names)."""
    parties = context.state.configs.get(KEYS_RECORD, {}).get(PARTIES)
    if not isinstance(parties, list):
        raise UpdateRejected("no parties: the run's setup did not reach this party")
    return [str(n) for n in parties]


def expect_iteration(config: Config, saved: Config, *, advance: bool) -> int:
    """The task's iteration, refused unless it is the next one (``advance``) or the current."""
    value = config.get(ITERATION)
    current = saved.get(ITERATION, 0)
    assert isinstance(current, int)
    want = current + 1 if advance else current
    if isinstance(value, bool) or value != want:
        raise UpdateRejected(f"{ITERATION!r} must be {want} at this step, got {value!r}")
    return want


def nesterov_step(
    w: FloatArray, v: FloatArray, grad: FloatArray, params: VerticalLRParams
) -> tuple[FloatArray, FloatArray]:
    """One Nesterov step on the party's own block (``grad`` taken at ``w + momentum v``)."""
    v_new = params.momentum * v - params.lr * grad
    return w + v_new, v_new


def lookahead(w: FloatArray, v: FloatArray, params: VerticalLRParams, training: bool) -> FloatArray:
    """Where this iteration's gradient is taken; the weights themselves when evaluating."""
    return w + params.momentum * v if training else w


def sigmoid(u: FloatArray) -> FloatArray:
    """The logistic function, overflow-free (through tanh): the label holder's scores to
    probabilities, for vertical LR's residuals and boosting's gradients alike."""
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * u)), dtype=np.float64)
