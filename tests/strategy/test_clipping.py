"""Norm-bounded clipping: numbers by hand, pass-through under the bound, streaming kept."""

from __future__ import annotations

import weakref
from collections.abc import Iterator

import numpy as np
import pytest

from consortium.core.arrays import Arrays
from consortium.core.errors import StrategyError
from consortium.strategy import FedAvg, TrainReply
from consortium.strategy.clipping import ClippedUpdates, clip_update
from consortium.strategy.robust import CoordinateMedian, RobustFedAvg


def test_clip_by_hand_across_arrays() -> None:
    current = Arrays({"a": np.array([1.0, 1.0], dtype="f4"), "b": np.array([2.0])})
    # delta (3, 0 | 4): norm 5, bound 2 -> scaled by 2/5 -> (1.2, 0 | 1.6)
    update = Arrays({"a": np.array([4.0, 1.0], dtype="f4"), "b": np.array([6.0])})
    out = clip_update(current, update, 2.0)
    np.testing.assert_allclose(out["a"], [2.2, 1.0], rtol=1e-6)
    np.testing.assert_allclose(out["b"], [3.6], rtol=1e-12)
    assert out["a"].dtype == np.float32 and out["b"].dtype == np.float64
    norm = np.sqrt(sum(np.sum((out[k] - current[k]).astype("f8") ** 2) for k in current))
    assert norm == pytest.approx(2.0, rel=1e-6)


def test_updates_within_the_bound_pass_unchanged() -> None:
    current = Arrays({"w": np.zeros(4)})
    update = Arrays({"w": np.array([0.6, 0.8, 0.0, 0.0])})  # norm exactly 1
    assert clip_update(current, update, 1.0) is update
    assert clip_update(current, update, 1.5) is update


def _reply(node: str, w: np.ndarray, n: int) -> TrainReply:
    return TrainReply(node, Arrays({"w": w}), n, {"loss": 1.0}, {"extra": Arrays({"c": w * 0})})


def test_clipped_fedavg_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=6)
    ys = [x + rng.normal(scale=s, size=6) for s in (0.1, 3.0, 0.2, 10.0)]
    ns = [5, 1, 2, 7]
    strategy = ClippedUpdates(FedAvg(), max_norm=1.0)
    result, metrics = strategy.aggregate_train(
        1,
        Arrays({"w": x}),
        (_reply(str(i), y, n) for i, (y, n) in enumerate(zip(ys, ns, strict=True))),
    )
    clipped = [x + (y - x) * min(1.0, 1.0 / float(np.linalg.norm(y - x))) for y in ys]
    np.testing.assert_allclose(result["w"], np.average(clipped, axis=0, weights=ns), rtol=1e-12)
    expected_count = sum(np.linalg.norm(y - x) > 1.0 for y in ys)
    assert metrics["clipped_updates"] == expected_count == 2
    assert metrics["loss"] == pytest.approx(1.0)


def test_no_clipping_gives_the_base_result_bit_for_bit() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=5)
    replies = [_reply(str(i), x + 0.01 * rng.normal(size=5), 3) for i in range(4)]
    plain, _ = FedAvg().aggregate_train(1, Arrays({"w": x}), iter(replies))
    wrapped, metrics = ClippedUpdates(FedAvg(), 100.0).aggregate_train(
        1, Arrays({"w": x}), iter(replies)
    )
    assert wrapped.equals(plain) and metrics["clipped_updates"] == 0


def test_clipping_streams_one_reply_at_a_time() -> None:
    """Wrapping FedAvg keeps its O(model) fold: a reply is dropped before the next is drawn."""
    refs: list[weakref.ref[np.ndarray]] = []
    dropped_in_time: list[bool] = []

    def replies() -> Iterator[TrainReply]:
        for i in range(30):
            w = np.full(3, float(i))
            refs.append(weakref.ref(w))
            yield TrainReply(str(i), Arrays({"w": w}), 1, {})
            del w
            if i >= 1:
                dropped_in_time.append(refs[i - 1]() is None)

    result, _ = ClippedUpdates(FedAvg(), 1e6).aggregate_train(
        1, Arrays({"w": np.zeros(3)}), replies()
    )
    assert len(dropped_in_time) == 29 and all(dropped_in_time)
    np.testing.assert_allclose(result["w"], np.full(3, 14.5))


def test_wrapper_delegates_and_mirrors_the_base() -> None:
    base = RobustFedAvg(CoordinateMedian(), fraction_train=0.5)
    wrapped = ClippedUpdates(base, 2.0)
    assert wrapped.needs_all_updates and not ClippedUpdates(FedAvg(), 1.0).needs_all_updates
    nodes = [str(i) for i in range(8)]
    a = wrapped.configure_train(1, Arrays(), nodes, np.random.default_rng(3))
    b = base.configure_train(1, Arrays(), nodes, np.random.default_rng(3))
    assert [i.node_id for i in a] == [i.node_id for i in b]
    settings = wrapped.settings()
    assert settings["strategy"] == "ClippedUpdates" and settings["max_norm"] == 2.0
    assert settings["base"] == "RobustFedAvg" and settings["base.rule"] == "median"
    assert settings["base.fraction_train"] == 0.5


def test_records_travel_with_clipped_replies() -> None:
    seen: list[TrainReply] = []

    class Spy(FedAvg):
        def aggregate_train(self, round, current, replies):  # type: ignore[no-untyped-def]
            got = list(replies)
            seen.extend(got)
            return super().aggregate_train(round, current, got)

    w = np.array([30.0, 40.0])
    ClippedUpdates(Spy(), 5.0).aggregate_train(1, Arrays({"w": np.zeros(2)}), [_reply("a", w, 1)])
    np.testing.assert_allclose(seen[0].arrays["w"], [3.0, 4.0])
    assert "extra" in seen[0].records and seen[0].node_id == "a"


def test_invalid_bound_is_refused() -> None:
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(StrategyError, match="max_norm"):
            ClippedUpdates(FedAvg(), bad)
