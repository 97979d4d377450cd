"""What every strategy declares to the server: min_available_nodes, settings, state.

Each class that ``consortium.strategy`` exports and that is a strategy (sync or
async) is built here with a minimal constructor; a new export without a
factory below fails :func:`test_every_exported_strategy_is_covered`. Wrappers
must carry both layers: the base's ``min_available_nodes`` (raised, never
lost), its settings (namespaced under ``base.``) and its state (under
``"base"``, restored bit for bit).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import pytest

import consortium.strategy as strategies
from consortium.core.arrays import Arrays
from consortium.core.errors import StrategyError
from consortium.core.protocol import SCAFFOLD_DELTA_RECORD
from consortium.core.records import Config, Metrics, check_config
from consortium.strategy import (
    AsyncStrategy,
    AsyncUpdate,
    ClippedUpdates,
    CoordinateMedian,
    Cyclic,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedBuff,
    FedNova,
    FedOpt,
    FedProx,
    FedYogi,
    Instruction,
    QFedAvg,
    RobustFedAvg,
    Scaffold,
    ServerAdam,
    Strategy,
    StrategyWrapper,
    TrainReply,
)


class _Minimal(Strategy):
    """The least a Strategy must implement: it inherits every capability's default."""

    def configure_train(
        self, round: int, arrays: Arrays, nodes: Sequence[str], rng: np.random.Generator
    ) -> list[Instruction]:
        return [Instruction(n, arrays) for n in nodes]

    def aggregate_train(
        self, round: int, current: Arrays, replies: Iterable[TrainReply]
    ) -> tuple[Arrays, Metrics]:
        return current, {}


class _MinimalAsync(AsyncStrategy):
    """The least an AsyncStrategy must implement."""

    def configure_task(
        self, version: int, arrays: Arrays, idle: Sequence[str], rng: np.random.Generator
    ) -> Instruction | None:
        return None

    def fold(self, update: AsyncUpdate) -> None:
        pass

    def ready(self) -> bool:
        return False

    def step(self, version: int, current: Arrays) -> tuple[Arrays, Metrics]:
        return current, {}


Built = Strategy | AsyncStrategy

#: every exported strategy that is not a wrapper, built with min_available_nodes=k
#: where it has that setting (None: the class has none and keeps the default 1)
STRATEGIES: dict[type, Callable[[int], Built] | None] = {
    Strategy: None,
    AsyncStrategy: None,
    FedAvg: lambda k: FedAvg(min_available_nodes=k),
    FedProx: lambda k: FedProx(0.1, min_available_nodes=k),
    FedNova: lambda k: FedNova(min_available_nodes=k),
    QFedAvg: lambda k: QFedAvg(1.0, 10.0, min_available_nodes=k),
    Scaffold: lambda k: Scaffold(min_available_nodes=k),
    Cyclic: lambda k: Cyclic(min_available_nodes=k),
    RobustFedAvg: lambda k: RobustFedAvg(CoordinateMedian(), min_available_nodes=k),
    FedBuff: lambda k: FedBuff(min_available_nodes=k),
}
#: the defaults of the two abstract bases, through minimal subclasses
ABSTRACT: dict[type, Callable[[], Built]] = {Strategy: _Minimal, AsyncStrategy: _MinimalAsync}

#: every exported wrapper, around a given base
WRAPPERS: dict[type, Callable[[Strategy], StrategyWrapper]] = {
    StrategyWrapper: StrategyWrapper,
    FedOpt: lambda base: FedOpt(base, optimizer=ServerAdam(lr=0.1, tau=1e-2)),
    FedAvgM: lambda base: FedAvgM(base, lr=0.5, momentum=0.5),
    FedAdagrad: lambda base: FedAdagrad(base, lr=0.1, tau=1e-2),
    FedAdam: lambda base: FedAdam(base, lr=0.1, tau=1e-2),
    FedYogi: lambda base: FedYogi(base, lr=0.1, tau=1e-2),
    ClippedUpdates: lambda base: ClippedUpdates(base, max_norm=1.0),
}


def _exported_strategy_classes() -> list[type]:
    exported = (vars(strategies)[name] for name in strategies.__all__)
    return [
        obj
        for obj in exported
        if isinstance(obj, type) and issubclass(obj, Strategy | AsyncStrategy)
    ]


