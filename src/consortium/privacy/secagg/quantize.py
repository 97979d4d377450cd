"""From a node's float update to integers mod M, and from their sum back.

The vector a node masks is ``[n_i, clipped_i, n_i·Q(Δ_i)]``: its example
count (exact), how many coordinates the clipping range cut (exact), then its
update clipped to [-c, c], stochastically rounded onto the steps of [0, q]
(Q) and multiplied by its count, so the sum is the example-weighted sum of
the updates and its error is at most one step Δ = 2c/q per coordinate of the
weighted mean, however unequal the counts. The server learns only the sums:
the total example count, the total number of clipped coordinates (reported,
so a clipping range that is too tight shows), and Σ n_i·Δ_i.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from consortium.core.errors import ConfigError
from consortium.privacy.secagg.params import SecAggParams

__all__ = ["HEADER", "Decoded", "decode", "encode"]

#: Entries before the update: the example count and the clipped count.
HEADER = 2


def encode(
    update: NDArray[np.float64], num_examples: int, params: SecAggParams, rng: np.random.Generator
) -> NDArray[np.uint64]:
    """The integer vector a node masks (see the module docstring).

    ``rng`` only rounds (it needs to be unbiased, not secret). Raises
    ConfigError for a count outside [0, max_weight] or a non-finite update.
    """
    if isinstance(num_examples, bool) or not 0 <= num_examples <= params.max_weight:
        raise ConfigError(
            f"num_examples {num_examples} is outside [0, max_weight={params.max_weight}] "
            "of this SecAgg+ round"
        )
    if not np.all(np.isfinite(update)):
        raise ConfigError("the update to aggregate securely is not finite (NaN or inf)")
    c = params.clip
    clipped = int(np.count_nonzero(np.abs(update) > c))
    scaled = (np.clip(update, -c, c) + c) / params.step
    floor = np.floor(scaled)
    rounded = np.minimum(floor + (rng.random(scaled.shape) < (scaled - floor)), params.levels)
    out = np.empty(HEADER + update.size, dtype=np.uint64)
    out[0] = num_examples
    out[1] = clipped
    # at most max_weight·q < M (check_capacity): no wrap-around
    out[HEADER:] = rounded.astype(np.uint64) * np.uint64(num_examples)
    return out


class Decoded:
    """What the server learns from the unmasked sum of the nodes' vectors."""

    __slots__ = ("clipped", "num_examples", "weighted_sum")

    def __init__(self, num_examples: int, clipped: int, weighted_sum: NDArray[np.float64]) -> None:
        self.num_examples = num_examples
        self.clipped = clipped
        #: Σ n_i·Δ_i, within Σ n_i·Δ per coordinate
        self.weighted_sum = weighted_sum

    def mean_update(self) -> NDArray[np.float64]:
        """The example-weighted mean update Σ n_i·Δ_i / Σ n_i (within one step Δ)."""
        if self.num_examples <= 0:
            raise ConfigError("the securely aggregated nodes trained on no example")
        return self.weighted_sum / self.num_examples


def decode(total: NDArray[np.uint64], params: SecAggParams) -> Decoded:
    """The sums inside the unmasked ``total`` (mod M) of the nodes' encoded vectors."""
    if total.size < HEADER:
        raise ConfigError(f"a SecAgg+ sum has at least {HEADER} entries, got {total.size}")
    count = int(total[0])
    # the capacity check keeps T - Σ n_i·q/2 within ±M/2 (T = Σ n_i·Q_i plus any noise), so
    # that difference taken mod M and read in (-M/2, M/2] is exact; only it is scaled to floats
    offset = np.uint64(count * (params.levels // 2))
    difference = total[HEADER:] - offset  # wraps mod 2^64
    if params.modulus_bits < 64:
        difference &= np.uint64(params.modulus - 1)
        difference[difference >= np.uint64(params.modulus // 2)] -= np.uint64(params.modulus)
    centered = difference.view(np.int64)
    return Decoded(count, int(total[1]), centered.astype(np.float64) * params.step)
