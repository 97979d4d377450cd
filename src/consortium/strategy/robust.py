"""Byzantine-robust aggregation: rules over the round's model updates, and RobustFedAvg.

A rule is a small class with one method, ``aggregate(updates)``: it maps an
``(n, d)`` float64 matrix whose row ``i`` is node ``i``'s update ``y_i - x``
(the whole model flattened, parameters in order) to one ``d``-vector.
:class:`RobustFedAvg` is FedAvg (sampling, configs, evaluation) that collects
the round's updates, applies a rule and returns ``x + rule(updates)`` reshaped
to the model's names, shapes and dtypes.

Every rule **ignores** ``num_examples``: a Byzantine node can report any count,
so each node has one vote, as in the papers. A rule refuses, when it sees the
round's ``n``, a configuration outside its guarantee (:class:`StrategyError`
naming the rule, ``n`` and ``f``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from consortium.core.arrays import Arrays
from consortium.core.errors import RoundFailed, StrategyError, UpdateRejected
from consortium.core.records import Config, Metrics
from consortium.strategy.base import TrainReply, weighted_metrics
from consortium.strategy.fedavg import FedAvg

F64 = NDArray[np.float64]

__all__ = [
    "Bulyan",
    "CoordinateMedian",
    "Krum",
    "MultiKrum",
    "RobustFedAvg",
    "RobustRule",
    "TrimmedMean",
    "flatten_arrays",
    "unflatten_arrays",
]


# -- flattening ----------------------------------------------------------------------
def flatten_arrays(arrays: Arrays) -> F64:
    """Every parameter of ``arrays``, in order, as one float64 vector (always a copy)."""
    if not len(arrays):
        return np.zeros(0)
    return np.concatenate([np.asarray(v, dtype=np.float64).reshape(-1) for v in arrays.values()])


def unflatten_arrays(flat: F64, like: Arrays) -> Arrays:
    """``flat`` cut back into ``like``'s names, shapes and dtypes (integers are rounded)."""
    size = sum(int(v.size) for v in like.values())
    if flat.shape != (size,):
        raise StrategyError(f"a flat vector of shape {flat.shape} cannot fill a model of {size}")
    out = Arrays()
    pos = 0
    for name, ref in like.items():
        part = flat[pos : pos + ref.size].reshape(ref.shape)
        pos += ref.size
        if ref.dtype.kind in "iub":
            part = np.rint(part)
        out[name] = part.astype(ref.dtype)
    return out


def _delta(current: Arrays, x: F64, reply: TrainReply) -> F64:
    if not reply.arrays.is_compatible(current):
        raise UpdateRejected(f"the update from node {reply.node_id} does not match the model")
    row = flatten_arrays(reply.arrays)
    row -= x
    return row


# -- rules ---------------------------------------------------------------------------
class RobustRule(ABC):
    """One robust aggregation rule: ``(n, d)`` updates -> one ``d``-vector."""

    name: ClassVar[str]

    @abstractmethod
    def aggregate(self, updates: F64) -> F64:
        """The aggregate of the rows of ``updates`` (one row per node)."""

    def settings(self) -> Config:
        """The rule's name and parameters, for the run record."""
        return {"rule": self.name}


def _check_f(f: int) -> int:
    if isinstance(f, bool) or not isinstance(f, int | np.integer) or f < 0:
        raise StrategyError(f"f (the number of Byzantine nodes tolerated) must be >= 0, got {f!r}")
    return int(f)


class CoordinateMedian(RobustRule):
    """Coordinate-wise median (Yin et al., 2018); even ``n`` averages the two middle values."""

    name = "median"

    def aggregate(self, updates: F64) -> F64:
        if updates.shape[0] < 1:
            raise StrategyError("median needs at least one update, got n=0")
        return np.asarray(np.median(updates, axis=0), dtype=np.float64)


