"""SecAgg+ parameters, the neighbour graph and the reconstruction threshold.

The server chooses the parameters and sends them to every node with the
round's participants and graph seed; each node rebuilds the graph itself and
signs what it saw (see :mod:`~consortium.privacy.secagg.protocol`), so peers
with different views of the round refuse each other.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from consortium.core.errors import ConfigError
from consortium.core.records import Config

__all__ = ["SecAggParams", "neighbour_count", "neighbour_graph", "threshold"]


@dataclass(frozen=True, slots=True)
class SecAggParams:
    """How a SecAgg+ round masks, quantises and tolerates dropouts.

    ``neighbours`` is k, the number of peers each node shares its secrets with
    (even; None: ``6·ceil(log2 n)``, capped at n - 1, i.e. all peers for small n: at
    n = 50 that is k = 36, which survives 30% random dropouts where ``2·ceil(log2 n)``
    fails about half the time, as each neighbourhood needs a majority alive).
    A node's secrets are shared among itself and its k neighbours; any
    ``threshold`` of those k + 1 rebuild them, with ``threshold`` the smallest
    strict majority above ``threshold_fraction·(k + 1)`` (fraction in [0.5, 1)).
    Each node's update is clipped to ``[-clip, clip]``, stochastically rounded
    onto ``2^quantization_bits`` steps and multiplied by its example count (at
    most ``max_weight``); sums are taken mod ``2^modulus_bits``. Every stage waits at most
    ``stage_timeout`` seconds, the masked-input stage (which trains) at most
    ``train_timeout``.

    ``noise_stddev`` > 0 turns on distributed DP: each of the n participants
    adds a discrete Gaussian share (:func:`~consortium.privacy.dp.noise_share`)
    of scale ``noise_stddev/√n`` to its integer vector before masking, so the
    sum carries noise of standard deviation ``noise_stddev`` quantisation steps
    and the server never sees an un-noised sum (fewer when nodes drop: the
    shares of dropped nodes are missing).
    """

    neighbours: int | None = None
    threshold_fraction: float = 0.5
    clip: float = 8.0
    quantization_bits: int = 32
    modulus_bits: int = 62
    max_weight: int = 100_000
    stage_timeout: float = 60.0
    train_timeout: float = 600.0
    noise_stddev: float = 0.0

    def __post_init__(self) -> None:
        k = self.neighbours
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 2 or k % 2):
            raise ConfigError(f"neighbours must be an even int >= 2 or None, got {k!r}")
        if not 0.5 <= self.threshold_fraction < 1.0:
            raise ConfigError(
                f"threshold_fraction must be within [0.5, 1), got {self.threshold_fraction}"
            )
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ConfigError(f"clip must be a finite number > 0, got {self.clip}")
        if not 1 <= self.quantization_bits <= 48:
            raise ConfigError(
                f"quantization_bits must be within [1, 48], got {self.quantization_bits}"
            )
        if not 16 <= self.modulus_bits <= 64:
            raise ConfigError(f"modulus_bits must be within [16, 64], got {self.modulus_bits}")
        if self.quantization_bits >= self.modulus_bits:
            raise ConfigError(
                f"quantization_bits ({self.quantization_bits}) must be below modulus_bits "
                f"({self.modulus_bits})"
            )
        if isinstance(self.max_weight, bool) or self.max_weight < 1:
            raise ConfigError(f"max_weight must be an int >= 1, got {self.max_weight!r}")
        if not (math.isfinite(self.noise_stddev) and self.noise_stddev >= 0):
            raise ConfigError(f"noise_stddev must be finite and >= 0, got {self.noise_stddev}")
        for name in ("stage_timeout", "train_timeout"):
            value = getattr(self, name)
            if not 0 < value < math.inf:
                raise ConfigError(f"{name} must be a finite number > 0 seconds, got {value}")

    @property
    def levels(self) -> int:
        """q: a quantised value lies in [0, q]."""
        return 1 << self.quantization_bits

    @property
    def modulus(self) -> int:
        """M = 2^modulus_bits: every sum is taken mod M."""
        return 1 << self.modulus_bits

    @property
    def step(self) -> float:
        """The quantisation step Δ = 2·clip / q."""
        return 2 * self.clip / self.levels

    def check_capacity(self, nodes: int, size: int) -> None:
        """Refuse a round whose sums could wrap around the modulus.

        ``nodes`` summed vectors of ``size`` coordinates: each coordinate is at
        most ``max_weight·q`` (a count times a quantised value), the count at
        most ``max_weight`` and the clipped count at most ``size``, so
        ``nodes·max_weight·q`` and ``nodes·size`` must stay below M. Noise
        (``noise_stddev``) needs room on either side: 16 standard deviations.
        """
        worst = max(self.levels * self.max_weight, size)
        if nodes * worst + 2 * math.ceil(16 * self.noise_stddev) >= self.modulus:
            raise ConfigError(
                f"SecAgg+ with {nodes} nodes could overflow the modulus 2^{self.modulus_bits}: "
                f"{nodes} x {worst} >= 2^{self.modulus_bits}; raise modulus_bits or lower "
                "quantization_bits / max_weight"
            )

    def to_config(self) -> Config:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_config(cls, config: Config) -> SecAggParams:
        """The parameters as the server sent them (raises ConfigError naming a bad field)."""
        names = {f for f in cls.__dataclass_fields__}
        unknown = set(config) - names
        if unknown:
            raise ConfigError(f"unknown SecAgg+ parameters: {sorted(unknown)}")
        try:
            return cls(**config)  # type: ignore[arg-type]  # each field is checked above
        except TypeError as exc:
            raise ConfigError(f"bad SecAgg+ parameters: {exc}") from exc


def neighbour_count(params: SecAggParams, nodes: int) -> int:
    """k for a round of ``nodes`` participants (all peers when k >= nodes - 1)."""
    if nodes < 2:
        raise ConfigError(f"secure aggregation needs at least 2 nodes, got {nodes}")
    k = params.neighbours if params.neighbours is not None else 6 * math.ceil(math.log2(nodes))
    return min(k, nodes - 1)


def threshold(params: SecAggParams, holders: int) -> int:
    """How many of ``holders`` shares rebuild a secret: a strict majority, at least 2."""
    return max(2, min(holders, math.floor(params.threshold_fraction * holders) + 1))


def neighbour_graph(participants: Sequence[str], k: int, seed: int) -> dict[str, list[str]]:
    """A k-regular graph over ``participants``: each node's neighbours, sorted.

    The Harary-style ring of Bell et al.: the participants are shuffled by
    ``seed`` (the server draws it and reports it, so everyone rebuilds the same
    graph) and each is joined to the k/2 nodes on either side; k >= n - 1 joins
    everyone to everyone.
    """
    n = len(participants)
    if len(set(participants)) != n:
        raise ConfigError("SecAgg+ participants must be distinct")
    if k >= n - 1:
        return {u: sorted(v for v in participants if v != u) for u in participants}
    if k % 2:
        raise ConfigError(f"neighbours must be even when below n - 1, got {k}")
    ring = sorted(participants)
    random.Random(seed).shuffle(ring)  # public randomness: the graph is not a secret
    graph: dict[str, list[str]] = {}
    for i, u in enumerate(ring):
        near = {ring[(i + d) % n] for d in range(-k // 2, k // 2 + 1) if d}
        graph[u] = sorted(near)
    return graph
