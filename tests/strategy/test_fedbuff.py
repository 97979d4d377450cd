"""FedBuff's buffer and step against hand-computed numbers and numpy expressions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from consortium.core.arrays import Arrays
from consortium.core.errors import StrategyError, UpdateRejected
from consortium.strategy.fedbuff import AsyncUpdate, FedBuff, polynomial_staleness


def _update(
    node: str,
    y: float | np.ndarray,
    base: float | np.ndarray,
    tau: int,
    n: int = 1,
    **metrics: float,
) -> AsyncUpdate:
    yw, xw = np.broadcast_to(y, (3,)).astype("f8"), np.broadcast_to(base, (3,)).astype("f8")
    return AsyncUpdate(
        node,
        Arrays({"w": yw, "b": yw[:1] * 2}),
        Arrays({"w": xw, "b": xw[:1] * 2}),
        base_version=0,
        staleness=tau,
        num_examples=n,
        metrics=dict(metrics),
    )


def test_step_is_paper_rule_with_hand_numbers() -> None:
    # K = 3, η_g = 0.5; deltas 2, 3, -1 with staleness 0, 3, 8 -> s = 1, 1/2, 1/3
    fb = FedBuff(buffer_size=3, server_lr=0.5)
    current = Arrays({"w": np.full(3, 10.0), "b": np.array([20.0])})
    fb.fold(_update("a", 3.0, 1.0, 0, loss=1.0))  # Δ = 2
    assert not fb.ready()
    fb.fold(_update("b", 5.0, 2.0, 3, loss=2.0))  # Δ = 3
    fb.fold(_update("c", 0.0, 1.0, 8, loss=6.0))  # Δ = -1
    assert fb.ready()
    new, metrics = fb.step(7, current)
    # 10 + 0.5 * (2 + 3/2 - 1/3) / 3 = 10 + 0.5 * 19/18
    np.testing.assert_allclose(new["w"], np.full(3, 10.0 + 0.5 * 19 / 18))
    np.testing.assert_allclose(new["b"], [20.0 + 2 * 0.5 * 19 / 18])
    assert metrics["loss"] == pytest.approx(3.0)
    assert metrics["buffered"] == 3
    assert metrics["staleness_mean"] == pytest.approx(11 / 3)
    assert metrics["staleness_max"] == 8
    assert not fb.ready()  # the buffer emptied


def test_matches_independent_numpy_expression_for_every_option() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 3)).astype("f4")
    bases = [rng.normal(size=(4, 3)).astype("f4") for _ in range(5)]
    ys = [rng.normal(size=(4, 3)).astype("f4") for _ in range(5)]
    taus = [0, 1, 4, 2, 9]
    ns = [5, 1, 12, 3, 7]
    s = np.array([(1 + t) ** -0.5 for t in taus])
    deltas = np.stack([y.astype("f8") - b.astype("f8") for y, b in zip(ys, bases, strict=True)])
    for weighting, normalize in [
        ("uniform", "buffer"),
        ("uniform", "staleness"),
        ("examples", "buffer"),
        ("examples", "staleness"),
    ]:
        fb = FedBuff(buffer_size=5, server_lr=0.7, weighting=weighting, normalize=normalize)
        for i in range(5):
            fb.fold(
                AsyncUpdate(
                    str(i), Arrays({"w": ys[i]}), Arrays({"w": bases[i]}), 0, taus[i], ns[i]
                )
            )
        new, _ = fb.step(3, Arrays({"w": x}))
        w = np.array(ns, dtype="f8") if weighting == "examples" else np.ones(5)
        denom = w.sum() if normalize == "buffer" else (w * s).sum()
        expected = x.astype("f8") + 0.7 * np.tensordot(w * s, deltas, axes=1) / denom
        np.testing.assert_allclose(new["w"], expected.astype("f4"), rtol=1e-6, atol=1e-6)
        assert new["w"].dtype == np.float32


def test_configurable_staleness_function() -> None:
    constant = FedBuff(buffer_size=2, staleness=lambda tau: 1.0)
    constant.fold(_update("a", 1.0, 0.0, 0))
    constant.fold(_update("b", 3.0, 0.0, 99))
    new, _ = constant.step(0, Arrays({"w": np.zeros(3), "b": np.zeros(1)}))
    np.testing.assert_allclose(new["w"], np.full(3, 2.0))  # plain mean of the deltas

    s = polynomial_staleness(1.0)
    assert [s(0), s(1), s(3)] == [1.0, 0.5, 0.25]
    with pytest.raises(StrategyError, match="exponent"):
        polynomial_staleness(-1.0)


def test_max_staleness_rejects_naming_the_bound() -> None:
    fb = FedBuff(buffer_size=2, max_staleness=3)
    fb.fold(_update("a", 1.0, 0.0, 3))
    with pytest.raises(UpdateRejected, match="staleness 4 exceeds FedBuff's max_staleness 3"):
        fb.fold(_update("b", 1.0, 0.0, 4))
    assert not fb.ready()  # the rejected update was not counted


def test_step_on_empty_buffer_and_zero_weights_fail_clearly() -> None:
    fb = FedBuff(buffer_size=1, weighting="examples")
    current = Arrays({"w": np.zeros(3), "b": np.zeros(1)})
    with pytest.raises(StrategyError, match="empty buffer"):
        fb.step(0, current)
    fb.fold(_update("a", 1.0, 0.0, 0, n=0))
    with pytest.raises(StrategyError, match="total weight 0"):
        fb.step(0, current)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"buffer_size": 0}, "buffer_size"),
        ({"concurrency": 0}, "concurrency"),
        ({"server_lr": 0.0}, "server_lr"),
        ({"server_lr": math.nan}, "server_lr"),
        ({"weighting": "votes"}, "weighting"),
        ({"normalize": "sum"}, "normalize"),
        ({"max_staleness": -1}, "max_staleness"),
    ],
)
def test_invalid_settings_are_refused(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(StrategyError, match=match):
        FedBuff(**kwargs)  # type: ignore[arg-type]


def test_configure_task_picks_an_idle_node_by_seed_only() -> None:
    fb = FedBuff(train_config=lambda v: {"version": v})
    model = Arrays({"w": np.zeros(2)})
    assert fb.configure_task(0, model, [], np.random.default_rng(0)) is None
    picks = [
        fb.configure_task(4, model, order, np.random.default_rng(5))
        for order in (["c", "a", "b"], ["b", "c", "a"])
    ]
    assert picks[0] is not None and picks[1] is not None
    assert picks[0].node_id == picks[1].node_id  # the order idle nodes are listed in is irrelevant
    assert picks[0].config == {"version": 4} and picks[0].arrays is model
    chosen = {
        t.node_id
        for seed in range(40)
        if (t := fb.configure_task(0, model, ["a", "b", "c"], np.random.default_rng(seed)))
    }
    assert chosen == {"a", "b", "c"}


def test_state_dict_resumes_mid_buffer() -> None:
    current = Arrays({"w": np.full(3, 1.0), "b": np.ones(1)})
    updates = [_update(str(i), float(i), 0.5, i, loss=float(i)) for i in range(3)]
    straight = FedBuff(buffer_size=3)
    for u in updates:
        straight.fold(u)
    expected, expected_metrics = straight.step(2, current)

    first = FedBuff(buffer_size=3)
    first.fold(updates[0])
    first.fold(updates[1])
    resumed = FedBuff(buffer_size=3)
    resumed.load_state_dict(first.state_dict())
    resumed.fold(updates[2])
    got, metrics = resumed.step(2, current)
    assert got.equals(expected)
    assert metrics == expected_metrics
    with pytest.raises(StrategyError, match="keys"):
        resumed.load_state_dict({"count": 1})
