"""Robust rules against hand-computed values and brute-force references; RobustFedAvg."""

from __future__ import annotations

import numpy as np
import pytest

from consortium.core.arrays import Arrays
from consortium.core.errors import RoundFailed, StrategyError
from consortium.strategy import FedAvg, TrainReply
from consortium.strategy.robust import (
    Bulyan,
    CoordinateMedian,
    Krum,
    MultiKrum,
    RobustFedAvg,
    RobustRule,
    TrimmedMean,
    flatten_arrays,
    unflatten_arrays,
)


def _col(*values: float) -> np.ndarray:
    """Updates of one coordinate each: an (n, 1) matrix."""
    return np.array(values, dtype=np.float64).reshape(-1, 1)


# -- brute-force references (loops over Python lists, no shared code) ------------------
def _sq(a: np.ndarray, b: np.ndarray) -> float:
    return float(sum((float(x) - float(y)) ** 2 for x, y in zip(a, b, strict=True)))


def _krum_order(points: list[np.ndarray], f: int) -> list[int]:
    n = len(points)
    k = min(max(n - f - 2, 1), n - 1)
    scores = []
    for i in range(n):
        d = sorted(_sq(points[i], points[j]) for j in range(n) if j != i)
        scores.append(sum(d[:k]))
    return sorted(range(n), key=lambda i: (scores[i], i))


def _bulyan_reference(u: np.ndarray, f: int) -> np.ndarray:
    remaining = list(range(len(u)))
    chosen = []
    for _ in range(len(u) - 2 * f):
        best = _krum_order([u[i] for i in remaining], f)[0]
        chosen.append(remaining.pop(best))
    beta = len(chosen) - 2 * f
    out = []
    for c in range(u.shape[1]):
        column = [float(u[i, c]) for i in chosen]
        med = float(np.median(column))
        closest = sorted(range(len(column)), key=lambda j: (abs(column[j] - med), j))[:beta]
        out.append(sum(column[j] for j in closest) / beta)
    return np.array(out)


# -- flattening ---------------------------------------------------------------------------
def test_flatten_round_trip_keeps_names_shapes_and_dtypes() -> None:
    model = Arrays(
        {"w": np.arange(6, dtype="f4").reshape(2, 3), "b": np.array([1.5]), "n": np.array([3, 4])}
    )
    flat = flatten_arrays(model)
    assert flat.dtype == np.float64
    np.testing.assert_array_equal(flat, [0, 1, 2, 3, 4, 5, 1.5, 3, 4])
    back = unflatten_arrays(flat + np.array([0, 0, 0, 0, 0, 0, 0, 0.6, -0.4]), model)
    assert back.signature() == model.signature()
    np.testing.assert_array_equal(back["n"], [4, 4])  # integers are rounded, not truncated
    with pytest.raises(StrategyError, match="cannot fill"):
        unflatten_arrays(flat[:-1], model)


# -- coordinate-wise rules -------------------------------------------------------------
def test_median_by_hand() -> None:
    u = np.array([[1.0, 10.0], [2.0, -5.0], [100.0, 0.0]])
    np.testing.assert_array_equal(CoordinateMedian().aggregate(u), [2.0, 0.0])
    # even n: the mean of the two middle values
    np.testing.assert_array_equal(CoordinateMedian().aggregate(_col(20, 1, 10, 3)), [6.5])


def test_trimmed_mean_by_hand_and_against_sorted_columns() -> None:
    assert TrimmedMean(trim=1).aggregate(_col(4, 100, 1, 3, 2))[0] == pytest.approx(3.0)
    assert TrimmedMean(beta=0.2).aggregate(_col(4, 100, 1, 3, -50))[0] == pytest.approx(8 / 3)
    u = np.random.default_rng(0).normal(size=(9, 5))
    expected = [float(np.mean(sorted(u[:, c])[2:7])) for c in range(5)]
    np.testing.assert_allclose(TrimmedMean(trim=2).aggregate(u), expected, rtol=1e-12)
    # beta = 0.25 of n = 9 trims floor(2.25) = 2 from each side: the same values
    np.testing.assert_allclose(TrimmedMean(beta=0.25).aggregate(u), expected, rtol=1e-12)


