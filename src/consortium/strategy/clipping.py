"""Norm-bounded updates (Sun et al., 2019, "Can you really backdoor federated learning?").

:class:`ClippedUpdates` wraps any strategy: each node's update ``y_i - x`` is
scaled down to an L2 norm of at most ``max_norm`` (the whole model, all
parameters together) before the base strategy sees it. Clipping happens one
reply at a time as the base pulls them, so a folding base (FedAvg) still holds
O(model) memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

from consortium.core.arrays import Arrays
from consortium.core.errors import StrategyError
from consortium.core.norms import clip_update
from consortium.core.protocol import CLIPPED_UPDATES
from consortium.core.records import Config, Metrics
from consortium.strategy.base import Strategy, StrategyWrapper, TrainReply

__all__ = ["ClippedUpdates", "clip_update"]


class ClippedUpdates(StrategyWrapper):
    """Any strategy with each update's delta clipped to L2 norm ``max_norm`` first.

    Train metrics gain ``clipped_updates``: how many replies were scaled down.
    Everything else (sampling, evaluation, ``min_available_nodes``, state) is
    the base strategy's; the state is ``{"base": base.state_dict()}``.
    """

    def __init__(self, base: Strategy, max_norm: float) -> None:
        if not isinstance(base, Strategy):
            raise StrategyError(f"base must be a Strategy, got {type(base).__name__}")
        if not (math.isfinite(max_norm) and max_norm > 0):
            raise StrategyError(f"ClippedUpdates: max_norm must be finite and > 0, got {max_norm}")
        super().__init__(base)
        self.max_norm = float(max_norm)

    def aggregate_train(
        self, round: int, current: Arrays, replies: Iterable[TrainReply]
    ) -> tuple[Arrays, Metrics]:
        clipped = 0

        def bounded() -> Iterator[TrainReply]:
            nonlocal clipped
            for reply in replies:
                arrays = clip_update(current, reply.arrays, self.max_norm)
                if arrays is not reply.arrays:
                    clipped += 1
                    reply = TrainReply(
                        reply.node_id, arrays, reply.num_examples, reply.metrics, reply.records
                    )
                del arrays
                yield reply
                del reply  # folded by the base: not kept alive while the next one arrives

        arrays, metrics = self.base.aggregate_train(round, current, bounded())
        return arrays, {**metrics, CLIPPED_UPDATES: clipped}

    # -- everything else is the base strategy's (StrategyWrapper) -------------------------

    def wrapper_settings(self) -> Config:
        return {"max_norm": self.max_norm}
