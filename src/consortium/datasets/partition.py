"""Partitioners: split one array data set into simulated silos.

Each function returns integer (``int64``) index arrays into the data set, one per
partition, each sorted ascending; every sample lands in exactly one partition.
Randomness comes only from the ``numpy.random.Generator`` passed in, so the same
generator state gives the same partition. Invalid arguments raise
:class:`~consortium.core.errors.ConfigError`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from consortium.core.errors import ConfigError

__all__ = ["dirichlet", "iid", "natural", "shards"]

IndexArray = npt.NDArray[np.int64]

#: How many times :func:`dirichlet` redraws before giving up on ``min_partition_size``.
DEFAULT_MAX_ATTEMPTS = 100


def iid(num_samples: int, num_partitions: int, rng: np.random.Generator) -> list[IndexArray]:
    """Shuffle and cut into ``num_partitions`` near-equal parts (sizes differ by at most 1)."""
    _check_rng(rng)
    _check_count("num_samples", num_samples, minimum=0)
    _check_count("num_partitions", num_partitions, minimum=1)
    if num_samples < num_partitions:
        raise ConfigError(
            f"cannot split {num_samples} samples into {num_partitions} non-empty partitions"
        )
    order = rng.permutation(num_samples).astype(np.int64)
    return [np.sort(part) for part in np.array_split(order, num_partitions)]


def dirichlet(
    labels: npt.ArrayLike,
    num_partitions: int,
    alpha: float,
    rng: np.random.Generator,
    *,
    min_partition_size: int = 10,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> list[IndexArray]:
    """Label skew: each class is spread over partitions by Dirichlet(``alpha``) proportions.

    Small ``alpha`` gives partitions dominated by few classes; large ``alpha``
    approaches an i.i.d. split. The whole draw is repeated until every partition
    holds at least ``min_partition_size`` samples, at most ``max_attempts`` times.
    """
    _check_rng(rng)
    y = _labels_1d(labels)
    _check_count("num_partitions", num_partitions, minimum=1)
    _check_count("min_partition_size", min_partition_size, minimum=0)
    _check_count("max_attempts", max_attempts, minimum=1)
    if isinstance(alpha, bool) or not isinstance(alpha, int | float | np.number):
        raise ConfigError(f"alpha must be a number, got {alpha!r}")
    if not (np.isfinite(alpha) and alpha > 0):
        raise ConfigError(f"alpha must be a finite number > 0, got {alpha!r}")
    if min_partition_size * num_partitions > y.size:
        raise ConfigError(
            f"{y.size} samples cannot give {num_partitions} partitions "
            f"of at least {min_partition_size} samples each"
        )
    _, class_of = np.unique(y, return_inverse=True)
    class_members = [
        np.flatnonzero(class_of == c).astype(np.int64) for c in range(int(class_of.max()) + 1)
    ]
    for _ in range(max_attempts):
        parts: list[list[IndexArray]] = [[] for _ in range(num_partitions)]
        for members in class_members:
            shuffled = rng.permutation(members)
            shares = rng.dirichlet(np.full(num_partitions, float(alpha)))
            # draw each partition's count of this class; flooring a cumulative sum
            # instead would hand the rounding residue of every class to the last one
            cuts = np.cumsum(rng.multinomial(shuffled.size, shares))[:-1]
            for part, chunk in zip(parts, np.split(shuffled, cuts), strict=True):
                part.append(chunk)
        result = [np.sort(np.concatenate(chunks)) for chunks in parts]
        if min(r.size for r in result) >= min_partition_size:
            return result
    raise ConfigError(
        f"no Dirichlet(alpha={alpha}) draw in {max_attempts} attempts gave every one of "
        f"{num_partitions} partitions at least {min_partition_size} samples; "
        "raise alpha, lower min_partition_size, or use fewer partitions"
    )


def shards(
    labels: npt.ArrayLike,
    num_partitions: int,
    shards_per_partition: int,
    rng: np.random.Generator,
) -> list[IndexArray]:
    """Pathological label skew (FedAvg paper): sort by label, cut into shards, deal them out.

    Ties within a label are ordered at random; shard sizes differ by at most one.
    """
    _check_rng(rng)
    y = _labels_1d(labels)
    _check_count("num_partitions", num_partitions, minimum=1)
    _check_count("shards_per_partition", shards_per_partition, minimum=1)
    num_shards = num_partitions * shards_per_partition
    if y.size < num_shards:
        raise ConfigError(
            f"{y.size} samples cannot fill {num_shards} shards "
            f"({num_partitions} partitions x {shards_per_partition} shards)"
        )
    shuffled = rng.permutation(y.size).astype(np.int64)
    by_label = shuffled[np.argsort(y[shuffled], kind="stable")]
    pieces = np.array_split(by_label, num_shards)
    dealt = rng.permutation(num_shards).reshape(num_partitions, shards_per_partition)
    return [np.sort(np.concatenate([pieces[s] for s in row])) for row in dealt]


def natural(values: npt.ArrayLike) -> dict[Any, IndexArray]:
    """Natural partition: group sample indices by the distinct values of one column.

    Keys are the distinct values as Python scalars, in sorted order.
    """
    column = np.asarray(values)
    if column.ndim != 1:
        raise ConfigError(f"natural() needs a 1-D column, got shape {column.shape}")
    if column.size == 0:
        return {}
    keys, group_of = np.unique(column, return_inverse=True)
    return {
        key: np.flatnonzero(group_of == g).astype(np.int64) for g, key in enumerate(keys.tolist())
    }


def _labels_1d(labels: npt.ArrayLike) -> npt.NDArray[Any]:
    """Labels as a non-empty 1-D array."""
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ConfigError(f"labels must be 1-D, got shape {y.shape}")
    if y.size == 0:
        raise ConfigError("labels are empty")
    return y


def _check_count(name: str, value: int, *, minimum: int) -> None:
    """Reject non-integers (and bools) and integers below ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")


def _check_rng(rng: object) -> None:
    """Insist on an explicit Generator (no seeds, no global state)."""
    if not isinstance(rng, np.random.Generator):
        raise ConfigError(
            f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), "
            f"got {type(rng).__name__}"
        )
