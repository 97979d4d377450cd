"""Privacy for a federation: differential privacy (:mod:`consortium.privacy.dp`) and secure
aggregation (:mod:`consortium.privacy.secagg`, imported on its own: it needs `cryptography`).
See docs/privacy.md."""

from consortium.privacy.dp import (
    AdaptiveClipping,
    CentralDP,
    PrivacyBudgetExhausted,
    local_dp_mod,
    noise_multiplier_for,
    noise_share,
)

__all__ = [
    "AdaptiveClipping",
    "CentralDP",
    "PrivacyBudgetExhausted",
    "local_dp_mod",
    "noise_multiplier_for",
    "noise_share",
]
