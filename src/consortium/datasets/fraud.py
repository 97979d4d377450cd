"""A synthetic "Medicare provider fraud" data set, one silo per provider.

It mimics the public CMS setup of Medicare fraud research: the Medicare Part B
"by provider" files aggregate a year of claims per provider, and a provider on
the OIG's exclusion list (LEIE) is a fraud label. Each row is one billing
entity's claims aggregates (claim counts, reimbursed amounts, shares of
inpatient claims, ...), so the columns live on very different scales, most of
them log-normal: scaling matters. Positives are rare. Nothing here is real
data (``examples/fraud/README.md`` says how to use the real files). The
generator works in three steps:

1. a latent standard-normal profile per row, correlated through a shared
   "practice size" factor;
2. provider drift: each provider shifts and rescales that profile (its own
   per-feature mean offset and scale), so provider feature distributions differ;
3. observed features are fixed transforms of the profile (Poisson counts,
   log-normal amounts, logistic shares), and the label follows a fixed logistic
   model of the profile: ``y = 1[w . z + b + noise > 0]`` with standard-logistic
   noise, i.e. ``P(y=1 | z) = sigmoid(w . z + b)``. The intercept ``b`` is set
   from the pooled scores so the overall positive rate is the requested one
   (exactly, up to rounding to whole rows); per-provider rates vary with drift.

Everything is determined by ``seed``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from consortium.core.errors import ConfigError

__all__ = ["ProviderData", "make_provider_fraud"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_Kind = Literal["count", "amount", "share", "gauge"]


@dataclass(frozen=True)
class _Feature:
    """How one observed column is made from its latent value ``z``."""

    name: str
    kind: _Kind
    center: float  # log-mean for counts/amounts, logit for shares, mean for gauges
    spread: float
    weight: float  # weight of its latent value in the ground-truth fraud model


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


# Weights are the ground truth: fraudsters bill more, and more expensively.
_FEATURES: tuple[_Feature, ...] = (
    _Feature("claims_count", "count", math.log(150.0), 0.8, 0.8),
    _Feature("beneficiaries_count", "count", math.log(70.0), 0.7, -0.4),
    _Feature("total_reimbursed", "amount", math.log(30_000.0), 1.0, 1.0),
    _Feature("mean_claim_amount", "amount", math.log(400.0), 0.6, 0.6),
    _Feature("deductible_paid", "amount", math.log(900.0), 0.9, 0.0),
    _Feature("inpatient_share", "share", _logit(0.15), 1.0, 0.7),
    _Feature("physicians_count", "count", math.log(6.0), 0.6, 0.5),
    _Feature("mean_stay_days", "amount", math.log(4.0), 0.5, 0.4),
    _Feature("chronic_condition_share", "share", _logit(0.45), 0.8, 0.2),
    _Feature("diagnosis_codes_count", "count", math.log(35.0), 0.7, 0.3),
    _Feature("mean_beneficiary_age", "gauge", 72.0, 5.0, 0.0),
    _Feature("deceased_share", "share", _logit(0.03), 0.8, 0.5),
)

_SHARED_FACTOR = 0.5  # correlation of each latent column with "practice size"
_SIGNAL = 1.5  # scale of w . z against the unit logistic noise


@dataclass(frozen=True, eq=False)
class ProviderData:
    """One provider's rows: ``x`` float64 (rows x features), ``y`` int64 0/1 fraud labels."""

    name: str
    x: FloatArray
    y: IntArray
    feature_names: tuple[str, ...]

    @property
    def num_rows(self) -> int:
        """Number of rows (claims aggregates) this provider holds."""
        return int(self.x.shape[0])

    @property
    def positive_rate(self) -> float:
        """Share of rows labelled fraudulent."""
        return float(self.y.mean()) if self.y.size else 0.0


