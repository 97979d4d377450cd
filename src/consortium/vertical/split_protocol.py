"""Split learning's wire vocabulary, settings and schedule: what both sides must agree on.

One home for the kinds, record fields, the ``split-*`` run-config keys and
the step schedule, so the server (:mod:`.split_server`) and the node
handlers (:mod:`.split_node`) cannot drift apart. No torch here: the server
imports this module and never trains anything. The protocol is described in
``docs/vertical.md`` ("Split learning").

The schedule is a sequence of **ticks** both sides compute from the number
of training rows and the batch size: each epoch is ``steps`` training ticks
(one mini-batch each) and one evaluation tick. Which rows a training tick
uses is a permutation every party draws from the run seed and the epoch
alone (:func:`batch_rows`), so no row id or index ever crosses the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from consortium.core.errors import UpdateRejected
from consortium.core.records import Config
from consortium.core.rng import derive_rng
from consortium.vertical.logistic_protocol import VerticalLRParams
from consortium.vertical.settings import SettingsReader

# -- message kinds (the handlers register_split_learning adds) ---------------------------
#: every party: align, split and standardise its rows, build its seeded bottom (and top)
KIND_SETUP: Final = "split.setup"
#: a passive party: apply the previous tick's cut-layer gradient, send this tick's activations
KIND_FORWARD: Final = "split.forward"
#: the label holder: the top on every party's activations; gradients back, or metrics
KIND_TOP: Final = "split.top"
#: every party: its final weights, if the run asked to reveal them
KIND_FINISH: Final = "split.finish"

#: every kind a split-learning node answers (a node policy's ``kinds`` must allow them)
SPLIT_KINDS: Final = (KIND_SETUP, KIND_FORWARD, KIND_TOP, KIND_FINISH)

# -- records and fields --------------------------------------------------------------------
#: the Arrays and Config record of every task and reply of the protocol
PAYLOAD: Final = "split"
ACTIVATIONS: Final = "activations"  # float32 (rows, cut); to the label holder (passives, rows, cut)
GRADIENT: Final = "gradient"  # float32 (rows, cut): d loss / d activations, to one passive party
GRADIENTS: Final = "gradients"  # float32 (passives, rows, cut): the label holder's reply

TICK: Final = "split-tick"  # every task and reply: the step of the schedule it is for
PARTIES: Final = "split-parties"  # setup task: how many parties (the top's input width)
ROLE: Final = "split-role"
FEATURES: Final = "split-features"
FEATURE_NAMES: Final = "split-feature-names"
TRAIN_ROWS: Final = "split-train-rows"
TEST_ROWS: Final = "split-test-rows"

ACTIVE: Final = "active"
PASSIVE: Final = "passive"

#: the node key every party derives the shared batch order with (not a node: all share it)
ORDER_KEY: Final = "split-batch-order"
#: the context-rng stream a party seeds its torch generator from (step 0 of the run)
INIT_STREAM: Final = "split.init"
#: the context-rng stream of a passive party's cut-layer noise (drawn per tick)
NOISE_STREAM: Final = "split.noise"

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class SplitParams:
    """The run's settings, from ``split-*`` run-config keys (every party reads the same)."""

    epochs: int = 20
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9  # SGD with momentum, each party on its own layers
    hidden: int = 16  # width of each bottom's hidden layer
    cut: int = 4  # width of each party's cut layer (what it sends per row)
    top_hidden: int = 16  # width of the label holder's top hidden layer
    noise_std: float = 0.0  # Gaussian noise the passive parties add to what they send
    test_fraction: float = 0.3
    split_seed: int = 43
    reveal_model: bool = False  # parties send their final weights to the server
    timeout: float = 600.0  # seconds one protocol step may take

    @classmethod
    def from_config(cls, config: Config) -> SplitParams:
        d, read = cls(), SettingsReader(config)
        return cls(
            epochs=read.integer("split-epochs", d.epochs, 1, 10_000),
            batch_size=read.integer("split-batch-size", d.batch_size, 1, 1_000_000),
            lr=read.number("split-lr", d.lr, 1e-6, 10.0),
            momentum=read.number("split-momentum", d.momentum, 0.0, 0.99),
            hidden=read.integer("split-hidden", d.hidden, 1, 4096),
            cut=read.integer("split-cut", d.cut, 1, 4096),
            top_hidden=read.integer("split-top-hidden", d.top_hidden, 1, 4096),
            noise_std=read.number("split-noise-std", d.noise_std, 0.0, 1e3),
            test_fraction=read.number("split-test-fraction", d.test_fraction, 0.0, 0.9),
            split_seed=read.integer("split-holdout-seed", d.split_seed, 0, 2**32 - 1),
            reveal_model=read.flag("split-reveal-model", d.reveal_model),
            timeout=read.number("split-timeout", d.timeout, 1.0, 86_400.0),
        )

    @property
    def split_view(self) -> VerticalLRParams:
        """The held-out split as vertical LR's party view takes it (the same keyed hash)."""
        return VerticalLRParams(test_fraction=self.test_fraction, split_seed=self.split_seed)


@dataclass(frozen=True, slots=True)
class Schedule:
    """The ticks of a run: ``steps`` training ticks then one evaluation tick, per epoch."""

    train_rows: int
    batch_size: int
    epochs: int

    @property
    def steps(self) -> int:
        return -(-self.train_rows // self.batch_size)

    @property
    def ticks(self) -> int:
        """The last tick of the run (the last epoch's evaluation)."""
        return self.epochs * (self.steps + 1)

    def epoch(self, tick: int) -> int:
        return (tick - 1) // (self.steps + 1) + 1

    def is_eval(self, tick: int) -> bool:
        return (tick - 1) % (self.steps + 1) == self.steps

    def batch_size_at(self, tick: int) -> int:
        """How many rows training tick ``tick`` uses (the last batch of an epoch may be short)."""
        k = (tick - 1) % (self.steps + 1)
        return min(self.batch_size, self.train_rows - k * self.batch_size)

    def trains_before(self, tick: int) -> bool:
        """Whether the tick before ``tick`` was a training tick (its gradient is still due)."""
        return tick > 1 and not self.is_eval(tick - 1)


def batch_rows(seed: int, schedule: Schedule, tick: int) -> IntArray:
    """The training rows (indices into the sorted shared train rows) of training tick ``tick``.

    Every party draws the same epoch permutation from the run seed: the rows of a
    step are agreed without sending them.
    """
    order = derive_rng(seed, schedule.epoch(tick), ORDER_KEY, stream="batches")
    permutation = order.permutation(schedule.train_rows)
    k = (tick - 1) % (schedule.steps + 1)
    return permutation[k * schedule.batch_size : (k + 1) * schedule.batch_size].astype(np.int64)


def float32_array(value: object, shape: tuple[int, ...], what: str) -> FloatArray:
    """A peer's cut-layer array, refused unless float32, of ``shape`` and finite."""
    if not isinstance(value, np.ndarray) or value.dtype != np.float32:
        got = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
        raise UpdateRejected(f"{what} must be a float32 array, got {got}")
    if value.shape != shape:
        raise UpdateRejected(f"{what} must have shape {shape}, got {value.shape}")
    if not np.isfinite(value).all():
        raise UpdateRejected(f"{what} holds NaN or infinity")
    return value


def tick_of(config: Config, want: int, what: str) -> int:
    """The tick a task or reply names, refused unless it is ``want`` (steps run in order)."""
    value = config.get(TICK)
    if isinstance(value, bool) or value != want:
        raise UpdateRejected(f"{what}: {TICK!r} must be {want}, got {value!r}")
    return want
