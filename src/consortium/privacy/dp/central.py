"""Central differential privacy on the server: DP-FedAvg as a strategy wrapper.

:class:`CentralDP` wraps a strategy that averages updates (FedAvg, the FedOpt
family) and releases, each round, the DP-FedAvg estimate of McMahan, Ramage,
Talwar and Zhang (ICLR 2018)::

    x + (Σ_i clip(Δ_i, C) + N(0, (z_Δ·C)² I)) / m

where ``Δ_i = y_i − x`` is node i's update, ``clip`` scales it to L2 norm at
most ``C`` (a zero update stays zero: no division), and ``m`` is the number
of nodes *sampled* for the round, fixed before any reply arrives (the
fixed-denominator estimator). Adding or removing one node changes the sum by
at most ``C``, so the noise is calibrated to the sum; a node that does not
reply only lowers utility, never the guarantee. Every node weighs the same:
weighting by ``num_examples`` would let a large site's influence exceed
``C/m`` (Flower's wrapper does that).

The base strategy then sees that one noised model as the round's only reply
(``node_id`` :data:`DP_AGGREGATE`), so what it does next (FedAvg: take it;
FedAdam: use ``−Δ`` as its pseudo-gradient) is post-processing and costs no
privacy. It still samples and configures nodes and evaluates. Strategies
that need every update (median, Krum) are refused: they cannot work on the
one noised aggregate.

The threat it answers: whoever sees the *released* models (the coordinator,
other sites, anyone the model is shared with) cannot tell whether any one
site took part. The server itself sees every update in the clear; against
the server use local DP (:func:`local_dp_mod`) or secure aggregation with
distributed noise.

Each round's train metrics carry ``dp_epsilon``, ε after this round from
``dp-accounting`` by the first of ``accountants`` (``dp_epsilon_pld`` etc. for
the others), ``dp_clip_norm`` (the ``C`` used) and ``dp_sampling_rate``; the
noise multiplier and δ are settings, recorded with the run's parameters. With
``max_epsilon`` the strategy refuses, in ``configure_train`` (before any task
is sent), a round whose release would take ε above it, raising
:class:`PrivacyBudgetExhausted`, which the round workflow takes as "finish now": the
run ends ``finished`` with the model of the last released round.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from consortium.core.arrays import Arrays
from consortium.core.errors import RoundFailed, StopTraining, StrategyError
from consortium.core.records import Config, Metrics
from consortium.privacy.dp.accountant import AccountantName, PrivacyLedger
from consortium.privacy.dp.adaptive import AdaptiveClipping, update_noise_multiplier
from consortium.privacy.dp.noise import NoiseSource, gaussian, secure_rng
from consortium.strategy.base import (
    Instruction,
    Strategy,
    StrategyWrapper,
    TrainReply,
    weighted_metrics,
)

__all__ = ["DP_AGGREGATE", "CentralDP", "PrivacyBudgetExhausted"]

#: the node id of the one reply the base strategy sees: the noised aggregate
DP_AGGREGATE = "dp-aggregate"


class PrivacyBudgetExhausted(StopTraining):
    """The next round would take the run's ε above its ``max_epsilon``: the run finishes
    before that round, its result the model after the last released round."""


class CentralDP(StrategyWrapper):
    """DP-FedAvg with fixed or adaptive clipping around ``base`` (see the module docstring).

    ``noise_multiplier`` is ``z``, the total noise the accountant sees (with
    adaptive clipping part of it goes to the unclipped count);
    ``clip_norm`` is ``C`` (the initial ``C₀`` when ``adaptive`` is given).
    ``accountants`` are reported each round, the first one counting for
    ``dp_epsilon`` and ``max_epsilon``. ``noise`` gives a fresh generator per
    draw (default: :func:`secure_rng`, ChaCha20 keyed from the OS).
    """

    def __init__(
        self,
        base: Strategy,
        *,
        noise_multiplier: float,
        clip_norm: float,
        delta: float,
        max_epsilon: float | None = None,
        adaptive: AdaptiveClipping | None = None,
        accountants: Sequence[AccountantName] = ("rdp", "pld"),
        noise: NoiseSource = secure_rng,
    ) -> None:
        super().__init__(base)
        if base.needs_all_updates:
            raise StrategyError(
                f"CentralDP releases one noised mean per round; {type(base).__name__} needs "
                "every update (a robust rule) and cannot work on it"
            )
        if not (isinstance(noise_multiplier, int | float) and 0 < noise_multiplier < math.inf):
            raise StrategyError(f"noise_multiplier must be finite and > 0, got {noise_multiplier}")
        if not (isinstance(clip_norm, int | float) and 0 < clip_norm < math.inf):
            raise StrategyError(f"clip_norm must be finite and > 0, got {clip_norm}")
        if max_epsilon is not None and not 0 < max_epsilon < math.inf:
            raise StrategyError(f"max_epsilon must be finite and > 0, got {max_epsilon}")
        self.noise_multiplier = float(noise_multiplier)
        self.initial_clip_norm = float(clip_norm)
        self.clip_norm = float(clip_norm)
        self.max_epsilon = None if max_epsilon is None else float(max_epsilon)
        self.adaptive = adaptive
        if adaptive is not None and adaptive.count_stddev is not None:
            update_noise_multiplier(self.noise_multiplier, adaptive.count_stddev)  # refuse now
        self.ledger = PrivacyLedger(delta, accountants)
        self._noise = noise
        #: (round, nodes sampled, sampling rate) of the round being run
        self._pending: tuple[int, int, float] | None = None

    @property
    def epsilon(self) -> float:
        """ε spent so far (the first accountant)."""
        return self.ledger.epsilon()

    def configure_train(
        self, round: int, arrays: Arrays, nodes: Sequence[str], rng: np.random.Generator
    ) -> list[Instruction]:
        instructions = self.base.configure_train(round, arrays, nodes, rng)
        if not instructions:
            return instructions
        sampled = len(instructions)
        rate = min(1.0, sampled / max(len(nodes), 1))
        if self.adaptive is not None:  # the default count noise depends on m: check it now
            update_noise_multiplier(self.noise_multiplier, self.adaptive.stddev(sampled))
        if self.max_epsilon is not None:
            spent = self.ledger.epsilon()
            after = self.ledger.epsilon(extra=(rate, self.noise_multiplier))
            if after > self.max_epsilon:
                raise PrivacyBudgetExhausted(
                    f"round {round} would raise ε ({self.ledger.primary}, δ={self.ledger.delta:g}) "
                    f"from {spent:.4g} to {after:.4g}, above max_epsilon={self.max_epsilon:g}: "
                    f"the run stops before it, after {len(self.ledger.steps)} released rounds"
                )
        self._pending = (round, sampled, rate)
        return instructions

    def aggregate_train(
        self, round: int, current: Arrays, replies: Iterable[TrainReply]
    ) -> tuple[Arrays, Metrics]:
        if self._pending is None or self._pending[0] != round:
            raise StrategyError(
                f"CentralDP.aggregate_train(round={round}) without configure_train for that "
                "round: the noise is calibrated to the nodes sampled there"
            )
        _, sampled, rate = self._pending
        not_float = [n for n, v in current.items() if v.dtype.kind != "f"]
        if not_float:
            raise StrategyError(
                f"CentralDP handles floating-point models only; {not_float} are not"
            )
        clip = self.clip_norm
        sums = {name: np.zeros(value.shape, dtype=np.float64) for name, value in current.items()}
        received = unclipped = examples = 0
        node_metrics: list[tuple[int, Metrics]] = []
        for reply in replies:
            deltas = {
                n: np.subtract(reply.arrays[n], x, dtype=np.float64) for n, x in current.items()
            }
            norm = math.sqrt(sum(float(np.vdot(d, d)) for d in deltas.values()))
            if norm <= clip:
                unclipped += 1
                scale = 1.0  # a zero update lands here: nothing to divide
            else:
                scale = clip / norm
            for name, delta in deltas.items():
                sums[name] += delta * scale if scale != 1.0 else delta
            received += 1
            examples += reply.num_examples
            node_metrics.append((reply.num_examples, reply.metrics))
            del reply, deltas
        if received == 0:
            raise RoundFailed(f"round {round}: no update to aggregate")
        z_update, rng = self.noise_multiplier, self._noise()
        if self.adaptive is not None:
            z_update = update_noise_multiplier(z_update, self.adaptive.stddev(sampled))
        noised = Arrays()
        for name, total in sums.items():
            total += gaussian(total.shape, z_update * clip, rng)
            total /= sampled
            total += current[name]
            noised[name] = total.astype(current[name].dtype, copy=False)
        del sums
        metrics: Metrics = {"dp_clip_norm": clip, "dp_sampling_rate": rate}
        if self.adaptive is not None:
            self.clip_norm, fraction = self.adaptive.next_norm(clip, unclipped, sampled, rng)
            metrics["dp_unclipped_fraction"] = fraction  # the noised b̄, never the raw count
        self.ledger.spend(rate, self.noise_multiplier)
        self._pending = None
        aggregate = TrainReply(
            DP_AGGREGATE, noised, max(examples, 1), weighted_metrics(node_metrics)
        )
        arrays, base_metrics = self.base.aggregate_train(round, current, [aggregate])
        return arrays, {**base_metrics, **metrics, **self.ledger.report()}

    # -- settings and state ----------------------------------------------------------
    def wrapper_settings(self) -> Config:
        out: Config = {
            "noise_multiplier": self.noise_multiplier,
            "clip_norm": self.initial_clip_norm,
            "delta": self.ledger.delta,
            "accountant": self.ledger.primary,
            "clipping": "fixed" if self.adaptive is None else "adaptive",
        }
        if self.max_epsilon is not None:
            out["max_epsilon"] = self.max_epsilon
        if self.adaptive is not None:
            out.update(self.adaptive.settings())
        return out

    def wrapper_state_dict(self) -> dict[str, Any]:
        return {"clip_norm": self.clip_norm, "rounds": self.ledger.state()}

    def load_wrapper_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"clip_norm", "rounds"}:
            raise StrategyError(
                f"CentralDP state must have 'clip_norm' and 'rounds', got {sorted(state)}"
            )
        self.clip_norm = float(state["clip_norm"])
        self.ledger.load_state(state["rounds"])
        self._pending = None