class TrimmedMean(RobustRule):
    """Coordinate-wise trimmed mean (Yin et al., 2018).

    Per coordinate, the ``k`` smallest and ``k`` largest values are dropped and
    the rest averaged; ``k = floor(beta * n)`` or, with ``trim``, a fixed count
    (set it to the tolerated ``f``). Needs ``2k < n``.
    """

    name = "trimmed_mean"

    def __init__(self, beta: float | None = None, *, trim: int | None = None) -> None:
        if (beta is None) == (trim is None):
            raise StrategyError("TrimmedMean needs exactly one of beta (a fraction) or trim")
        if beta is not None and not 0.0 <= beta < 0.5:
            raise StrategyError(f"TrimmedMean: beta must lie in [0, 0.5), got {beta}")
        self.beta = beta
        self.trim = None if trim is None else _check_f(trim)

    def count(self, n: int) -> int:
        """How many values are dropped from each side of each coordinate when n nodes reply."""
        return int(self.beta * n) if self.beta is not None else int(self.trim or 0)

    def aggregate(self, updates: F64) -> F64:
        n = updates.shape[0]
        k = self.count(n)
        if n < 1 or 2 * k >= n:
            raise StrategyError(
                f"trimmed mean drops {k} values from each side and needs n > 2·{k}, "
                f"got n={n}, f={k}"
            )
        kept = np.sort(updates, axis=0)[k : n - k]
        return np.asarray(kept.mean(axis=0), dtype=np.float64)

    def settings(self) -> Config:
        out: Config = {"rule": self.name}
        if self.beta is not None:
            out["beta"] = self.beta
        else:
            out["trim"] = int(self.trim or 0)
        return out


def pairwise_sq_distances(updates: F64) -> F64:
    """``D[i, j] = ||u_i - u_j||²``, computed row by row (exact, O(n·d) scratch)."""
    n = updates.shape[0]
    out = np.empty((n, n))
    for i in range(n):
        diff = updates - updates[i]
        out[i] = np.einsum("ij,ij->i", diff, diff)
    return out


def krum_scores(dist: F64, f: int) -> F64:
    """Each candidate's sum of squared distances to its ``n - f - 2`` closest others.

    The count is kept within ``[1, n - 1]`` so that Bulyan's last iterations,
    on sets smaller than ``2f + 3``, still compare with a neighbour.
    """
    n = dist.shape[0]
    if n == 1:
        return np.zeros(1)
    k = min(max(n - f - 2, 1), n - 1)
    masked = dist + np.diag(np.full(n, np.inf))  # a node is not its own neighbour
    nearest = np.sort(masked, axis=1)[:, :k]
    return np.asarray(nearest.sum(axis=1), dtype=np.float64)


class MultiKrum(RobustRule):
    """Multi-Krum (Blanchard et al., 2017): average the ``m`` updates with the lowest Krum score.

    A score is the sum of squared distances to the ``n - f - 2`` closest other
    updates; ``m`` defaults to ``n - f`` and may not exceed it. Needs ``n > 2f + 2``.
    Ties go to the node that replied first.
    """

    name = "multi_krum"

    def __init__(self, f: int, m: int | None = None) -> None:
        self.f = _check_f(f)
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise StrategyError(f"{self.name}: m must be an integer >= 1, got {m!r}")
        self.m = m
        #: rows chosen in the last call (for inspection and tests)
        self.last_selected: list[int] = []

    def select(self, updates: F64) -> list[int]:
        """Indices of the rows this rule averages, best score first."""
        n, f = updates.shape[0], self.f
        if n <= 2 * f + 2:
            raise StrategyError(f"{self.name} needs n > 2f + 2, got n={n}, f={f}")
        m = n - f if self.m is None else self.m
        if m > n - f:
            raise StrategyError(f"{self.name} averages at most n - f = {n - f}, got m={m}, f={f}")
        scores = krum_scores(pairwise_sq_distances(updates), f)
        return [int(i) for i in np.argsort(scores, kind="stable")[:m]]

    def aggregate(self, updates: F64) -> F64:
        self.last_selected = self.select(updates)
        return np.asarray(updates[self.last_selected].mean(axis=0), dtype=np.float64)

    def settings(self) -> Config:
        out: Config = {"rule": self.name, "f": self.f}
        if self.m is not None:
            out["m"] = self.m
        return out