def test_trimmed_mean_refuses_what_it_cannot_trim() -> None:
    with pytest.raises(StrategyError, match=r"trimmed mean .*n=4, f=2"):
        TrimmedMean(trim=2).aggregate(np.zeros((4, 3)))
    with pytest.raises(StrategyError, match="beta"):
        TrimmedMean(beta=0.5)
    with pytest.raises(StrategyError, match="exactly one"):
        TrimmedMean(beta=0.1, trim=1)


# -- Krum family ---------------------------------------------------------------------
POINTS = _col(0, 1, 2, 10, 11)  # f = 1: each score sums the n - f - 2 = 2 nearest


def test_krum_by_hand() -> None:
    # scores: 0 -> 1+4=5, 1 -> 1+1=2, 2 -> 1+4=5, 10 -> 1+64=65, 11 -> 1+81=82
    rule = Krum(f=1)
    np.testing.assert_array_equal(rule.aggregate(POINTS), [1.0])
    assert rule.last_selected == [1]


def test_multi_krum_by_hand() -> None:
    rule = MultiKrum(f=1, m=3)  # 1, then the tie 0/2 in reply order
    np.testing.assert_array_equal(rule.aggregate(POINTS), [1.0])
    assert rule.last_selected == [1, 0, 2]
    default = MultiKrum(f=1)  # m = n - f = 4: adds 10 (score 65)
    np.testing.assert_array_equal(default.aggregate(POINTS), [13 / 4])


def test_multi_krum_matches_brute_force() -> None:
    rng = np.random.default_rng(3)
    u = rng.normal(size=(11, 7))
    u[[2, 8]] += 5.0  # two outliers
    order = _krum_order(list(u), f=2)
    rule = MultiKrum(f=2, m=6)
    np.testing.assert_allclose(rule.aggregate(u), u[order[:6]].mean(axis=0), rtol=1e-12)
    assert rule.last_selected == order[:6]
    assert not {2, 8} & set(rule.last_selected)


def test_krum_family_refuses_outside_its_guarantee() -> None:
    with pytest.raises(StrategyError, match=r"krum needs n > 2f \+ 2, got n=6, f=2"):
        Krum(f=2).aggregate(np.zeros((6, 2)))
    with pytest.raises(StrategyError, match=r"multi_krum averages at most n - f = 4, got m=5"):
        MultiKrum(f=1, m=5).aggregate(np.zeros((5, 2)))
    with pytest.raises(StrategyError, match="f "):
        Krum(f=-1)


# -- Bulyan -----------------------------------------------------------------------------
def test_bulyan_by_hand() -> None:
    # n = 7, f = 1: theta = 5 chosen by iterated Krum, then beta = 3 closest to the median.
    # Krum picks 2 (score 10), then 1 (tie with 3, first), 3, 0 (tie with 4), 4.
    u = np.array([[0.0, 0.0], [1, 10], [2, 20], [3, 30], [4, 40], [100, -5], [-50, 7]])
    rule = Bulyan(f=1)
    result = rule.aggregate(u)
    assert rule.last_selected == [2, 1, 3, 0, 4]
    # per coordinate: the 3 of {2,1,3,0,4} (x) / {20,10,30,0,40} (y) closest to 2 / 20
    np.testing.assert_array_equal(result, [2.0, 20.0])


def test_bulyan_matches_brute_force() -> None:
    rng = np.random.default_rng(11)
    u = rng.normal(size=(12, 6))
    u[[0, 5]] = rng.normal(loc=4.0, size=(2, 6))
    np.testing.assert_allclose(Bulyan(f=2).aggregate(u), _bulyan_reference(u, 2), rtol=1e-12)


def test_bulyan_refuses_outside_its_guarantee() -> None:
    with pytest.raises(StrategyError, match=r"bulyan needs n >= 4f \+ 3, got n=10, f=2"):
        Bulyan(f=2).aggregate(np.zeros((10, 3)))


