"""Asynchronous aggregation: the AsyncStrategy interface and FedBuff.

FedBuff (Nguyen et al., 2022, "Federated Learning with Buffered Asynchronous
Aggregation", AISTATS, Algorithm 1): the server keeps up to ``concurrency``
nodes training at once. A node that finishes returns its model ``y_i``; its
update is ``Δ_i = y_i - x_{v_i}``, where ``v_i`` is the model version it
started from, and its *staleness* is ``τ_i = v - v_i`` (how many server steps
happened meanwhile). Arrivals are buffered; after every ``K`` of them the
server steps

    x ← x + η_g · Σ_i s(τ_i) Δ_i / K,         s(τ) = 1 / sqrt(1 + τ)

and at once hands the new model to idle nodes. (The paper writes the client
update as ``x - y`` and subtracts it; the step is the same.) Dividing by
``K`` follows the paper; ``normalize="staleness"`` divides by ``Σ s(τ_i)``
instead, so stale updates change the direction but not the step length.

An :class:`AsyncStrategy` is pure like :class:`~consortium.strategy.base.Strategy`:
no I/O and no clock (it counts model *versions*, never seconds), so the same
object runs against simulated time and against wall-clock time. The server's
async loop computes staleness, validates replies and passes each one to
:meth:`AsyncStrategy.fold`; :meth:`AsyncStrategy.ready` says when to
:meth:`AsyncStrategy.step`. The buffer is one float64 sum per parameter
(O(model)), never the K updates.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from consortium.core.arrays import Arrays
from consortium.core.errors import StrategyError, UpdateRejected
from consortium.core.protocol import (
    FEDBUFF_BUFFERED,
    FEDBUFF_STALENESS_MAX,
    FEDBUFF_STALENESS_MEAN,
    STRATEGY_SETTING,
)
from consortium.core.records import Config, Metrics
from consortium.strategy.base import Instruction, check_min_available_nodes, weighted_metrics

#: staleness τ (server steps since the node's model) -> weight s(τ) > 0
StalenessFn = Callable[[int], float]
#: model version -> config sent to the node that starts from it
VersionConfigFn = Callable[[int], Config]
#: (version, global arrays) -> metrics on server-held data, or None
CentralEvalFn = Callable[[int, Arrays], Metrics | None]


def polynomial_staleness(exponent: float = 0.5) -> StalenessFn:
    """``s(τ) = (1 + τ)^(-exponent)``; the paper's default is exponent 0.5."""
    if not math.isfinite(exponent) or exponent < 0:
        raise StrategyError(f"staleness exponent must be a finite number >= 0, got {exponent}")

    def weight(tau: int) -> float:
        return float((1.0 + tau) ** -exponent)

    return weight


@dataclass(frozen=True, slots=True)
class AsyncUpdate:
    """A validated training result that arrived asynchronously.

    ``arrays`` is the node's trained model ``y_i``; ``base`` the global model
    (version ``base_version``) it started from; ``staleness`` the number of
    server steps taken since.
    """

    node_id: str
    arrays: Arrays
    base: Arrays
    base_version: int
    staleness: int
    num_examples: int
    metrics: Metrics = field(default_factory=dict)
    records: dict[str, Arrays] = field(default_factory=dict)


class AsyncStrategy(ABC):
    """Base class of asynchronous strategies: choose tasks, fold arrivals, step.

    The loop calls :meth:`configure_task` while fewer than ``concurrency``
    tasks are in flight, :meth:`fold` for each valid arrival, and
    :meth:`step` whenever :meth:`ready` is true.
    """

    #: the most tasks the loop keeps in flight at once
    concurrency: int = 1

    @property
    def min_available_nodes(self) -> int:
        """How many nodes must be online before the loop hands out tasks (an int >= 1; here 1)."""
        return 1

    def initialize(self, rng: np.random.Generator) -> Arrays | None:
        """Initial global model, or None to ask one node for its parameters."""
        return None

    @abstractmethod
    def configure_task(
        self, version: int, arrays: Arrays, idle: Sequence[str], rng: np.random.Generator
    ) -> Instruction | None:
        """One idle node and what it starts from, or None to leave the slot empty."""

    @abstractmethod
    def fold(self, update: AsyncUpdate) -> None:
        """Take one arrival into the buffer; raise UpdateRejected to refuse it."""

    @abstractmethod
    def ready(self) -> bool:
        """True when the buffer should become a server step."""

    @abstractmethod
    def step(self, version: int, current: Arrays) -> tuple[Arrays, Metrics]:
        """Apply the buffer to ``current`` (version ``version``) and empty it."""

    def evaluate(self, version: int, arrays: Arrays) -> Metrics | None:
        """Central evaluation of a model version (0 is the initial model)."""
        return None

    def settings(self) -> Config:
        """Hyperparameters worth recording with the run, the name under ``"strategy"`` first."""
        return {STRATEGY_SETTING: type(self).__name__}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume after a crash, a snapshot (stateless: empty)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if state:
            raise StrategyError(
                f"{type(self).__name__} keeps no state but was given {sorted(state)}"
            )


