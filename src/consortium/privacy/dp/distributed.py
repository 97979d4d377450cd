"""Distributed DP: each node's share of the noise, added before secure aggregation.

With secure aggregation the server learns only the sum of the nodes'
(quantised, integer) updates. If each of ``n`` nodes adds its own share of
noise before masking, the sum carries the whole noise and the server never
sees an un-noised sum, nor any single update: central-DP utility without
trusting the server with the clear sum (Kairouz, Liu, Steinke, "The
Distributed Discrete Gaussian Mechanism for Federated Learning with Secure
Aggregation", ICML 2021).

Our choice: each node adds a **discrete Gaussian** of scale ``σ/√n`` on the
integer grid SecAgg sums on, so the shares sum to variance ``σ²`` (to within
the discrete Gaussian's variance, which is below ``σ²`` by less than
``1e-3·σ²`` for ``σ/√n >= 1``). Integers are what the masked sum needs, and an
integer has no floating-point low bits to leak (Mironov 2012). The sum of
discrete Gaussians is not exactly a discrete Gaussian; Kairouz et al. bound
the gap (negligible when each share's scale is at least ~1 grid step), so
keep ``σ/√n`` at 1 grid step or more. The Skellam mechanism (Agarwal et al.,
NeurIPS 2021) is the alternative whose shares sum exactly; we keep the
discrete Gaussian for its closer match to the Gaussian accounting above.

Only the node-side function is here; wiring it into the SecAgg+ mod (after
clipping and quantisation, before masking) comes with SecAgg+.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from consortium.core.errors import ConfigError
from consortium.privacy.dp.noise import discrete_gaussian, secure_rng

__all__ = ["noise_share"]


def noise_share(
    shape: tuple[int, ...],
    total_stddev: float,
    num_nodes: int,
    rng: np.random.Generator | None = None,
) -> NDArray[np.int64]:
    """One node's integer noise share: a discrete Gaussian of scale
    ``total_stddev / √num_nodes`` (grid steps), so ``num_nodes`` shares sum to
    variance ``total_stddev²``. ``rng`` defaults to a fresh :func:`secure_rng`."""
    if not (isinstance(total_stddev, int | float) and 0 < total_stddev < math.inf):
        raise ConfigError(f"total_stddev must be finite and > 0, got {total_stddev!r}")
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 1:
        raise ConfigError(f"num_nodes must be an integer >= 1, got {num_nodes!r}")
    return discrete_gaussian(
        shape, total_stddev / math.sqrt(num_nodes), rng if rng is not None else secure_rng()
    )
