"""Vertical gradient boosting's wire vocabulary and settings: kinds, fields, checks.

One home for the names the server function (:mod:`.boost_server`) and the
node handlers (:mod:`.boost_node`) share. The protocol (SecureBoost-style)
is described in ``docs/vertical.md``, "Vertical gradient boosting
(SecureBoost)".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from consortium.core.errors import UpdateRejected
from consortium.core.records import Config
from consortium.vertical.logistic_protocol import VerticalLRParams
from consortium.vertical.settings import SettingsReader

# -- message kinds (the handlers register_vertical_boost adds) ---------------------------
#: every party: align and split its rows, bin its columns; the label holder draws its key
KIND_SETUP: Final = "vsb.setup"
#: the label holder: metrics of the model so far, then ``[[g]]`` and ``[[h]]`` for a new tree
KIND_GRADIENTS: Final = "vsb.gradients"
#: a passive party: encrypted left-child sums of every split candidate of every open node
KIND_HISTOGRAM: Final = "vsb.histogram"
#: the label holder: apply the last partitions, decrypt, pick each open node's split
KIND_SPLIT: Final = "vsb.split"
#: a passive party: record its chosen splits' thresholds, return the rows that go left
KIND_PARTITION: Final = "vsb.partition"
#: the label holder: apply the last level's partitions, sign the new level's assignment
KIND_ASSIGN: Final = "vsb.assign"
#: every party: what it may tell the server of the model (owners of splits, counts)
KIND_FINISH: Final = "vsb.finish"

#: every kind a vertical-boosting node answers (a node policy's ``kinds`` must allow them)
VSB_KINDS: Final = (
    KIND_SETUP,
    KIND_GRADIENTS,
    KIND_HISTOGRAM,
    KIND_SPLIT,
    KIND_PARTITION,
    KIND_ASSIGN,
    KIND_FINISH,
)

# -- records and fields --------------------------------------------------------------------
#: the Arrays and Config record of every task and reply (and of a party's saved state)
PAYLOAD: Final = "vsb"
KEY: Final = "public_key"  # uint8 (key bytes,): the label holder's Paillier modulus
GRAD: Final = "grad"  # uint8 (train rows, 2, ciphertext bytes): [[g_i]], [[h_i]]
ASSIGN: Final = "assign"  # int64 (train rows,): open node of each row at this level, or -1
ASSIGN_TEST: Final = "assign_test"  # int64 (test rows,): the same for the held-out rows
HIST: Final = "hist"  # uint8 (nodes * candidates, 2, ciphertext bytes), per passive party
DECISIONS: Final = "decisions"  # int64 (nodes, 2): (owner, candidate id); owner -1: a leaf
SPLITS: Final = "splits"  # int64 (m, 2): (node, candidate id) a passive party owns
LEFT: Final = "left"  # uint8 (m, train rows): 1 where a row of the node goes left
LEFT_TEST: Final = "left_test"  # uint8 (m, test rows)
OWNERS: Final = "owners"  # int64 (trees, 2**depth - 1): the owner of each split, -1 none

# -- config keys ------------------------------------------------------------------------------
TREE: Final = "vsb-tree"
LEVEL: Final = "vsb-level"
TRAINING: Final = "vsb-training"  # gradients task: False on the last, evaluation-only pass
ROLE: Final = "vsb-role"
FEATURE_NAMES: Final = "vsb-feature-names"
CANDIDATES: Final = "vsb-candidates"  # a passive party's number of split candidates
COUNTS: Final = "vsb-counts"  # split task: each passive party's candidates, in order
PARTIES: Final = "vsb-parties"  # split task: the passive parties' number (owner ids 1..)
TRAIN_ROWS: Final = "vsb-train-rows"
TEST_ROWS: Final = "vsb-test-rows"
# the label holder's signatures (signed_keys) over its key and each tree's gradients (hex)
PARTY_LIST: Final = "vsb-party-list"  # setup task: every party of the run, in the server's order
SIGNATURE: Final = "vsb-signature"  # label holder's setup reply: its signature over KEY
GRAD_SIGNATURE: Final = "vsb-grad-signature"  # gradients reply, first histogram task: over GRAD
HOLDER_NODE: Final = "vsb-label-holder"  # first histogram task of a tree: the label holder
KEY_SIGNATURE: Final = "vsb-key-signature"  # first histogram task of a tree: SIGNATURE relayed
#: gradients reply (level 0), assign reply (levels 1..), every histogram task: the label
#: holder's signature over the level's ASSIGN and ASSIGN_TEST (purpose vsb.assignments)
ASSIGN_SIGNATURE: Final = "vsb-assign-signature"
#: partition reply: the owner's signature over its LEFT and LEFT_TEST (vsb.partition)
PARTITION_SIGNATURE: Final = "vsb-partition-signature"
#: the task that brings the label holder the partitions: each passive party's
#: PARTITION_SIGNATURE, in the run's passive order ("" for a party that owns no split)
PARTITION_SIGNATURES: Final = "vsb-partition-signatures"

ACTIVE: Final = "active"
PASSIVE: Final = "passive"
#: a decision's owner for a node that becomes a leaf
LEAF: Final = -1
#: the label holder's owner id; passive party ``k`` (in the server's order) is ``k + 1``
LABEL_HOLDER: Final = 0
#: Most bins a party cuts one column into.
MAX_BINS: Final = 256
#: Most split candidates a party may offer (bounds what the label holder decrypts).
MAX_CANDIDATES: Final = 4096
MAX_DEPTH: Final = 6
MAX_PASSIVES: Final = 8

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class BoostParams:
    """The run's settings, from ``vsb-*`` run-config keys (every party reads the same)."""

    trees: int = 15
    depth: int = 3
    lr: float = 0.3  # shrinkage of each tree's leaf weights
    l2: float = 1.0  # lambda of the XGBoost objective
    min_child_weight: float = 1.0  # least sum of hessians in a child
    bins: int = 16  # most bins per column (quantiles of the party's training rows)
    key_bits: int = 2048
    test_fraction: float = 0.3
    split_seed: int = 43
    timeout: float = 600.0

    @property
    def split_view(self) -> VerticalLRParams:
        """The settings :func:`~.logistic_party.local_view` reads: the same held-out rows."""
        return VerticalLRParams(test_fraction=self.test_fraction, split_seed=self.split_seed)

    @classmethod
    def from_config(cls, config: Config) -> BoostParams:
        d, read = cls(), SettingsReader(config)
        return cls(
            trees=read.integer("vsb-trees", d.trees, 1, 1000),
            depth=read.integer("vsb-depth", d.depth, 1, MAX_DEPTH),
            lr=read.number("vsb-lr", d.lr, 1e-4, 1.0),
            l2=read.number("vsb-l2", d.l2, 0.0, 1e4),
            min_child_weight=read.number("vsb-min-child-weight", d.min_child_weight, 0.0, 1e4),
            bins=read.integer("vsb-bins", d.bins, 2, MAX_BINS),
            key_bits=read.integer("vsb-key-bits", d.key_bits, 512, 8192),
            test_fraction=read.number("vsb-test-fraction", d.test_fraction, 0.0, 0.9),
            split_seed=read.integer("vsb-split-seed", d.split_seed, 0, 2**32 - 1),
            timeout=read.number("vsb-timeout", d.timeout, 1.0, 86_400.0),
        )