class FedBuff(AsyncStrategy):
    """Buffered asynchronous aggregation (Nguyen et al., 2022).

    ``buffer_size`` is the paper's K, ``concurrency`` its maximum number of
    training nodes, ``server_lr`` its η_g. Each arrival gets the weight
    ``s(τ)`` (``staleness``, default ``1/sqrt(1+τ)``) times one
    (``weighting="uniform"``, the paper) or its ``num_examples``
    (``"examples"``). The buffer's sum is divided by the sum of those weights
    without the staleness factor (``normalize="buffer"``: ``K`` for uniform
    weighting, as in the paper) or with it (``"staleness"``). Arrivals staler
    than ``max_staleness`` are rejected. Idle nodes are chosen uniformly at
    random from the server's generator. The loop waits for
    ``min_available_nodes`` nodes before it hands out the first task.
    """

    def __init__(
        self,
        *,
        buffer_size: int = 5,
        concurrency: int = 10,
        server_lr: float = 1.0,
        staleness: StalenessFn | None = None,
        weighting: Literal["uniform", "examples"] = "uniform",
        normalize: Literal["buffer", "staleness"] = "buffer",
        max_staleness: int | None = None,
        min_available_nodes: int = 1,
        initial_arrays: Arrays | None = None,
        init_fn: Callable[[np.random.Generator], Arrays] | None = None,
        train_config: Config | VersionConfigFn | None = None,
        central_evaluate: CentralEvalFn | None = None,
    ) -> None:
        for name, count in (("buffer_size", buffer_size), ("concurrency", concurrency)):
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise StrategyError(f"FedBuff: {name} must be an integer >= 1, got {count!r}")
        if not math.isfinite(server_lr) or server_lr <= 0:
            raise StrategyError(f"FedBuff: server_lr must be a finite number > 0, got {server_lr}")
        if weighting not in ("uniform", "examples"):
            raise StrategyError(
                f"FedBuff: weighting must be 'uniform' or 'examples', got {weighting!r}"
            )
        if normalize not in ("buffer", "staleness"):
            raise StrategyError(
                f"FedBuff: normalize must be 'buffer' or 'staleness', got {normalize!r}"
            )
        if max_staleness is not None and max_staleness < 0:
            raise StrategyError(f"FedBuff: max_staleness must be >= 0, got {max_staleness}")
        self.buffer_size = buffer_size
        self.concurrency = concurrency
        self.server_lr = float(server_lr)
        self.staleness_fn = staleness or polynomial_staleness(0.5)
        self.weighting = weighting
        self.normalize = normalize
        self.max_staleness = max_staleness
        self._min_available_nodes = check_min_available_nodes(min_available_nodes)
        self.initial_arrays = initial_arrays
        self.init_fn = init_fn
        self.train_config = train_config
        self.central_evaluate = central_evaluate
        self._scratch: dict[str, np.ndarray] = {}
        self._reset()

    @property
    def min_available_nodes(self) -> int:
        """The ``min_available_nodes`` given (>= 1)."""
        return self._min_available_nodes

    def _reset(self) -> None:
        self._sums: dict[str, np.ndarray] | None = None
        self._count = 0
        self._base_weight = 0.0  # Σ w_i (without staleness)
        self._stale_weight = 0.0  # Σ w_i s(τ_i)
        self._staleness: list[int] = []
        self._metrics: list[tuple[int, Metrics]] = []

    # -- hooks ----------------------------------------------------------------------
    def initialize(self, rng: np.random.Generator) -> Arrays | None:
        if self.initial_arrays is not None:
            return self.initial_arrays
        if self.init_fn is not None:
            return self.init_fn(rng)
        return None

    def configure_task(
        self, version: int, arrays: Arrays, idle: Sequence[str], rng: np.random.Generator
    ) -> Instruction | None:
        if not idle:
            return None
        candidates = sorted(idle)  # the choice depends on the seed, not on arrival order
        node = candidates[int(rng.integers(len(candidates)))]
        config = self.train_config(version) if callable(self.train_config) else self.train_config
        return Instruction(node, arrays, dict(config or {}))

    def fold(self, update: AsyncUpdate) -> None:
        tau = update.staleness
        if tau < 0:
            raise StrategyError(f"FedBuff: negative staleness {tau} from node {update.node_id}")
        if self.max_staleness is not None and tau > self.max_staleness:
            raise UpdateRejected(
                f"staleness {tau} exceeds FedBuff's max_staleness {self.max_staleness}"
            )
        s = float(self.staleness_fn(tau))
        if not math.isfinite(s) or s < 0:
            raise StrategyError(f"FedBuff: staleness weight s({tau}) = {s} is not finite >= 0")
        w = float(update.num_examples) if self.weighting == "examples" else 1.0
        coef = w * s
        if self._sums is None:
            self._sums = {k: np.zeros(v.shape, dtype=np.float64) for k, v in update.base.items()}
        for name, acc in self._sums.items():
            scratch = self._scratch.get(name)
            if scratch is None:
                scratch = self._scratch[name] = np.empty(acc.shape, dtype=np.float64)
            np.subtract(update.arrays[name], update.base[name], out=scratch, casting="unsafe")
            scratch *= coef  # s(τ_i) w_i Δ_i, in float64
            acc += scratch
        self._count += 1
        self._base_weight += w
        self._stale_weight += coef
        self._staleness.append(tau)
        self._metrics.append((update.num_examples, update.metrics))

    def ready(self) -> bool:
        return self._count >= self.buffer_size

    def step(self, version: int, current: Arrays) -> tuple[Arrays, Metrics]:
        if self._sums is None or self._count == 0:
            raise StrategyError(f"FedBuff: step at version {version} with an empty buffer")
        denom = self._base_weight if self.normalize == "buffer" else self._stale_weight
        if denom <= 0:
            raise StrategyError(
                f"FedBuff: the {self._count} buffered updates have total weight 0 "
                "(every node reported num_examples = 0?)"
            )
        scale = self.server_lr / denom
        out = Arrays()
        for name, value in current.items():
            new = np.asarray(value, dtype=np.float64) + self._sums[name] * scale
            out[name] = new.astype(value.dtype, copy=False)
        metrics = weighted_metrics(self._metrics)
        metrics.update(
            {
                FEDBUFF_BUFFERED: self._count,
                FEDBUFF_STALENESS_MEAN: float(np.mean(self._staleness)),
                FEDBUFF_STALENESS_MAX: int(max(self._staleness)),
            }
        )
        self._reset()
        return out, metrics

    def evaluate(self, version: int, arrays: Arrays) -> Metrics | None:
        return None if self.central_evaluate is None else self.central_evaluate(version, arrays)

    def settings(self) -> Config:
        return {
            STRATEGY_SETTING: type(self).__name__,
            "buffer_size": self.buffer_size,
            "concurrency": self.concurrency,
            "min_available_nodes": self.min_available_nodes,
            "server_lr": self.server_lr,
            "weighting": self.weighting,
            "normalize": self.normalize,
            "max_staleness": -1 if self.max_staleness is None else self.max_staleness,
        }

    # -- resume -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The buffer (a snapshot): partial sums, weights, staleness and metrics of its arrivals.

        Restored into a FedBuff with the same settings, the next :meth:`step`
        gives the bit-identical model (the sums are float64 and copied exactly).
        """
        return {
            "sums": None if self._sums is None else Arrays(self._sums).copy(),
            "count": self._count,
            "base_weight": self._base_weight,
            "stale_weight": self._stale_weight,
            "staleness": list(self._staleness),
            "metrics": [(n, dict(m)) for n, m in self._metrics],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the buffer :meth:`state_dict` saved; an inconsistent one is refused."""
        expected = {"sums", "count", "base_weight", "stale_weight", "staleness", "metrics"}
        if set(state) != expected:
            raise StrategyError(
                f"FedBuff state must have keys {sorted(expected)}, got {sorted(state)}"
            )
        sums = state["sums"]
        count = int(state["count"])
        staleness = [int(t) for t in state["staleness"]]
        metrics = [(int(n), dict(m)) for n, m in state["metrics"]]
        if count < 0 or len(staleness) != count or len(metrics) != count:
            raise StrategyError(
                f"FedBuff state is inconsistent: count {count}, {len(staleness)} staleness "
                f"values, {len(metrics)} metrics"
            )
        if (sums is None) != (count == 0):
            raise StrategyError(
                f"FedBuff state is inconsistent: count {count} but "
                f"{'no' if sums is None else 'some'} buffered sums"
            )
        self._sums = (
            None
            if sums is None
            else {k: np.array(v, dtype=np.float64, copy=True) for k, v in sums.items()}
        )
        self._count = count
        self._base_weight = float(state["base_weight"])
        self._stale_weight = float(state["stale_weight"])
        self._staleness = staleness
        self._metrics = metrics
