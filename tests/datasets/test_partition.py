"""Tests for the iid, Dirichlet, shard and natural partitioners."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consortium.core.errors import ConfigError
from consortium.datasets import dirichlet, iid, natural, shards


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def assert_exact_cover(parts: list[npt.NDArray[np.int64]], num_samples: int) -> None:
    """Every index 0..num_samples-1 appears exactly once; parts are sorted int64."""
    for p in parts:
        assert p.dtype == np.int64
        assert np.all(np.diff(p) > 0)
    merged = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
    np.testing.assert_array_equal(np.sort(merged), np.arange(num_samples))


def mean_label_entropy(labels: npt.NDArray[np.int64], parts: list[npt.NDArray[np.int64]]) -> float:
    """Mean Shannon entropy (bits) of the label distribution within each partition."""
    entropies = []
    for p in parts:
        _, counts = np.unique(labels[p], return_counts=True)
        q = counts / counts.sum()
        entropies.append(float(-(q * np.log2(q)).sum()))
    return float(np.mean(entropies))


LABELS = np.repeat(np.arange(10), 200)  # 2000 samples, 10 balanced classes


# --- iid ---------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    num_samples=st.integers(min_value=1, max_value=500),
    num_partitions=st.integers(min_value=1, max_value=50),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_iid_property(num_samples: int, num_partitions: int, seed: int) -> None:
    if num_samples < num_partitions:
        with pytest.raises(ConfigError):
            iid(num_samples, num_partitions, rng(seed))
        return
    parts = iid(num_samples, num_partitions, rng(seed))
    assert len(parts) == num_partitions
    assert_exact_cover(parts, num_samples)
    sizes = [p.size for p in parts]
    assert max(sizes) - min(sizes) <= 1
    again = iid(num_samples, num_partitions, rng(seed))
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_iid_shuffles_and_depends_on_rng() -> None:
    a = iid(100, 4, rng(1))
    b = iid(100, 4, rng(2))
    assert not np.array_equal(a[0], np.arange(25))
    assert not all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(
    ("num_samples", "num_partitions"), [(10, 0), (3, 4), (-1, 1), (10, 2.5), (10, True)]
)
def test_iid_rejects_bad_arguments(num_samples: int, num_partitions: int) -> None:
    with pytest.raises(ConfigError):
        iid(num_samples, num_partitions, rng())


def test_rng_must_be_a_generator() -> None:
    with pytest.raises(ConfigError, match="Generator"):
        iid(10, 2, 42)  # type: ignore[arg-type]


# --- dirichlet ---------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.1, 1.0, 100.0])
def test_dirichlet_covers_and_respects_min_size(alpha: float) -> None:
    parts = dirichlet(LABELS, 10, alpha, rng(), min_partition_size=20)
    assert len(parts) == 10
    assert_exact_cover(parts, LABELS.size)
    assert min(p.size for p in parts) >= 20


def test_dirichlet_deterministic_under_same_seed() -> None:
    a = dirichlet(LABELS, 8, 0.5, rng(3))
    b = dirichlet(LABELS, 8, 0.5, rng(3))
    c = dirichlet(LABELS, 8, 0.5, rng(4))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_dirichlet_skew_grows_as_alpha_shrinks() -> None:
    entropy = {
        alpha: np.mean(
            [
                mean_label_entropy(LABELS, dirichlet(LABELS, 10, alpha, rng(seed)))
                for seed in range(3)
            ]
        )
        for alpha in (0.05, 0.5, 5.0, 500.0)
    }
    assert entropy[0.05] < entropy[0.5] < entropy[5.0] < entropy[500.0]
    assert entropy[500.0] > 0.98 * np.log2(10)  # near-iid: close to uniform over 10 classes
    assert entropy[0.05] < 1.5


def test_dirichlet_accepts_any_label_type() -> None:
    labels = np.array(["cat", "dog", "eel"] * 40)
    parts = dirichlet(labels, 3, 1.0, rng(), min_partition_size=5)
    assert_exact_cover(parts, labels.size)


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan"), float("inf")])
def test_dirichlet_rejects_bad_alpha(alpha: float) -> None:
    with pytest.raises(ConfigError, match="alpha"):
        dirichlet(LABELS, 4, alpha, rng())


def test_dirichlet_rejects_infeasible_min_size() -> None:
    with pytest.raises(ConfigError, match="at least 300"):
        dirichlet(LABELS, 10, 1.0, rng(), min_partition_size=300)


def test_dirichlet_gives_up_after_bounded_attempts() -> None:
    # 10 partitions of >= 190 out of 2000 samples at tiny alpha: never happens.
    with pytest.raises(ConfigError, match="5 attempts"):
        dirichlet(LABELS, 10, 0.01, rng(), min_partition_size=190, max_attempts=5)


def test_dirichlet_rejects_bad_shapes() -> None:
    with pytest.raises(ConfigError, match="1-D"):
        dirichlet(LABELS.reshape(2, -1), 2, 1.0, rng())
    with pytest.raises(ConfigError, match="empty"):
        dirichlet(np.array([], dtype=np.int64), 2, 1.0, rng(), min_partition_size=0)
    with pytest.raises(ConfigError, match="num_partitions"):
        dirichlet(LABELS, 0, 1.0, rng())


# --- shards ------------------------------------------------------------------------------


def test_shards_cover_and_limit_classes() -> None:
    parts = shards(LABELS, 10, 2, rng())
    assert len(parts) == 10
    assert_exact_cover(parts, LABELS.size)
    assert {p.size for p in parts} == {200}
    # Each shard (100 samples) lies inside one class, so at most 2 classes per partition.
    assert all(np.unique(LABELS[p]).size <= 2 for p in parts)


def test_shards_deterministic_and_uneven_sizes() -> None:
    labels = np.arange(103) % 7
    a = shards(labels, 5, 3, rng(9))
    b = shards(labels, 5, 3, rng(9))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert_exact_cover(a, labels.size)
    sizes = [p.size for p in a]
    assert max(sizes) - min(sizes) <= 3  # shards differ by at most one sample each


def test_shards_rejects_too_few_samples() -> None:
    with pytest.raises(ConfigError, match="shards"):
        shards(np.zeros(5), 3, 2, rng())
    with pytest.raises(ConfigError, match="shards_per_partition"):
        shards(LABELS, 3, 0, rng())


# --- natural -----------------------------------------------------------------------------


def test_natural_groups_by_value_with_sorted_keys() -> None:
    hospitals = np.array(["va", "cleveland", "va", "basel", "cleveland", "va"])
    groups = natural(hospitals)
    assert list(groups) == ["basel", "cleveland", "va"]
    assert all(type(k) is str for k in groups)
    np.testing.assert_array_equal(groups["va"], [0, 2, 5])
    np.testing.assert_array_equal(groups["cleveland"], [1, 4])
    assert_exact_cover(list(groups.values()), hospitals.size)


def test_natural_numeric_and_empty() -> None:
    groups = natural([3, 1, 3, 2])
    assert list(groups) == [1, 2, 3]
    np.testing.assert_array_equal(groups[3], [0, 2])
    assert natural(np.array([], dtype=np.int64)) == {}
    with pytest.raises(ConfigError, match="1-D"):
        natural(np.zeros((2, 2)))


def test_dirichlet_does_not_favour_the_last_partition() -> None:
    """No partition is systematically richer in classes (a rounding-residue bias)."""
    labels = np.repeat(np.arange(10), 180)
    classes = np.zeros(20)
    seeds = 20
    for seed in range(seeds):
        parts = dirichlet(labels, 20, 0.1, np.random.default_rng(seed), min_partition_size=1)
        classes += [len(np.unique(labels[p])) for p in parts]
    mean = classes / seeds
    assert mean[-1] < mean[:-1].mean() + 1.5, mean