def _build(cls: type, k: int | None = None) -> Built:
    """An instance of ``cls``; with ``k``, one whose min_available_nodes should be ``k``."""
    if cls in WRAPPERS:
        return WRAPPERS[cls](FedAvg() if k is None else FedAvg(min_available_nodes=k))
    factory = STRATEGIES[cls]
    if factory is None:
        return ABSTRACT[cls]()
    return factory(1 if k is None else k)


def test_every_exported_strategy_is_covered() -> None:
    exported = set(_exported_strategy_classes())
    assert exported == set(STRATEGIES) | set(WRAPPERS)
    assert {c for c in exported if issubclass(c, StrategyWrapper)} == set(WRAPPERS)


# -- min_available_nodes ----------------------------------------------------------------------
@pytest.mark.parametrize("cls", _exported_strategy_classes(), ids=lambda c: c.__name__)
def test_min_available_nodes_is_an_int_of_at_least_one(cls: type) -> None:
    built = _build(cls)
    value = built.min_available_nodes
    assert type(value) is int and value >= 1
    assert value == 1  # every default is 1


@pytest.mark.parametrize(
    "cls",
    [c for c in _exported_strategy_classes() if STRATEGIES.get(c) is not None or c in WRAPPERS],
    ids=lambda c: c.__name__,
)
def test_the_setting_is_what_the_server_reads(cls: type) -> None:
    built = _build(cls, 4)
    assert built.min_available_nodes == 4
    assert built.settings()["min_available_nodes"] == 4


@pytest.mark.parametrize("cls", list(WRAPPERS), ids=lambda c: c.__name__)
def test_a_wrapper_keeps_its_base_minimum(cls: type) -> None:
    wrap = WRAPPERS[cls]
    assert wrap(FedAvg(min_available_nodes=4)).min_available_nodes == 4
    assert wrap(ClippedUpdates(Scaffold(min_available_nodes=3), 2.0)).min_available_nodes == 3
    assert FedAdam(wrap(FedAvg(min_available_nodes=5))).min_available_nodes == 5


def test_a_wrapper_may_raise_the_minimum_but_never_lower_it() -> None:
    assert (
        StrategyWrapper(FedAvg(min_available_nodes=2), min_available_nodes=6).min_available_nodes
        == 6
    )
    assert (
        StrategyWrapper(FedAvg(min_available_nodes=4), min_available_nodes=2).min_available_nodes
        == 4
    )


@pytest.mark.parametrize("bad", [0, -1, True, 2.5, "3"])
def test_an_invalid_minimum_is_refused(bad: Any) -> None:
    with pytest.raises(StrategyError, match="min_available_nodes"):
        FedAvg(min_available_nodes=bad)
    with pytest.raises(StrategyError, match="min_available_nodes"):
        FedBuff(min_available_nodes=bad)
    with pytest.raises(StrategyError, match="min_available_nodes"):
        StrategyWrapper(FedAvg(), min_available_nodes=bad)


def test_a_wrapper_needs_a_strategy() -> None:
    with pytest.raises(StrategyError, match="wraps a Strategy"):
        StrategyWrapper(FedBuff())  # type: ignore[arg-type]


# -- settings -----------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", _exported_strategy_classes(), ids=lambda c: c.__name__)
def test_settings_are_a_config_with_the_name_first(cls: type) -> None:
    settings = _build(cls).settings()
    assert check_config(settings) == settings
    assert next(iter(settings)) == "strategy"


@pytest.mark.parametrize("cls", list(WRAPPERS), ids=lambda c: c.__name__)
def test_wrapper_settings_include_the_base_settings(cls: type) -> None:
    base = Scaffold(server_lr=0.5, fraction_train=0.5, min_available_nodes=3)
    settings = WRAPPERS[cls](base).settings()
    assert settings["strategy"] == cls.__name__
    assert settings["min_available_nodes"] == 3
    assert settings["base"] == "Scaffold"
    inner = base.settings()
    del inner["strategy"]
    assert inner  # the base has settings of its own, and every one of them is kept
    for key, value in inner.items():
        assert settings[f"base.{key}"] == value


