"""Privacy accounting with Google's ``dp-accounting``: ε for the rounds actually run.

A round of central DP-FedAvg is a subsampled Gaussian mechanism: each node
is in the round with probability ``q`` (the sampling rate, sampled nodes /
available nodes) and the clipped sum gets Gaussian noise of ``z`` times the
clipping norm (``z`` the noise multiplier). ``T`` rounds compose. We describe
exactly that to ``dp-accounting`` as
``PoissonSampledDpEvent(q, GaussianDpEvent(z))`` per round, grouping rounds
with the same ``(q, z)`` into a ``SelfComposedDpEvent``, and ask one of its
accountants for ε at the run's δ:

* ``"rdp"`` — :class:`dp_accounting.rdp.RdpAccountant` (Rényi DP, Mironov
  2017; the moments accountant of DP-FedAvg). Fast (milliseconds), an upper
  bound that is loose for many compositions.
* ``"pld"`` — :class:`dp_accounting.pld.PLDAccountant` (privacy loss
  distributions, pessimistic discretisation). Tighter ε, about a second per
  call.

Caveat on sampling: the strategies sample a fixed number of nodes without
replacement, and we account for it as Poisson sampling at the same rate, as
DP-FedAvg (McMahan et al., 2018) and TF Privacy do. With full participation
(``q = 1``, the usual cross-silo case) the two are the same mechanism.
The neighbouring relation is add-or-remove one node (user-level DP).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from consortium.core.errors import ConfigError, MissingDependencyError

__all__ = [
    "DP_EPSILON",
    "AccountantName",
    "PrivacyLedger",
    "epsilon",
    "noise_multiplier_for",
]

AccountantName = Literal["rdp", "pld"]
ACCOUNTANTS: tuple[AccountantName, ...] = ("rdp", "pld")

#: train metric: ε spent so far, by the strategy's chosen accountant
DP_EPSILON = "dp_epsilon"

log = logging.getLogger("consortium.privacy")

#: one round: (sampling rate q, noise multiplier z)
Step = tuple[float, float]


class _SkippedOrders(logging.Filter):
    """Drops the RDP accountant's "failed to converge ... Excluding this order" warnings.

    For some (q, z) a few fractional Rényi orders do not converge; the
    accountant leaves them out and takes the minimum over the others, which is
    still a valid bound. It logs that once per order per computation, i.e.
    dozens of lines every round of a run; one line in our own log says it.
    """

    told: ClassVar[bool] = False

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("_compute_log_a_frac failed to converge"):
            if not _SkippedOrders.told:
                _SkippedOrders.told = True
                log.info("dp-accounting (RDP) skips Rényi orders that do not converge")
            return False
        return True


def _dp() -> Any:
    try:
        import dp_accounting
    except ImportError as exc:  # pragma: no cover - the privacy extra installs it
        raise MissingDependencyError.for_extra("dp-accounting", "privacy") from exc
    absl = logging.getLogger("absl")
    if not any(isinstance(f, _SkippedOrders) for f in absl.filters):
        absl.addFilter(_SkippedOrders())
    return dp_accounting


def check_accountant(name: str) -> AccountantName:
    """``name`` if it names an accountant; ConfigError otherwise."""
    for known in ACCOUNTANTS:
        if name == known:
            return known
    raise ConfigError(f"accountant must be one of {list(ACCOUNTANTS)}, got {name!r}")


def check_delta(delta: float) -> float:
    if not (isinstance(delta, int | float) and 0.0 < delta < 1.0):
        raise ConfigError(f"delta must be within (0, 1), got {delta!r}")
    return float(delta)


def check_step(sampling_rate: float, noise_multiplier: float) -> Step:
    if not (isinstance(sampling_rate, int | float) and 0.0 < sampling_rate <= 1.0):
        raise ConfigError(f"sampling_rate must be within (0, 1], got {sampling_rate!r}")
    if not (
        isinstance(noise_multiplier, int | float)
        and math.isfinite(noise_multiplier)
        and noise_multiplier > 0
    ):
        raise ConfigError(f"noise_multiplier must be finite and > 0, got {noise_multiplier!r}")
    return float(sampling_rate), float(noise_multiplier)


def epsilon(steps: Sequence[Step], delta: float, accountant: AccountantName = "rdp") -> float:
    """ε after the rounds ``steps`` (each ``(q, z)``) at ``delta``; 0 for no round."""
    name = check_accountant(accountant)
    delta = check_delta(delta)
    if not steps:
        return 0.0
    dp = _dp()
    events = [
        dp.SelfComposedDpEvent(
            dp.PoissonSampledDpEvent(q, dp.GaussianDpEvent(z)),
            count,
        )
        for (q, z), count in sorted(Counter(check_step(*s) for s in steps).items())
    ]
    event = events[0] if len(events) == 1 else dp.ComposedDpEvent(events)
    acc = dp.rdp.RdpAccountant() if name == "rdp" else dp.pld.PLDAccountant()
    acc.compose(event)
    return float(acc.get_epsilon(delta))


def noise_multiplier_for(
    target_epsilon: float,
    delta: float,
    rounds: int,
    sampling_rate: float,
    *,
    accountant: AccountantName = "rdp",
    tolerance: float = 1e-3,
) -> float:
    """The smallest noise multiplier (to ``tolerance``, relative) whose ε after ``rounds``
    rounds at ``sampling_rate`` is at most ``target_epsilon``: a binary search over the
    accountant, so the answer is what this accountant will report for the run."""
    if not (isinstance(target_epsilon, int | float) and 0 < target_epsilon < math.inf):
        raise ConfigError(f"target_epsilon must be finite and > 0, got {target_epsilon!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"rounds must be an integer >= 1, got {rounds!r}")
    check_step(sampling_rate, 1.0)

    def eps(z: float) -> float:
        return epsilon([(sampling_rate, z)] * rounds, delta, accountant)

    low, high = 0.0, 1.0
    while eps(high) > target_epsilon:
        low, high = high, high * 2
        if high > 1e6:
            raise ConfigError(
                f"no noise multiplier up to 1e6 reaches ε={target_epsilon} in {rounds} rounds"
            )
    while high - low > tolerance * high:
        mid = (low + high) / 2
        if eps(mid) > target_epsilon:
            low = mid
        else:
            high = mid
    return high


class PrivacyLedger:
    """The rounds a run has released, and ε after them (cached: PLD is slow).

    ``accountants`` lists what to report, the first one being the one that
    counts (for ``dp_epsilon`` and a budget). Its :meth:`state` is a plain
    list, so it can ride in a strategy's checkpoint.
    """

    def __init__(self, delta: float, accountants: Sequence[AccountantName] = ("rdp",)) -> None:
        self.delta = check_delta(delta)
        names = [check_accountant(a) for a in accountants]
        if not names or len(set(names)) != len(names):
            raise ConfigError(f"accountants must be distinct names, got {list(accountants)}")
        self.accountants = tuple(names)
        self.steps: list[Step] = []
        self._cache: dict[tuple[AccountantName, tuple[Step, ...]], float] = {}

    @property
    def primary(self) -> AccountantName:
        return self.accountants[0]

    def epsilon(
        self, accountant: AccountantName | None = None, *, extra: Step | None = None
    ) -> float:
        """ε of the rounds so far (plus ``extra``, a round not yet run) by ``accountant``."""
        name = accountant or self.primary
        steps = tuple(sorted([*self.steps, *([extra] if extra else [])]))
        key = (name, steps)
        if key not in self._cache:
            self._cache = {k: v for k, v in self._cache.items() if len(k[1]) >= len(steps) - 1}
            self._cache[key] = epsilon(steps, self.delta, name)
        return self._cache[key]

    def spend(self, sampling_rate: float, noise_multiplier: float) -> None:
        """Record one released round."""
        self.steps.append(check_step(sampling_rate, noise_multiplier))

    def report(self) -> dict[str, float]:
        """``dp_epsilon`` (the primary accountant's), then ``dp_epsilon_<name>`` for each
        other accountant (the δ is a setting, recorded with the run's parameters)."""
        out = {DP_EPSILON: self.epsilon()}
        for name in self.accountants[1:]:
            out[f"{DP_EPSILON}_{name}"] = self.epsilon(name)
        return out

    def state(self) -> list[list[float]]:
        return [[q, z] for q, z in self.steps]

    def load_state(self, state: Any) -> None:
        if not isinstance(state, list) or not all(
            isinstance(s, list | tuple) and len(s) == 2 for s in state
        ):
            raise ConfigError(f"privacy ledger state must be a list of [q, z] pairs, got {state!r}")
        self.steps = [check_step(float(q), float(z)) for q, z in state]
