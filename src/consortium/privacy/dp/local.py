"""Local differential privacy: a node mod that clips and noises its update before sending.

The threat it answers: a server (or anyone who reads what a node sends) that
is not trusted. Each node's update ``Δ = y − x`` is clipped to L2 norm ``C``
and gets ``N(0, (z·C)² I)`` noise *on the node*, so every message that leaves
the silo is already a Gaussian-mechanism output. Any two clipped updates
differ by at most ``2C``, so one round is ``(ε, δ)``-DP for the node's whole
data set with the Gaussian mechanism's ε at noise multiplier ``z / 2``
(:func:`local_epsilon` composes that over the rounds a node took part in).
The price is utility: each node's update carries its own noise, so the
average has ``√m`` times the noise of central DP over ``m`` nodes.

It acts like :func:`consortium.client.clip_update_mod` (same update, same
clipping arithmetic): only on replies that carry a ``model`` whose task
carried one; evaluate and query replies pass untouched. Put it *outermost*
in ``mods=[...]`` so no other mod sees the un-noised update after it.
"""

from __future__ import annotations

import math

import numpy as np

from consortium.client.app import Handler, Mod
from consortium.client.mods import model_update
from consortium.client.personal import with_model
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import ConfigError
from consortium.core.message import Message
from consortium.core.norms import clip_update
from consortium.privacy.dp.accountant import check_delta
from consortium.privacy.dp.noise import NoiseSource, gaussian, secure_rng

__all__ = ["local_dp_mod", "local_epsilon"]


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"local_dp_mod: {name} must be a number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"local_dp_mod: {name} must be finite and > 0, got {value}")
    return float(value)


def local_dp_mod(
    clip_norm: float, noise_multiplier: float, *, noise: NoiseSource = secure_rng
) -> Mod:
    """A mod that clips this node's update to ``clip_norm`` and adds Gaussian noise of
    standard deviation ``noise_multiplier * clip_norm`` to it (see the module docstring).

    The noise is drawn in float64 from a fresh CSPRNG per reply (``noise``) and
    the result is cast back to each array's dtype.
    """
    bound = _positive("clip_norm", clip_norm)
    std = _positive("noise_multiplier", noise_multiplier) * bound

    def local_dp_mod(message: Message, context: Context, call_next: Handler) -> Message:
        reply = call_next(message, context)
        pair = model_update(message, reply, "local_dp_mod")
        if pair is None:
            return reply
        received, trained = pair
        clipped = clip_update(received, trained, bound)
        rng = noise()
        out = Arrays()
        for name, x in received.items():
            value = np.subtract(clipped[name], x, dtype=np.float64)
            value += gaussian(value.shape, std, rng)
            value += x
            out[name] = value.astype(x.dtype, copy=False)
        return with_model(reply, out)

    return local_dp_mod


def local_epsilon(noise_multiplier: float, rounds: int, delta: float) -> float:
    """ε of ``rounds`` rounds of :func:`local_dp_mod` for one node's data set at ``delta``
    (sensitivity ``2C``: noise multiplier ``z / 2`` per round, composed by RDP)."""
    from consortium.privacy.dp.accountant import epsilon

    check_delta(delta)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"rounds must be an integer >= 1, got {rounds!r}")
    return epsilon([(1.0, _positive("noise_multiplier", noise_multiplier) / 2)] * rounds, delta)