def make_provider_fraud(
    num_providers: int = 8,
    rows_per_provider: int | Sequence[int] = 500,
    num_features: int = 12,
    positive_rate: float = 0.1,
    drift: float = 0.5,
    seed: int | np.random.Generator = 0,
) -> list[ProviderData]:
    """Generate an imbalanced, drifting fraud-detection data set split by provider.

    ``rows_per_provider`` is one size for all or one per provider. ``drift`` is
    the standard deviation of each provider's latent mean offset (its log-scale
    varies with ``drift / 2``); 0 makes providers identically distributed.
    Beyond the 12 named claims features, extra columns are uninformative
    log-normal amounts named ``extra_amount_NN``.
    """
    sizes = _check_arguments(num_providers, rows_per_provider, num_features, positive_rate, drift)
    features = _features(num_features)
    weights = np.array([f.weight for f in features], dtype=np.float64)
    norm = float(np.linalg.norm(weights))
    weights = weights / norm if norm > 0 else weights

    streams = np.random.default_rng(seed).spawn(num_providers)
    xs: list[FloatArray] = []
    scores: list[FloatArray] = []
    for rng, size in zip(streams, sizes, strict=True):
        offset = rng.normal(0.0, drift, num_features)
        scale = np.exp(rng.normal(0.0, drift / 2.0, num_features))
        shared = rng.standard_normal((size, 1))
        own = rng.standard_normal((size, num_features))
        latent = offset + scale * (
            _SHARED_FACTOR * shared + math.sqrt(1.0 - _SHARED_FACTOR**2) * own
        )
        xs.append(_observe(latent, features, rng))
        scores.append(_SIGNAL * (latent @ weights) + rng.logistic(0.0, 1.0, size))

    # Intercept: the top `num_positive` pooled scores are the frauds.
    pooled = np.concatenate(scores)
    num_positive = min(max(round(positive_rate * pooled.size), 1), pooled.size - 1)
    labels = np.zeros(pooled.size, dtype=np.int64)
    labels[np.argsort(pooled, kind="stable")[pooled.size - num_positive :]] = 1

    names = tuple(f.name for f in features)
    width = max(2, len(str(num_providers - 1)))
    bounds = np.cumsum([0, *sizes])
    return [
        ProviderData(
            name=f"provider-{p:0{width}d}",
            x=xs[p],
            y=labels[bounds[p] : bounds[p + 1]].copy(),
            feature_names=names,
        )
        for p in range(num_providers)
    ]


def _features(num_features: int) -> tuple[_Feature, ...]:
    """The first ``num_features`` named columns, padded with uninformative amounts."""
    extra = tuple(
        _Feature(f"extra_amount_{j:02d}", "amount", math.log(100.0), 1.0, 0.0)
        for j in range(len(_FEATURES), num_features)
    )
    return (_FEATURES + extra)[:num_features]


def _observe(
    latent: FloatArray, features: tuple[_Feature, ...], rng: np.random.Generator
) -> FloatArray:
    """Turn latent profiles into claims-like columns."""
    x = np.empty_like(latent)
    for j, f in enumerate(features):
        z = f.center + f.spread * latent[:, j]
        if f.kind == "count":
            x[:, j] = rng.poisson(np.exp(z))
        elif f.kind == "amount":
            x[:, j] = np.round(np.exp(z), 2)
        elif f.kind == "share":
            x[:, j] = 1.0 / (1.0 + np.exp(-z))
        else:
            x[:, j] = z
    return x


def _check_arguments(
    num_providers: int,
    rows_per_provider: int | Sequence[int],
    num_features: int,
    positive_rate: float,
    drift: float,
) -> list[int]:
    """Validate the generator's arguments; return the row count of each provider."""
    if isinstance(num_providers, bool) or not isinstance(num_providers, int) or num_providers < 1:
        raise ConfigError(f"num_providers must be an integer >= 1, got {num_providers!r}")
    if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
        raise ConfigError(f"num_features must be an integer >= 1, got {num_features!r}")
    if isinstance(rows_per_provider, int | np.integer):
        sizes = [int(rows_per_provider)] * num_providers
    else:
        sizes = [int(s) for s in rows_per_provider]
        if len(sizes) != num_providers:
            raise ConfigError(
                f"rows_per_provider has {len(sizes)} entries for {num_providers} providers"
            )
    if min(sizes) < 1:
        raise ConfigError(f"every provider needs at least 1 row, got {sizes}")
    if sum(sizes) < 2:
        raise ConfigError("need at least 2 rows in all to hold both classes")
    if not (0.0 < positive_rate < 1.0):
        raise ConfigError(f"positive_rate must be in (0, 1), got {positive_rate!r}")
    if not (math.isfinite(drift) and drift >= 0.0):
        raise ConfigError(f"drift must be a finite number >= 0, got {drift!r}")
    return sizes