class Krum(MultiKrum):
    """Krum (Blanchard et al., 2017): the single update with the lowest Krum score."""

    name = "krum"

    def __init__(self, f: int) -> None:
        super().__init__(f, m=1)

    def settings(self) -> Config:
        return {"rule": self.name, "f": self.f}


class Bulyan(RobustRule):
    """Bulyan (El Mhamdi et al., 2018) over Krum. Needs ``n >= 4f + 3``.

    ``θ = n - 2f`` updates are chosen by iterated Krum (each pick removed
    before re-scoring the rest); then, per coordinate, the ``β = θ - 2f``
    chosen values closest to their median are averaged.
    """

    name = "bulyan"

    def __init__(self, f: int) -> None:
        self.f = _check_f(f)
        self.last_selected: list[int] = []

    def aggregate(self, updates: F64) -> F64:
        n, f = updates.shape[0], self.f
        if n < 4 * f + 3:
            raise StrategyError(f"bulyan needs n >= 4f + 3, got n={n}, f={f}")
        dist = pairwise_sq_distances(updates)
        remaining = list(range(n))
        chosen: list[int] = []
        for _ in range(n - 2 * f):
            sub = dist[np.ix_(remaining, remaining)]
            best = int(np.argmin(krum_scores(sub, f)))  # first minimum: stable ties
            chosen.append(remaining.pop(best))
        self.last_selected = chosen
        picked = updates[chosen]
        beta = len(chosen) - 2 * f
        deviation = np.abs(picked - np.median(picked, axis=0))
        closest = np.argsort(deviation, axis=0, kind="stable")[:beta]
        kept = np.take_along_axis(picked, closest, axis=0)
        return np.asarray(kept.mean(axis=0), dtype=np.float64)

    def settings(self) -> Config:
        return {"rule": self.name, "f": self.f}


# -- the strategy --------------------------------------------------------------------
class RobustFedAvg(FedAvg):
    """FedAvg whose aggregation is a robust rule over the round's updates (one vote per node).

    ``RobustFedAvg(TrimmedMean(trim=2), fraction_train=0.5, central_evaluate=...)``:
    every FedAvg keyword except ``weighting`` (robust rules ignore example
    counts, which an attacker controls) is accepted and means the same.
    """

    needs_all_updates = True

    def __init__(self, rule: RobustRule, **fedavg_kwargs: Any) -> None:
        if not isinstance(rule, RobustRule):
            raise StrategyError(f"rule must be a RobustRule, got {type(rule).__name__}")
        if "weighting" in fedavg_kwargs:
            raise StrategyError(
                "RobustFedAvg gives every node one vote; it takes no 'weighting' argument"
            )
        super().__init__(**fedavg_kwargs, weighting="uniform")
        self.rule = rule

    def aggregate_train(
        self, round: int, current: Arrays, replies: Iterable[TrainReply]
    ) -> tuple[Arrays, Metrics]:
        x = flatten_arrays(current)
        rows: list[F64] = []
        metrics: list[tuple[int, Metrics]] = []
        for reply in replies:
            rows.append(_delta(current, x, reply))
            metrics.append((reply.num_examples, reply.metrics))
        if not rows:
            raise RoundFailed(f"round {round}: no update reached {self.rule.name}")
        updates = np.stack(rows)
        del rows
        step = self.rule.aggregate(updates)
        x += step
        return unflatten_arrays(x, current), weighted_metrics(metrics)

    def settings(self) -> Config:
        out = super().settings()
        out.pop("weighting", None)
        return {**out, **self.rule.settings()}
