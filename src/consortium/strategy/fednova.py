"""FedNova (Wang et al., 2020, "Tackling the Objective Inconsistency Problem in
Heterogeneous Federated Optimization"), vanilla local SGD case.

Nodes that run different numbers of local steps pull FedAvg towards the
optimum of whoever ran longest. FedNova divides each update by the node's
local step count ``τ_i`` (its metric ``local_steps``) before averaging, then
rescales by the effective step count::

    d_i = (x - y_i) / τ_i,   p_i = n_i / Σ n,   τ_eff = Σ p_i τ_i
    x_new = x - τ_eff Σ p_i d_i

A node whose local optimiser is not plain SGD (momentum, a proximal term)
reports ``||a_i||_1`` of the paper as ``local_steps`` instead. With equal
``τ_i`` FedNova is FedAvg. Replies are folded as they arrive (O(model) memory).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

from consortium.core.arrays import Arrays
from consortium.core.errors import RoundFailed
from consortium.core.protocol import LOCAL_STEPS_KEY
from consortium.core.records import Metrics
from consortium.strategy.aggregate import DifferenceSum
from consortium.strategy.base import TrainReply, weighted_metrics
from consortium.strategy.fedavg import FedAvg

__all__ = ["LOCAL_STEPS_KEY", "FedNova"]

log = logging.getLogger("consortium.strategy")


def local_steps(reply: TrainReply) -> float | str:
    """The reply's ``local_steps`` as a number > 0, or why it is unusable."""
    value = reply.metrics.get(LOCAL_STEPS_KEY)
    if value is None:
        return f"reports no {LOCAL_STEPS_KEY!r} metric"
    if not math.isfinite(value) or value <= 0:
        return f"reports {LOCAL_STEPS_KEY}={value!r}, which is not a finite number > 0"
    return float(value)


class FedNova(FedAvg):
    """FedAvg with each node's update normalised by its local step count (FedNova).

    Every node must report ``local_steps`` (τ_i > 0) in its train metrics; a
    reply without it is left out of the aggregate with a warning, and the round
    fails (:class:`RoundFailed`) when no reply is usable. ``weighting`` chooses
    ``p_i`` as for FedAvg (examples or uniform).
    """

    def aggregate_train(
        self, round: int, current: Arrays, replies: Iterable[TrainReply]
    ) -> tuple[Arrays, Metrics]:
        acc = DifferenceSum(current)
        total = 0.0  # Σ n_i
        steps = 0.0  # Σ n_i τ_i
        metrics: list[tuple[int, Metrics]] = []
        skipped: list[str] = []
        for reply in replies:
            tau = local_steps(reply)
            if isinstance(tau, str):
                skipped.append(f"{reply.node_id} {tau}")
                log.warning(
                    "FedNova round %d: update from node %s left out: it %s",
                    round,
                    reply.node_id,
                    tau,
                )
                continue
            weight = float(reply.num_examples) if self.weighting == "examples" else 1.0
            acc.add(reply.arrays, weight / tau)
            total += weight
            steps += weight * tau
            metrics.append((reply.num_examples, reply.metrics))
        if total <= 0:
            why = "; ".join(skipped) or "no update with a positive number of examples"
            raise RoundFailed(
                f"round {round}: FedNova has no usable update (each node must report "
                f"{LOCAL_STEPS_KEY!r} > 0 and a positive number of examples): {why}"
            )
        tau_eff = steps / total
        # x - τ_eff Σ p_i d_i  with  Σ p_i d_i = (Σ n_i/τ_i (x - y_i)) / Σ n_i
        return acc.result(tau_eff / total), weighted_metrics(metrics)