def test_nested_wrappers_namespace_each_layer() -> None:
    strategy = FedAdam(ClippedUpdates(Scaffold(server_lr=0.5), max_norm=2.0), lr=0.1)
    settings = strategy.settings()
    assert next(iter(settings)) == "strategy" and settings["strategy"] == "FedAdam"
    assert settings["server_lr"] == 0.1  # the optimiser's ...
    assert settings["base"] == "ClippedUpdates" and settings["base.max_norm"] == 2.0
    assert settings["base.base"] == "Scaffold"
    assert settings["base.base.server_lr"] == 0.5  # ... and Scaffold's, without a clash


def test_a_wrapper_cannot_claim_a_reserved_setting() -> None:
    class Claims(StrategyWrapper):
        def wrapper_settings(self) -> Config:
            return {"base.fraction_train": 0.0}

    with pytest.raises(StrategyError, match="reserved keys"):
        Claims(FedAvg()).settings()


def test_async_strategies_record_their_minimum() -> None:
    assert FedBuff(min_available_nodes=3).settings()["min_available_nodes"] == 3
    assert _MinimalAsync().settings() == {"strategy": "_MinimalAsync"}


# -- state: both layers, restored bit for bit --------------------------------------------------
NODES = ["a", "b", "c", "d", "e"]
EXAMPLES = {"a": 10, "b": 30, "c": 5, "d": 20, "e": 15}


def _model() -> Arrays:
    rng = np.random.default_rng(7)
    return Arrays(
        {
            "w": rng.normal(size=(3, 4)).astype(np.float32),
            "b": rng.normal(size=4),
        }
    )


def _round(strategy: Strategy, rnd: int, x: Arrays) -> tuple[Arrays, Metrics]:
    """One SCAFFOLD-shaped round: every sampled node replies a model and a ``delta_c``."""
    instructions = strategy.configure_train(rnd, x, NODES, np.random.default_rng(rnd))
    replies = []
    for i, instruction in enumerate(instructions):
        rng = np.random.default_rng([rnd, i])
        y = Arrays(
            (name, (value + rng.normal(scale=0.8, size=value.shape)).astype(value.dtype))
            for name, value in instruction.arrays.items()
        )
        delta = Arrays((name, rng.normal(size=value.shape)) for name, value in x.items())
        replies.append(
            TrainReply(
                instruction.node_id,
                y,
                EXAMPLES[instruction.node_id],
                {"loss": float(rnd + i)},
                {SCAFFOLD_DELTA_RECORD: delta},
            )
        )
    return strategy.aggregate_train(rnd, x, iter(replies))


def _same(a: Any, b: Any) -> bool:
    """Equal state trees, arrays compared bit for bit (dtype and bytes)."""
    if isinstance(a, Arrays) or isinstance(b, Arrays):
        return isinstance(a, Arrays) and isinstance(b, Arrays) and a.equals(b)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _wrapper_over_scaffold(cls: type) -> StrategyWrapper:
    return WRAPPERS[cls](Scaffold(fraction_train=0.6, server_lr=0.9))


@pytest.mark.parametrize("cls", list(WRAPPERS), ids=lambda c: c.__name__)
def test_wrapper_state_holds_the_base_and_resumes_bit_for_bit(cls: type) -> None:
    strategy = _wrapper_over_scaffold(cls)
    x = _model()
    for rnd in (1, 2, 3):
        x, _ = _round(strategy, rnd, x)
    assert isinstance(strategy.base, Scaffold)
    state = strategy.state_dict()
    assert _same(state["base"], strategy.base.state_dict())
    assert state["base"]["control"] is not None  # the base's control variate is in it
    saved = copy.deepcopy(state)

    expected, expected_metrics = _round(strategy, 4, x)
    assert _same(state, saved)  # a snapshot: the next round did not change it

    resumed = _wrapper_over_scaffold(cls)
    resumed.load_state_dict(state)
    got, metrics = _round(resumed, 4, x)
    assert got.equals(expected)
    assert metrics == expected_metrics
    assert _same(resumed.state_dict(), strategy.state_dict())


def test_nested_wrappers_resume_bit_for_bit() -> None:
    def make() -> Strategy:
        return FedYogi(ClippedUpdates(Scaffold(), max_norm=1.5), lr=0.05, tau=1e-2)

    strategy, x = make(), _model()
    for rnd in (1, 2):
        x, _ = _round(strategy, rnd, x)
    state = strategy.state_dict()
    assert set(state) == {"base", "optimizer"} and set(state["base"]) == {"base"}
    assert "control" in state["base"]["base"]
    expected, _ = _round(strategy, 3, x)
    resumed = make()
    resumed.load_state_dict(state)
    got, _ = _round(resumed, 3, x)
    assert got.equals(expected)


