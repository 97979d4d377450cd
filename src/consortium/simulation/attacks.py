"""Simulated attacks on federated training: poisoned updates and poisoned labels.

Model poisoning runs as a Grid decorator: :class:`AttackedGrid` wraps the
grid the round loop talks to, collects a training round's replies, replaces
the attackers' models by crafted ones and yields every reply in its original
order, so strategies and the round loop stay untouched. An attack sees the
round as a :class:`RoundView` of flattened updates ``y_i - x``; what each one
may look at (its own update, the attackers' updates, every update) is its
threat model and is stated on its class.

Data poisoning (label flipping) happens on the node: the simulation marks
attackers with the node-config key ``malicious`` (:func:`mark_malicious`)
and the app's data path calls :func:`flip_labels` when :func:`is_malicious`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import ConfigError
from consortium.core.grid import Grid, GridWrapper
from consortium.core.message import MODEL, TRAIN, Content, Message
from consortium.core.protocol import MALICIOUS
from consortium.core.records import Config
from consortium.core.rng import derive_rng
from consortium.simulation.grid import NodeConfigFn, default_node_config
from consortium.strategy.robust import flatten_arrays, unflatten_arrays

F64 = NDArray[np.float64]

__all__ = [
    "MALICIOUS",
    "AttackedGrid",
    "GaussianNoise",
    "InnerProductManipulation",
    "LittleIsEnough",
    "ModelPoisoning",
    "RoundView",
    "SignFlip",
    "alie_z",
    "flip_labels",
    "is_malicious",
    "mark_malicious",
]


# -- data poisoning ------------------------------------------------------------------
def flip_labels(y: ArrayLike, num_classes: int) -> NDArray[np.int64]:
    """Label flipping (Fang et al., 2020; Tolpegin et al., 2020): class ``l`` becomes ``L-1-l``."""
    labels = np.asarray(y)
    if labels.dtype.kind not in "iu":
        raise ConfigError(f"flip_labels needs integer class labels, got dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ConfigError(
            f"labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}"
        )
    return (num_classes - 1 - labels).astype(np.int64)


def mark_malicious(
    attackers: Collection[str], node_ids: Sequence[str], node_config: NodeConfigFn | None = None
) -> NodeConfigFn:
    """A node-config function adding ``malicious: True/False`` to each node's config.

    Wraps ``node_config`` (default: the engine's ``partition-id`` and
    ``num-partitions``); pass the result to ``run_simulation(node_config=...)``.
    """
    unknown = sorted(set(attackers) - set(node_ids))
    if unknown:
        raise ConfigError(f"attackers {unknown} are not simulated nodes")
    chosen = frozenset(attackers)
    count = len(node_ids)

    def config(index: int, node_id: str) -> Config:
        base = (
            node_config(index, node_id)
            if node_config is not None
            else default_node_config(index, node_id, count)
        )
        return {**base, MALICIOUS: node_id in chosen}

    return config


def is_malicious(context: Context) -> bool:
    """Whether the simulation marked this node as an attacker (see :func:`mark_malicious`)."""
    return context.node_config.get(MALICIOUS, False) is True


# -- model poisoning -----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RoundView:
    """One training round as the attackers see it.

    ``updates`` maps every node whose model arrived (finite and of the right
    shape) to its honest update ``y_i - x``, flattened, in reply order;
    ``attackers`` lists the attackers among them, in the same order.
    """

    round: int
    updates: dict[str, F64]
    attackers: tuple[str, ...]
    seed: int = 0

    def rng(self, node: str) -> np.random.Generator:
        """The attack's generator for ``node`` this round (never global state)."""
        return derive_rng(self.seed, self.round, node, stream="attack")

    def own(self) -> F64:
        """The attackers' honest updates, one row each."""
        return np.stack([self.updates[a] for a in self.attackers])

    def benign(self) -> list[F64]:
        """The updates of the nodes that are not attackers."""
        chosen = set(self.attackers)
        return [u for node, u in self.updates.items() if node not in chosen]


class ModelPoisoning(ABC):
    """An attack that replaces the attackers' updates in a round."""

    @abstractmethod
    def craft(self, view: RoundView) -> dict[str, F64]:
        """The update each attacker in ``view.attackers`` sends instead of its own."""


class SignFlip(ModelPoisoning):
    """Sign flipping: each attacker sends ``-scale ×`` its own honest update (own update only)."""

    def __init__(self, scale: float = 1.0) -> None:
        if not (math.isfinite(scale) and scale > 0):
            raise ConfigError(f"SignFlip: scale must be finite and > 0, got {scale}")
        self.scale = float(scale)

    def craft(self, view: RoundView) -> dict[str, F64]:
        return {a: -self.scale * view.updates[a] for a in view.attackers}


