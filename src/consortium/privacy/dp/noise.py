"""Where differential-privacy noise comes from: a cryptographically secure generator.

Everything else in Consortium draws from an injected, seeded
``numpy.random.Generator`` so that a run is reproducible. DP noise must be the
opposite: if anyone can reproduce (or predict) the noise, they can subtract it
and the guarantee is gone. ``numpy``'s own bit generators (PCG64, MT19937,
Philox) are statistical generators: their state can be recovered from their
output (MT19937 from 624 outputs; PCG64 by Bouillaguet et al., 2020), and
seeding them from ``secrets`` gives at most a 128-bit state that an observer of
one stream could still learn. Flower draws its DP noise from
``np.random.normal`` (the global, seedable MT19937).

What we do: :func:`secure_rng` returns a ``numpy.random.Generator`` over
**ChaCha20** (the ``randomgen`` package's ``ChaCha`` bit generator with the
standard 20 rounds; the same stream cipher the Linux kernel's ``getrandom``
uses), keyed with 256 fresh bits from :func:`secrets.token_bytes` (the OS
CSPRNG) on every call. Each noise draw (one round, one update) gets its own
key that is never stored, logged or checkpointed, so knowing the run seed, the
checkpoints or earlier noise tells nothing about the next draw. Because it is
a real ``Generator``, every numpy distribution (``normal``, ``geometric``,
``random``) runs on the secure stream at numpy speed.

What this does **not** close: the continuous Gaussian is still computed in
floating point (numpy's ziggurat). Mironov (CCS 2012) showed that a
floating-point Laplace sampler's outputs are not dense, so ``x + noise``
reveals ``x`` through its low-order bits; Jin et al. (S&P 2022) showed the same
for common Gaussian samplers. Central and local DP here add float64 noise and
then round the result to the model's dtype (float32 for most models), which
throws away the low 29 bits where those attacks look; that is a mitigation,
not a proof. Where the values are integers anyway (the distributed-DP noise
shares that go into secure aggregation) we draw a **discrete** Gaussian
(:func:`discrete_gaussian`, Canonne, Kamath and Steinke, NeurIPS 2020), which
has no floating-point output to attack.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from consortium.core.errors import ConfigError, MissingDependencyError

__all__ = ["NoiseSource", "discrete_gaussian", "secure_rng"]

#: A function giving a fresh generator for one noise draw (tests may inject a seeded one).
NoiseSource = Callable[[], np.random.Generator]

#: ChaCha rounds: 20 is the standard cipher; fewer rounds trade security for speed.
CHACHA_ROUNDS = 20
#: bits of OS entropy that key each draw (the ChaCha20 key size)
KEY_BITS = 256


def secure_rng() -> np.random.Generator:
    """A generator over ChaCha20 keyed with 256 fresh bits from the OS CSPRNG (see module)."""
    try:
        from randomgen import ChaCha
    except ImportError as exc:  # pragma: no cover - the privacy extra installs it
        raise MissingDependencyError.for_extra("randomgen", "privacy") from exc
    key = int.from_bytes(secrets.token_bytes(KEY_BITS // 8), "little")
    return np.random.Generator(ChaCha(key=key, counter=0, rounds=CHACHA_ROUNDS))


def gaussian(shape: tuple[int, ...], std: float, rng: np.random.Generator) -> NDArray[np.float64]:
    """``N(0, std²)`` noise of ``shape`` in float64 from ``rng`` (``std`` >= 0, finite)."""
    if not (math.isfinite(std) and std >= 0):
        raise ConfigError(f"noise std must be finite and >= 0, got {std}")
    return rng.normal(0.0, std, size=shape) if std > 0 else np.zeros(shape)


def discrete_gaussian(
    shape: tuple[int, ...], sigma: float, rng: np.random.Generator
) -> NDArray[np.int64]:
    """Integers from the discrete Gaussian ``P(x) ∝ exp(-x²/(2σ²))`` (``σ`` > 0).

    The rejection sampler of Canonne, Kamath and Steinke (2020, Algorithm 3):
    draw ``Y`` from a discrete Laplace of scale ``t = ⌊σ⌋ + 1`` (a difference
    of two geometric variables) and keep it with probability
    ``exp(-(|Y| - σ²/t)² / (2σ²))``; more than half of the draws are kept for
    any ``σ``. Vectorised with numpy: the acceptance test compares a float64
    uniform with a float64 ``exp``, so the output distribution matches the
    exact one to within float64 rounding of those probabilities (the exact
    version needs arbitrary-precision Bernoulli trials, one Python call per
    value). The output itself is an integer, so the floating-point attacks on
    continuous samplers (Mironov 2012) do not apply.
    """
    if not (math.isfinite(sigma) and sigma > 0):
        raise ConfigError(f"discrete Gaussian sigma must be finite and > 0, got {sigma}")
    count = int(np.prod(shape, dtype=np.int64))
    out = np.empty(count, dtype=np.int64)
    t = math.floor(sigma) + 1
    p = -math.expm1(-1.0 / t)  # success probability of each geometric variable
    filled = 0
    while filled < count:
        need = count - filled
        batch = need + need // 2 + 16  # about one round of rejection on average
        y = rng.geometric(p, size=batch) - rng.geometric(p, size=batch)
        accept = rng.random(size=batch) < np.exp(
            -((np.abs(y) - sigma * sigma / t) ** 2) / (2 * sigma * sigma)
        )
        kept = y[accept][:need]
        out[filled : filled + kept.size] = kept
        filled += kept.size
    return out.reshape(shape)