@pytest.mark.parametrize("cls", list(WRAPPERS), ids=lambda c: c.__name__)
def test_a_state_without_the_base_part_is_refused(cls: type) -> None:
    strategy = _wrapper_over_scaffold(cls)
    x = _model()
    _round(strategy, 1, x)
    state = strategy.state_dict()
    own = {k: v for k, v in state.items() if k != "base"}
    with pytest.raises(StrategyError, match="no 'base' part"):
        _wrapper_over_scaffold(cls).load_state_dict(own)
    # the pre-wrapper layout (the base's state alone) is refused, not misread
    with pytest.raises(StrategyError, match="no 'base' part"):
        _wrapper_over_scaffold(cls).load_state_dict(state["base"])
    with pytest.raises(StrategyError, match="'base' must be a dict"):
        _wrapper_over_scaffold(cls).load_state_dict({**own, "base": None})


def test_a_wrapper_of_a_stateless_base_still_saves_both_layers() -> None:
    strategy = ClippedUpdates(FedAvg(), 1.0)
    assert strategy.state_dict() == {"base": {}}
    strategy.load_state_dict({"base": {}})
    with pytest.raises(StrategyError, match="keeps no state of its own"):
        strategy.load_state_dict({"base": {}, "extra": 1})
    with pytest.raises(StrategyError, match="keeps no state"):
        strategy.load_state_dict({"base": {"extra": 1}})


# -- FedBuff: a checkpoint mid-buffer ----------------------------------------------------------
def _arrivals(x: Arrays, count: int) -> list[AsyncUpdate]:
    out = []
    for i in range(count):
        rng = np.random.default_rng([99, i])
        y = Arrays(
            (name, (value + rng.normal(size=value.shape)).astype(value.dtype))
            for name, value in x.items()
        )
        out.append(
            AsyncUpdate(
                node_id=f"n{i}",
                arrays=y,
                base=x,
                base_version=0,
                staleness=i % 3,
                num_examples=int(rng.integers(1, 50)),
                metrics={"loss": float(rng.random())},
            )
        )
    return out


@pytest.mark.parametrize("normalize", ["buffer", "staleness"])
def test_fedbuff_checkpointed_mid_buffer_steps_to_the_identical_model(normalize: Any) -> None:
    def make() -> FedBuff:
        return FedBuff(buffer_size=5, weighting="examples", normalize=normalize, server_lr=0.7)

    x = _model()
    arrivals = _arrivals(x, 10)
    straight = make()
    for update in arrivals[:3]:
        straight.fold(update)
    state = straight.state_dict()
    saved = copy.deepcopy(state)
    for update in arrivals[3:5]:
        straight.fold(update)
    assert straight.ready()
    expected, expected_metrics = straight.step(1, x)
    assert _same(state, saved)  # folding on did not change the checkpoint
    for update in arrivals[5:]:
        straight.fold(update)
    expected_next, _ = straight.step(2, expected)

    resumed = make()
    resumed.load_state_dict(state)
    assert _same(resumed.state_dict(), saved)
    for update in arrivals[3:5]:
        resumed.fold(update)
    got, metrics = resumed.step(1, x)
    assert got.equals(expected)
    assert metrics == expected_metrics
    for update in arrivals[5:]:
        resumed.fold(update)
    got_next, _ = resumed.step(2, got)
    assert got_next.equals(expected_next)


def test_fedbuff_refuses_an_inconsistent_buffer() -> None:
    fb = FedBuff(buffer_size=4)
    x = _model()
    for update in _arrivals(x, 2):
        fb.fold(update)
    state = fb.state_dict()
    with pytest.raises(StrategyError, match="inconsistent"):
        FedBuff().load_state_dict({**state, "count": 3})
    with pytest.raises(StrategyError, match="inconsistent"):
        FedBuff().load_state_dict({**state, "sums": None})
    empty = FedBuff().state_dict()
    FedBuff().load_state_dict(empty)
    assert empty["count"] == 0 and empty["sums"] is None
