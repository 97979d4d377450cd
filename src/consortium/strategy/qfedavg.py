"""q-FedAvg (Li et al., 2020, "Fair Resource Allocation in Federated Learning", Algorithm 2).

q-FFL minimises ``Σ_k F_k^{q+1} / (q + 1)``: the larger ``q``, the more the
global model favours the nodes where it does worst. Each node ``k`` trains
from the global model ``w`` to ``w̄_k`` and reports ``F_k = F_k(w)``, its loss
at the *received* model before training, as the train metric
``initial_loss``. The server step, with ``L`` an estimate of the local
Lipschitz constant (the paper takes ``1 / client learning rate``)::

    Δw_k = L (w - w̄_k)
    h_k  = q F_k^{q-1} ||Δw_k||² + L F_k^q
    w_new = w - Σ_k F_k^q Δw_k / Σ_k h_k

``q = 0`` gives exactly the unweighted mean of the returned models, whatever
``L``. Nodes are not weighted by their number of examples (the paper samples
nodes in proportion to their data instead; cross-silo runs usually take every
node). Replies are folded as they arrive (O(model) memory).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

from consortium.core.arrays import Arrays
from consortium.core.errors import RoundFailed, StrategyError
from consortium.core.protocol import INITIAL_LOSS_KEY
from consortium.core.records import Config, Metrics
from consortium.strategy.aggregate import DifferenceSum
from consortium.strategy.base import TrainReply, weighted_metrics
from consortium.strategy.fedavg import FedAvg

__all__ = ["INITIAL_LOSS_KEY", "QFedAvg"]

log = logging.getLogger("consortium.strategy")


class QFedAvg(FedAvg):
    """q-FedAvg: fair aggregation that weights each node by its loss to the power ``q``.

    ``q >= 0`` and ``lipschitz`` (L) > 0. With ``q > 0`` every node must report
    ``initial_loss`` > 0 in its train metrics; a reply without a usable one is
    left out with a warning, and the round fails (:class:`RoundFailed`) when
    none is usable. Other keywords are FedAvg's, except ``weighting``.
    """

    def __init__(self, q: float, lipschitz: float, **fedavg_kwargs: Any) -> None:
        if isinstance(q, bool) or not math.isfinite(q) or q < 0:
            raise StrategyError(f"q-FedAvg q must be a finite number >= 0, got {q!r}")
        if isinstance(lipschitz, bool) or not math.isfinite(lipschitz) or lipschitz <= 0:
            raise StrategyError(
                f"q-FedAvg lipschitz (L) must be a finite number > 0, got {lipschitz!r}"
            )
        if "weighting" in fedavg_kwargs:
            raise StrategyError(
                "q-FedAvg weights nodes by initial_loss ** q, not by examples: "
                "'weighting' does not apply"
            )
        super().__init__(**fedavg_kwargs)
        self.q = float(q)
        self.lipschitz = float(lipschitz)

    def _loss_power(self, reply: TrainReply) -> tuple[float, float] | str:
        """``(F_k, F_k^q)`` for a reply, or why it is unusable."""
        if self.q == 0.0:
            return 1.0, 1.0  # F^0 = 1 and the q-term of h vanishes: F is not needed
        value = reply.metrics.get(INITIAL_LOSS_KEY)
        if value is None:
            return f"reports no {INITIAL_LOSS_KEY!r} metric"
        if not math.isfinite(value) or value <= 0:
            return f"reports {INITIAL_LOSS_KEY}={value!r}, which is not a finite number > 0"
        try:
            return float(value), math.pow(value, self.q)
        except OverflowError:
            return f"reports {INITIAL_LOSS_KEY}={value!r}, whose power q={self.q} overflows"

    def aggregate_train(
        self, round: int, current: Arrays, replies: Iterable[TrainReply]
    ) -> tuple[Arrays, Metrics]:
        q, L = self.q, self.lipschitz
        acc = DifferenceSum(current)  # Σ_k F_k^q Δw_k = Σ_k (L F_k^q) (w - w̄_k)
        h_total = 0.0
        metrics: list[tuple[int, Metrics]] = []
        skipped: list[str] = []
        for reply in replies:
            loss = self._loss_power(reply)
            if isinstance(loss, str):
                skipped.append(f"{reply.node_id} {loss}")
                log.warning(
                    "q-FedAvg round %d: update from node %s left out: it %s",
                    round,
                    reply.node_id,
                    loss,
                )
                continue
            f, fq = loss
            squared = acc.add(reply.arrays, L * fq)  # ||w - w̄_k||^2
            h_total += L * fq
            if q > 0:
                h_total += q * (fq / f) * (L * L * squared)  # q F^{q-1} ||Δw_k||^2
            metrics.append((reply.num_examples, reply.metrics))
        if acc.count == 0:
            why = "; ".join(skipped) or "no update arrived"
            raise RoundFailed(
                f"round {round}: q-FedAvg has no usable update (each node must report "
                f"{INITIAL_LOSS_KEY!r} > 0 when q > 0): {why}"
            )
        return acc.result(1.0 / h_total), weighted_metrics(metrics)

    def settings(self) -> Config:
        out = {**super().settings(), "q": self.q, "lipschitz": self.lipschitz}
        del out["weighting"]
        return out
