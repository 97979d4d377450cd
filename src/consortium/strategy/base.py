"""The strategy interface: what each round asks of which nodes, and how replies combine.

A strategy is pure: it does no I/O and never sees a socket. The server's round
loop (simulation or deployment alike) calls it and hands it replies as a lazy
iterable, so a strategy that can fold (FedAvg, FedOpt) holds one running sum
instead of every update. Strategies that need every update say so by setting
``needs_all_updates = True`` (they simply ``list()`` the iterable).

What the server reads from a strategy besides the round hooks is declared
here, typed, and never probed for: :attr:`Strategy.min_available_nodes`,
:meth:`Strategy.settings` and :meth:`Strategy.state_dict`. A
:class:`StrategyWrapper` answers all three for both layers (its own and its
base's), so wrapping a strategy never drops one of its settings.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, final

import numpy as np

from consortium.core.arrays import Arrays
from consortium.core.errors import StrategyError
from consortium.core.protocol import BASE_SETTINGS, NUM_EXAMPLES, STRATEGY_SETTING
from consortium.core.records import Config, Metrics


@dataclass(frozen=True, slots=True)
class Instruction:
    """What one node is asked to do in one round.

    ``arrays`` is the model the node starts from; ``records`` carries any
    further named Arrays a strategy needs on the node (SCAFFOLD's server
    control variate, for example). Names must not be ``"model"``.
    """

    node_id: str
    arrays: Arrays
    config: Config = field(default_factory=dict)
    records: dict[str, Arrays] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TrainReply:
    """A validated training result from one node.

    ``records`` are the further named Arrays the node sent back (already
    checked to be finite), e.g. SCAFFOLD's control-variate update.
    """

    node_id: str
    arrays: Arrays
    num_examples: int
    metrics: Metrics = field(default_factory=dict)
    records: dict[str, Arrays] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EvaluateReply:
    """A federated-evaluation result from one node."""

    node_id: str
    num_examples: int
    metrics: Metrics = field(default_factory=dict)


class Strategy(ABC):
    """Base class of every aggregation strategy."""

    #: True for rules that must see every update at once (median, Krum, ...).
    needs_all_updates: bool = False

    @property
    def min_available_nodes(self) -> int:
        """How many nodes must be online before a round starts (an int >= 1; here 1).

        The server waits (within its node-wait limit) for this many before it
        asks the strategy to configure a round. Strategies with a setting of
        that name (FedAvg and its family) return it; wrappers return their
        base's, or more.
        """
        return 1

    def initialize(self, rng: np.random.Generator) -> Arrays | None:
        """Initial global model, or None to ask one node for its parameters."""
        return None

    @abstractmethod
    def configure_train(
        self, round: int, arrays: Arrays, nodes: Sequence[str], rng: np.random.Generator
    ) -> list[Instruction]:
        """Pick the nodes that train this round and what each receives."""

    @abstractmethod
    def aggregate_train(
        self, round: int, current: Arrays, replies: Iterable[TrainReply]
    ) -> tuple[Arrays, Metrics]:
        """Fold the replies into the next global model and its train metrics."""

    def configure_evaluate(
        self, round: int, arrays: Arrays, nodes: Sequence[str], rng: np.random.Generator
    ) -> list[Instruction]:
        """Pick the nodes that evaluate this round (none by default)."""
        return []

    def aggregate_evaluate(self, round: int, replies: Iterable[EvaluateReply]) -> Metrics:
        """Combine federated-evaluation replies (example-weighted mean by default)."""
        return weighted_metrics((r.num_examples, r.metrics) for r in replies)

    def evaluate(self, round: int, arrays: Arrays) -> Metrics | None:
        """Central evaluation on server-held data; ``round`` 0 is the initial model."""
        return None

    def settings(self) -> Config:
        """Hyperparameters worth recording with the run, the name under ``"strategy"`` first."""
        return {STRATEGY_SETTING: type(self).__name__}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume after a crash (stateless strategies: empty).

        A snapshot: later rounds must not change what it returned (return copies
        of buffers the strategy updates in place), because the server writes the
        checkpoint in the background while the next round runs.
        """
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if state:
            raise StrategyError(
                f"{type(self).__name__} keeps no state but was given {sorted(state)}"
            )