class GaussianNoise(ModelPoisoning):
    """Gaussian noise, i.i.d. N(0, sigma²) per coordinate (Blanchard et al., 2017).

    ``mode="replace"`` (the paper's Gaussian Byzantine worker) sends pure
    noise as the update; ``mode="add"`` sends the honest update plus noise.
    Each attacker draws from its own generator keyed by (seed, round, node).
    """

    def __init__(self, sigma: float, mode: Literal["replace", "add"] = "replace") -> None:
        if not (math.isfinite(sigma) and sigma > 0):
            raise ConfigError(f"GaussianNoise: sigma must be finite and > 0, got {sigma}")
        if mode not in ("replace", "add"):
            raise ConfigError(f"GaussianNoise: mode must be 'replace' or 'add', got {mode!r}")
        self.sigma = float(sigma)
        self.mode = mode

    def craft(self, view: RoundView) -> dict[str, F64]:
        out: dict[str, F64] = {}
        for a in view.attackers:
            honest = view.updates[a]
            noise = view.rng(a).normal(0.0, self.sigma, size=honest.shape)
            out[a] = noise + honest if self.mode == "add" else noise
        return out


def alie_z(n: int, f: int) -> float:
    """Baruch et al. (2019)'s z_max: ``s = floor(n/2 + 1) - f``, ``z = Φ⁻¹((n - s) / n)``."""
    s = n // 2 + 1 - f
    if n < 1 or f < 0 or s <= 0:
        raise ConfigError(f"'a little is enough' needs f < n/2 + 1, got n={n}, f={f}")
    return NormalDist().inv_cdf((n - s) / n)


class LittleIsEnough(ModelPoisoning):
    """A Little Is Enough (Baruch et al., 2019): every attacker sends ``μ - z·σ``.

    ``μ`` and ``σ`` (population std) are per coordinate over the attackers' own
    honest updates; ``z`` is :func:`alie_z` of the round's ``n`` replies and
    ``f`` attackers unless fixed.
    """

    def __init__(self, z: float | None = None) -> None:
        if z is not None and not math.isfinite(z):
            raise ConfigError(f"LittleIsEnough: z must be finite, got {z}")
        self.z = z

    def craft(self, view: RoundView) -> dict[str, F64]:
        own = view.own()
        z = self.z if self.z is not None else alie_z(len(view.updates), len(view.attackers))
        crafted = own.mean(axis=0) - z * own.std(axis=0)
        return {a: crafted.copy() for a in view.attackers}


class InnerProductManipulation(ModelPoisoning):
    """Inner-product manipulation (Xie et al., 2019): every attacker sends ``-ε ×`` benign mean.

    Omniscient: the attackers see the benign updates of the round (the paper's
    threat model); if every node that replied is an attacker they use their own.
    """

    def __init__(self, epsilon: float = 0.1) -> None:
        if not (math.isfinite(epsilon) and epsilon > 0):
            raise ConfigError(f"InnerProductManipulation: epsilon must be > 0, got {epsilon}")
        self.epsilon = float(epsilon)

    def craft(self, view: RoundView) -> dict[str, F64]:
        benign = view.benign() or list(view.own())
        crafted = -self.epsilon * np.mean(np.stack(benign), axis=0)
        return {a: crafted.copy() for a in view.attackers}


class AttackedGrid(GridWrapper):
    """A Grid whose attackers' training replies are replaced by ``attack``'s updates.

    Training rounds are collected whole (the attack may need every update),
    then yielded in the inner grid's order; other kinds pass through as they
    stream, and so do asynchronous tasks (``push``): the attacks need a whole
    round. Replies that failed, or whose model does not match the one sent,
    are left as they are and kept out of the view.
    """

    def __init__(
        self, inner: Grid, attackers: Collection[str], attack: ModelPoisoning, *, seed: int = 0
    ) -> None:
        if not isinstance(attack, ModelPoisoning):
            raise ConfigError(f"attack must be a ModelPoisoning, got {type(attack).__name__}")
        super().__init__(inner)
        self.attackers = frozenset(attackers)
        self.attack = attack
        self.seed = seed

    def send_and_receive(
        self, messages: Sequence[Message], *, timeout: float | None
    ) -> Iterator[Message]:
        replies = self.inner.send_and_receive(messages, timeout=timeout)
        sent = {m.metadata.dst: m for m in messages if m.metadata.kind == TRAIN}
        if not self.attackers.intersection(sent):
            yield from replies
            return
        collected = list(replies)
        yield from self._poison(collected, sent)

    def _poison(self, replies: list[Message], sent: dict[str, Message]) -> list[Message]:
        updates: dict[str, F64] = {}
        models: dict[str, Arrays] = {}
        rnd = 0
        for reply in replies:
            node = reply.metadata.src
            task = sent.get(node)
            if task is None or reply.content is None or task.content is None:
                continue
            y, x = reply.content.model, task.content.model
            if y is None or x is None or not y.is_compatible(x):
                continue
            delta = flatten_arrays(y) - flatten_arrays(x)
            if np.isfinite(delta).all():
                updates[node], models[node], rnd = delta, x, task.metadata.round
        attackers = tuple(n for n in updates if n in self.attackers)
        if not attackers:
            return replies
        crafted = self.attack.craft(RoundView(rnd, updates, attackers, self.seed))
        out = []
        for reply in replies:
            node = reply.metadata.src
            if node not in crafted:
                out.append(reply)
                continue
            x = models[node]
            poisoned = unflatten_arrays(flatten_arrays(x) + crafted[node], x)
            assert reply.content is not None
            content = Content(
                arrays={**reply.content.arrays, MODEL: poisoned},
                configs=reply.content.configs,
                metrics=reply.content.metrics,
            )
            out.append(Message(reply.metadata, content=content))
        return out
