"""Adaptive clipping (Andrew, Thakkar, McMahan, Ramaswamy, NeurIPS 2021).

Choosing the clipping norm ``C`` by hand is hard: too small and every update
is cut (bias), too large and the noise ``z·C`` drowns the signal. The paper
moves ``C`` each round toward the norm below which a target fraction ``γ``
of updates lie, privately:

* each node's bit is ``b_i = 1[‖Δ_i‖ ≤ C]`` — whether its update was **not**
  clipped;
* the server releases ``b̄ = (Σ b_i + N(0, σ_b²)) / m`` (``m`` the number of
  sampled nodes);
* and updates ``C ← C · exp(−η (b̄ − γ))``: when more than ``γ`` of the
  updates fit, ``C`` shrinks; when fewer fit, it grows.

Flower's implementation counts *clipped* updates but applies this
unclipped-fraction rule, so its ``C`` runs away from the target (to 0 from
below, to infinity from above); here the bit is the unclipped one, as in the
paper, and a test drives ``C`` to the target quantile from both sides.

The count is a second Gaussian query on the same nodes, so the privacy budget
is split as the paper's Theorem 1 says: for a total noise multiplier ``z``
(the one the accountant sees) the update's sum gets
``z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2)`` (the bits, centred at ½, have sensitivity
½), which needs ``σ_b > z / 2``. The paper suggests ``σ_b = m / 20``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from consortium.core.errors import ConfigError
from consortium.core.records import Config

__all__ = ["AdaptiveClipping", "update_noise_multiplier"]


@dataclass(frozen=True, slots=True)
class AdaptiveClipping:
    """How the clipping norm follows the target unclipped quantile (see the module).

    ``count_stddev`` is ``σ_b``, the noise on the count of unclipped updates;
    None means the paper's ``m / 20`` for the round's ``m`` sampled nodes.
    """

    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_stddev: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.target_quantile < 1.0:
            raise ConfigError(f"target_quantile must be within (0, 1), got {self.target_quantile}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ConfigError(f"learning_rate must be finite and > 0, got {self.learning_rate}")
        if self.count_stddev is not None and not (
            math.isfinite(self.count_stddev) and self.count_stddev > 0
        ):
            raise ConfigError(f"count_stddev must be finite and > 0, got {self.count_stddev}")

    def stddev(self, sampled: int) -> float:
        """``σ_b`` for a round with ``sampled`` nodes."""
        return self.count_stddev if self.count_stddev is not None else sampled / 20

    def next_norm(
        self, clip_norm: float, unclipped: int, sampled: int, rng: np.random.Generator
    ) -> tuple[float, float]:
        """(the next clipping norm, the noised unclipped fraction ``b̄`` it came from)."""
        noised = (unclipped + float(rng.normal(0.0, self.stddev(sampled)))) / sampled
        return clip_norm * math.exp(-self.learning_rate * (noised - self.target_quantile)), noised

    def settings(self) -> Config:
        out: Config = {
            "target_quantile": self.target_quantile,
            "clip_learning_rate": self.learning_rate,
        }
        if self.count_stddev is not None:
            out["count_stddev"] = self.count_stddev
        return out


def update_noise_multiplier(noise_multiplier: float, count_stddev: float) -> float:
    """``z_Δ``: the update's share of a total noise multiplier ``z`` when the unclipped
    count gets noise ``σ_b`` (paper, Theorem 1); ConfigError when ``σ_b <= z / 2``."""
    rest = noise_multiplier**-2 - (2 * count_stddev) ** -2
    if rest <= 0:
        raise ConfigError(
            f"adaptive clipping: the count noise count_stddev={count_stddev:g} must exceed "
            f"noise_multiplier / 2 = {noise_multiplier / 2:g}, or the count alone spends the "
            "whole budget; raise count_stddev (or sample more nodes: the default is m / 20)"
        )
    return float(rest**-0.5)