@pytest.mark.parametrize(
    "rule",
    [CoordinateMedian(), TrimmedMean(trim=2), Krum(f=2), MultiKrum(f=2), Bulyan(f=2)],
    ids=lambda r: r.name,
)
def test_every_rule_resists_two_large_outliers(rule: RobustRule) -> None:
    rng = np.random.default_rng(5)
    honest = 1.0 + 0.01 * rng.normal(size=(9, 4))
    u = np.vstack([honest, np.full((2, 4), 1e6)])
    assert np.abs(rule.aggregate(u) - 1.0).max() < 0.05
    assert np.abs(u.mean(axis=0) - 1.0).min() > 1e4  # the plain mean does not


# -- RobustFedAvg ---------------------------------------------------------------------
def _replies(models: list[np.ndarray], counts: list[int]) -> list[TrainReply]:
    return [
        TrainReply(str(i), Arrays({"w": m[:4].reshape(2, 2), "b": m[4:]}), n, {"loss": float(i)})
        for i, (m, n) in enumerate(zip(models, counts, strict=True))
    ]


def test_robust_fedavg_applies_the_rule_to_updates_and_keeps_dtypes() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=5).astype("f4")
    current = Arrays({"w": x[:4].reshape(2, 2), "b": x[4:]})
    ys = [rng.normal(size=5).astype("f4") for _ in range(5)]
    strategy = RobustFedAvg(CoordinateMedian())
    result, metrics = strategy.aggregate_train(3, current, iter(_replies(ys, [1, 2, 3, 4, 5])))
    deltas = np.stack(ys).astype("f8") - x.astype("f8")
    expected = (x.astype("f8") + np.median(deltas, axis=0)).astype("f4")
    assert result.signature() == current.signature()
    np.testing.assert_array_equal(result["w"].reshape(-1), expected[:4])
    np.testing.assert_array_equal(result["b"], expected[4:])
    assert metrics["loss"] == pytest.approx((0 * 1 + 1 * 2 + 2 * 3 + 3 * 4 + 4 * 5) / 15)


def test_robust_fedavg_ignores_example_counts() -> None:
    rng = np.random.default_rng(4)
    current = Arrays({"w": np.zeros((2, 2)), "b": np.zeros(1)})
    ys = [rng.normal(size=5) for _ in range(7)]
    strategy = RobustFedAvg(MultiKrum(f=1))
    a, _ = strategy.aggregate_train(1, current, _replies(ys, [1] * 7))
    b, _ = strategy.aggregate_train(1, current, _replies(ys, [1000, 1, 1, 1, 1, 1, 1]))
    assert a.equals(b)


def test_robust_fedavg_inherits_fedavg_and_records_its_rule() -> None:
    strategy = RobustFedAvg(Bulyan(f=1), fraction_train=0.5, train_config={"lr": 0.1})
    assert isinstance(strategy, FedAvg) and strategy.needs_all_updates
    nodes = [f"n{i}" for i in range(10)]
    mine = strategy.configure_train(1, Arrays(), nodes, np.random.default_rng(9))
    plain = FedAvg(fraction_train=0.5).configure_train(1, Arrays(), nodes, np.random.default_rng(9))
    assert [i.node_id for i in mine] == [i.node_id for i in plain]
    assert mine[0].config == {"lr": 0.1}
    settings = strategy.settings()
    assert settings["strategy"] == "RobustFedAvg"
    assert settings["rule"] == "bulyan" and settings["f"] == 1
    assert "weighting" not in settings


def test_robust_fedavg_refuses_weighting_and_empty_rounds() -> None:
    with pytest.raises(StrategyError, match="weighting"):
        RobustFedAvg(CoordinateMedian(), weighting="examples")
    with pytest.raises(RoundFailed, match="no update"):
        RobustFedAvg(CoordinateMedian()).aggregate_train(1, Arrays({"w": np.zeros(1)}), iter([]))


def test_rule_errors_surface_at_aggregation_with_the_round_size() -> None:
    current = Arrays({"w": np.zeros((2, 2)), "b": np.zeros(1)})
    replies = _replies([np.ones(5)] * 4, [1] * 4)
    with pytest.raises(StrategyError, match="n=4, f=1"):
        RobustFedAvg(Krum(f=1)).aggregate_train(1, current, replies)
