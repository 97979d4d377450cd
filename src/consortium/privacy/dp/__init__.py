"""Differential privacy: central (server), local (node) and distributed (with SecAgg) noise,
with ε from ``dp-accounting``. See docs/privacy.md.

Needs the ``privacy`` extra (``dp-accounting`` for ε, ``randomgen`` for the
ChaCha20 noise generator); both are imported only when used.
"""

from consortium.privacy.dp.accountant import (
    DP_EPSILON,
    AccountantName,
    PrivacyLedger,
    epsilon,
    noise_multiplier_for,
)
from consortium.privacy.dp.adaptive import AdaptiveClipping, update_noise_multiplier
from consortium.privacy.dp.central import DP_AGGREGATE, CentralDP, PrivacyBudgetExhausted
from consortium.privacy.dp.distributed import noise_share
from consortium.privacy.dp.local import local_dp_mod, local_epsilon
from consortium.privacy.dp.noise import NoiseSource, discrete_gaussian, secure_rng

__all__ = [
    "DP_AGGREGATE",
    "DP_EPSILON",
    "AccountantName",
    "AdaptiveClipping",
    "CentralDP",
    "NoiseSource",
    "PrivacyBudgetExhausted",
    "PrivacyLedger",
    "discrete_gaussian",
    "epsilon",
    "local_dp_mod",
    "local_epsilon",
    "noise_multiplier_for",
    "noise_share",
    "secure_rng",
    "update_noise_multiplier",
]