class StrategyWrapper(Strategy):
    """A strategy that changes one part of ``base`` and hands it everything else.

    Subclasses override what they change (typically ``aggregate_train``);
    selection, configuration, evaluation and the initial model stay the base's.
    The capabilities the server reads cover both layers and are final, so a
    subclass cannot drop the base's part by accident:

    * :attr:`min_available_nodes` is the larger of the base's and the
      wrapper's own ``min_available_nodes`` (a wrapper may raise it, never
      lower it);
    * :meth:`settings` is the wrapper's name, its effective
      ``min_available_nodes``, its own :meth:`wrapper_settings`, then the
      base's settings namespaced under ``"base"`` (``"base"`` is the base's
      name, ``"base.<key>"`` each of its settings);
    * :meth:`state_dict` is ``{"base": base.state_dict(), **wrapper_state_dict()}``;
      :meth:`load_state_dict` refuses a state without the ``"base"`` part.
    """

    def __init__(self, base: Strategy, *, min_available_nodes: int = 1) -> None:
        if not isinstance(base, Strategy):
            raise StrategyError(
                f"{type(self).__name__} wraps a Strategy, got {type(base).__name__}"
            )
        self.base = base
        self.needs_all_updates = base.needs_all_updates
        self._own_min_available_nodes = check_min_available_nodes(min_available_nodes)

    # -- capabilities: both layers, final -------------------------------------------------
    @final
    @property
    def min_available_nodes(self) -> int:
        """The base's ``min_available_nodes``, or the wrapper's own when that is larger."""
        return max(self.base.min_available_nodes, self._own_min_available_nodes)

    @final
    def settings(self) -> Config:
        """This layer's settings, then the base's namespaced under ``"base."``."""
        out: Config = {
            STRATEGY_SETTING: type(self).__name__,
            "min_available_nodes": self.min_available_nodes,
        }
        own = self.wrapper_settings()
        reserved = [k for k in own if k in out or _is_base_key(k)]
        if reserved:
            raise StrategyError(
                f"{type(self).__name__}.wrapper_settings() uses reserved keys {sorted(reserved)}"
            )
        out.update(own)
        inner = dict(self.base.settings())
        out[BASE_SETTINGS] = str(inner.pop(STRATEGY_SETTING, type(self.base).__name__))
        out.update({f"{BASE_SETTINGS}.{key}": value for key, value in inner.items()})
        return out

    @final
    def state_dict(self) -> dict[str, Any]:
        """``{"base": the base's state, **this layer's own state}`` (a snapshot)."""
        own = self.wrapper_state_dict()
        if BASE_SETTINGS in own:
            raise StrategyError(
                f"{type(self).__name__}.wrapper_state_dict() may not use the key 'base'"
            )
        return {BASE_SETTINGS: self.base.state_dict(), **own}

    @final
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore both layers; a state without the base's part is refused."""
        if BASE_SETTINGS not in state:
            raise StrategyError(
                f"{type(self).__name__} state has no 'base' part (keys {sorted(state)}): "
                f"it was not saved by a wrapper around {type(self.base).__name__}"
            )
        base = state[BASE_SETTINGS]
        if not isinstance(base, dict):
            raise StrategyError(
                f"{type(self).__name__} state 'base' must be a dict, got {type(base).__name__}"
            )
        own = {k: v for k, v in state.items() if k != BASE_SETTINGS}
        self.load_wrapper_state_dict(own)
        self.base.load_state_dict(base)

    # -- hooks for subclasses: this layer only --------------------------------------------
    def wrapper_settings(self) -> Config:
        """This layer's own hyperparameters, without the base's (none by default)."""
        return {}

    def wrapper_state_dict(self) -> dict[str, Any]:
        """This layer's own state, a snapshot, without the base's (none by default)."""
        return {}

    def load_wrapper_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`wrapper_state_dict` returned."""
        if state:
            raise StrategyError(
                f"{type(self).__name__} keeps no state of its own but was given {sorted(state)}"
            )

    # -- round hooks: the base's -----------------------------------------------------------
    def initialize(self, rng: np.random.Generator) -> Arrays | None:
        return self.base.initialize(rng)

    def configure_train(
        self, round: int, arrays: Arrays, nodes: Sequence[str], rng: np.random.Generator
    ) -> list[Instruction]:
        return self.base.configure_train(round, arrays, nodes, rng)

    def aggregate_train(
        self, round: int, current: Arrays, replies: Iterable[TrainReply]
    ) -> tuple[Arrays, Metrics]:
        return self.base.aggregate_train(round, current, replies)

    def configure_evaluate(
        self, round: int, arrays: Arrays, nodes: Sequence[str], rng: np.random.Generator
    ) -> list[Instruction]:
        return self.base.configure_evaluate(round, arrays, nodes, rng)

    def aggregate_evaluate(self, round: int, replies: Iterable[EvaluateReply]) -> Metrics:
        return self.base.aggregate_evaluate(round, replies)

    def evaluate(self, round: int, arrays: Arrays) -> Metrics | None:
        return self.base.evaluate(round, arrays)


def _is_base_key(key: str) -> bool:
    return key == BASE_SETTINGS or key.startswith(f"{BASE_SETTINGS}.")


def check_min_available_nodes(value: int) -> int:
    """``value`` if it is an int >= 1 (a valid ``min_available_nodes``); StrategyError if not."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise StrategyError(f"min_available_nodes must be an integer >= 1, got {value!r}")
    return int(value)


def sample_nodes(
    nodes: Sequence[str],
    fraction: float,
    min_nodes: int,
    min_available: int,
    rng: np.random.Generator,
) -> list[str]:
    """Sample ``max(ceil(fraction * n), min_nodes)`` nodes without replacement.

    Nodes are sorted first so the choice depends only on the seed, not on the
    order in which nodes connected.
    """
    available = sorted(nodes)
    if len(available) < min_available:
        raise StrategyError(
            f"{len(available)} nodes available, the strategy needs at least {min_available}"
        )
    if fraction <= 0.0:
        return []
    k = min(len(available), max(math.ceil(fraction * len(available)), min_nodes))
    if k >= len(available):
        return available
    chosen = rng.choice(len(available), size=k, replace=False)
    return [available[i] for i in sorted(chosen.tolist())]


def mean_metrics(items: Iterable[tuple[int, Metrics]]) -> Metrics:
    """Unweighted mean of each metric over the replies that report it (one vote per node)."""
    return weighted_metrics((1, metrics) for _, metrics in items)


def weighted_metrics(items: Iterable[tuple[int, Metrics]]) -> Metrics:
    """Example-weighted mean of each metric over the replies that report it."""
    totals: dict[str, float] = {}
    weights: dict[str, float] = {}
    for n, metrics in items:
        for key, value in metrics.items():
            if key == NUM_EXAMPLES:
                continue
            totals[key] = totals.get(key, 0.0) + n * float(value)
            weights[key] = weights.get(key, 0.0) + n
    out: Metrics = {k: totals[k] / weights[k] for k in totals if weights[k] > 0}
    return out