def int_array(value: object, shape: tuple[int, ...], low: int, high: int, what: str) -> IntArray:
    """A peer's int64 array of ``shape``, every value in ``[low, high]``, or refused."""
    if not isinstance(value, np.ndarray) or value.dtype != np.int64:
        raise UpdateRejected(f"{what} must be an int64 array")
    if value.shape != shape:
        raise UpdateRejected(f"{what} must have shape {shape}, got {value.shape}")
    if value.size and (value.min() < low or value.max() > high):
        raise UpdateRejected(f"{what} holds a value outside [{low}, {high}]")
    return value


def mask_array(value: object, shape: tuple[int, ...], what: str) -> npt.NDArray[np.bool_]:
    """A peer's 0/1 uint8 array of ``shape`` as booleans, or refused."""
    if not isinstance(value, np.ndarray) or value.dtype != np.uint8:
        raise UpdateRejected(f"{what} must be a uint8 array")
    if value.shape != shape:
        raise UpdateRejected(f"{what} must have shape {shape}, got {value.shape}")
    if value.size and value.max() > 1:
        raise UpdateRejected(f"{what} must hold only 0 and 1")
    return value.astype(bool)


def config_int(config: Config, key: str, low: int, high: int) -> int:
    """An integer a peer sent in ``config[key]``, refused unless in ``[low, high]``."""
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UpdateRejected(f"{key!r} must be an integer in [{low}, {high}], got {value!r}")
    return value
