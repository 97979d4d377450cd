"""FedAvg against an independent numpy expression, sampling, and streaming memory."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import Literal

import numpy as np
import pytest

from consortium.core.arrays import Arrays
from consortium.core.errors import RoundFailed, StrategyError, UpdateRejected
from consortium.strategy import (
    FedAvg,
    TrainReply,
    WeightedMean,
    aggregate,
    sample_nodes,
    weighted_metrics,
)


def _reply(node: str, w: np.ndarray, n: int, **metrics: float) -> TrainReply:
    return TrainReply(node, Arrays({"w": w, "b": w[:1] * 2}), n, dict(metrics))


def test_weighted_mean_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    ws = [rng.normal(size=(3, 4)).astype("f4") for _ in range(5)]
    ns = [10, 1, 7, 0, 3]
    result, metrics = FedAvg().aggregate_train(
        1,
        Arrays({"w": ws[0], "b": ws[0][:1]}),
        (_reply(str(i), w, n, loss=float(i)) for i, (w, n) in enumerate(zip(ws, ns, strict=True))),
    )
    expected = np.average(np.stack(ws).astype("f8"), axis=0, weights=ns).astype("f4")
    np.testing.assert_allclose(result["w"], expected, rtol=1e-6)
    assert result["w"].dtype == np.float32
    assert metrics["loss"] == pytest.approx(sum(i * n for i, n in enumerate(ns)) / sum(ns))


@pytest.mark.parametrize("accumulate", ["float64", "input"])
@pytest.mark.parametrize(("block", "count"), [(8, 6), (1 << 20, 6), (1 << 20, 150)])
@pytest.mark.parametrize("dtype", ["f2", "f4", "f8"])
def test_weighted_mean_is_the_sequential_fold_bit_for_bit(
    block: int, count: int, dtype: str, accumulate: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small arrays (one multiply and one add through a kept view of the scratch),
    arrays folded in several blocks, and a small model's updates folded in stages of
    :data:`aggregate.STAGE_ROWS` (150 updates: two whole stages and part of a third) all
    give exactly ``acc += weight * x`` in order, the product computed in the sum's
    dtype: float64 or, with ``accumulate="input"``, the input's. (Not in the input's
    dtype, then widened: numpy 1 and 2 promote a Python float with a 0-d array
    differently, and CI's floor job runs numpy 1.)"""
    monkeypatch.setattr(aggregate, "BLOCK", block)
    rng = np.random.default_rng(1)
    shapes = {"w": (5, 7), "b": (3,), "s": ()}
    updates = [
        Arrays({k: rng.normal(size=s).astype(dtype) for k, s in shapes.items()})
        for _ in range(count)
    ]
    weights = [3.0, 0.5, 7.0, 0.0, 11.0, 2.5, *rng.uniform(0, 300, count - 6).tolist()]
    mean = WeightedMean(accumulate=accumulate)  # type: ignore[arg-type]
    for update, weight in zip(updates, weights, strict=True):
        mean.add(update, weight)
    result = mean.result()
    assert result is not None
    sum_dtype = np.dtype(np.float64 if accumulate == "float64" else dtype)
    for name in shapes:
        acc = np.asarray(updates[0][name], sum_dtype) * sum_dtype.type(weights[0])
        for update, weight in zip(updates[1:], weights[1:], strict=True):
            acc = acc + np.asarray(update[name], sum_dtype) * sum_dtype.type(weight)
        expected = (acc / sum_dtype.type(sum(weights))).astype(dtype)
        assert result[name].tobytes() == expected.tobytes(), name
        assert result[name].shape == shapes[name]


@pytest.mark.parametrize("size", [3, 10_000])  # folded in stages, and one by one
def test_a_float16_models_mean_holds_weights_past_float16s_range(size: int) -> None:
    """A node with more than 65,504 examples: its weight is not rounded to float16 (where it
    would be inf, and the mean NaN); the sums are float64, the mean float16."""
    mean = WeightedMean()
    for value, examples in ((1.0, 100_000.0), (2.0, 300_000.0), (3.0, 0.0)):
        mean.add(Arrays({"w": np.full(size, value, np.float16)}), examples)
    result = mean.result()
    assert result is not None and result["w"].dtype == np.float16
    assert result["w"].tolist() == [1.75] * size


def test_a_small_models_update_unlike_the_first_is_rejected_and_the_fold_goes_on() -> None:
    mean = WeightedMean()
    mean.add(Arrays({"w": np.ones(3), "b": np.ones(1)}), 1.0)
    for bad in (
        Arrays({"w": np.ones(3)}),
        Arrays({"w": np.ones(4), "b": np.ones(1)}),
        Arrays({"w": np.ones(3, np.float32), "b": np.ones(1)}),
    ):
        with pytest.raises(UpdateRejected, match="does not match the first update"):
            mean.add(bad, 1.0)
    mean.add(Arrays({"w": np.full(3, 3.0), "b": np.full(1, 3.0)}), 1.0)
    result = mean.result()
    assert result is not None and mean.count == 2
    assert result["w"].tolist() == [2.0, 2.0, 2.0] and result["b"].tolist() == [2.0]


def test_all_zero_weights_fail_clearly() -> None:
    with pytest.raises(RoundFailed, match="positive number of examples"):
        FedAvg().aggregate_train(1, Arrays(), iter([_reply("a", np.ones(2), 0)]))


def test_streaming_holds_one_update_at_a_time() -> None:
    """FedAvg folds each reply and drops it before asking for the next: O(model) memory."""
    refs: list[weakref.ref[np.ndarray]] = []
    dropped_in_time: list[bool] = []

    def replies() -> Iterator[TrainReply]:
        for i in range(50):
            w = np.full(3, float(i))
            refs.append(weakref.ref(w))
            yield TrainReply(str(i), Arrays({"w": w}), 1, {})
            del w
            # back here, FedAvg asks for reply i+1: reply i (folded) must already be gone
            dropped_in_time.append(refs[i]() is None)

    result, _ = FedAvg().aggregate_train(1, Arrays(), replies())
    assert len(dropped_in_time) == 50 and all(dropped_in_time)
    np.testing.assert_allclose(result["w"], np.full(3, 24.5))


def test_weighted_mean_refuses_bad_weights() -> None:
    acc = WeightedMean()
    with pytest.raises(Exception, match="weight"):
        acc.add(Arrays({"w": np.ones(2)}), float("nan"))


def test_sampling_fraction_and_minimum() -> None:
    nodes = [f"n{i}" for i in range(10)]
    rng = np.random.default_rng(1)
    assert len(sample_nodes(nodes, 0.3, 1, 1, rng)) == 3
    assert len(sample_nodes(nodes, 0.1, 4, 1, rng)) == 4
    assert sample_nodes(nodes, 1.0, 1, 1, rng) == sorted(nodes)
    with pytest.raises(StrategyError, match="at least 11"):
        sample_nodes(nodes, 1.0, 1, 11, rng)


def test_sampling_is_independent_of_node_order() -> None:
    nodes = [f"n{i}" for i in range(20)]
    a = sample_nodes(nodes, 0.25, 1, 1, np.random.default_rng(5))
    b = sample_nodes(list(reversed(nodes)), 0.25, 1, 1, np.random.default_rng(5))
    assert a == b


def test_config_callback_per_round() -> None:
    strategy = FedAvg(train_config=lambda rnd: {"lr": 0.1 / rnd, "round": rnd})
    instr = strategy.configure_train(4, Arrays(), ["a", "b"], np.random.default_rng(0))
    assert [i.config for i in instr] == [{"lr": 0.025, "round": 4}] * 2


def test_invalid_settings_named() -> None:
    with pytest.raises(StrategyError, match="fraction_train"):
        FedAvg(fraction_train=1.5)
    with pytest.raises(StrategyError, match="min_train_nodes"):
        FedAvg(min_train_nodes=-1)


def test_weighted_metrics_skips_missing() -> None:
    out = weighted_metrics([(1, {"a": 1.0}), (3, {"a": 3.0, "b": 2.0})])
    assert out == {"a": 2.5, "b": 2.0}


def test_state_dict_round_trip() -> None:
    s = FedAvg()
    s.load_state_dict(s.state_dict())
    with pytest.raises(StrategyError):
        s.load_state_dict({"unexpected": 1})


@pytest.mark.parametrize("accumulate", ["float64", "input"])
def test_an_exclusive_first_update_becomes_the_sum_with_identical_results(
    accumulate: Literal["float64", "input"],
) -> None:
    from consortium.core.message import Content, Message

    rng = np.random.default_rng(7)
    updates = [
        Arrays({"w": rng.normal(size=(300, 7)).astype("f4"), "b": rng.normal(size=5)})
        for _ in range(3)
    ]
    weights = [3.0, 11.0, 0.5]

    def received(arrays: Arrays) -> Arrays:
        task = Message.create(run_id="r", dst="s", round=1, kind="train", content=Content())
        wire = task.reply(arrays=arrays)
        buffer = bytearray(wire.to_bytes())  # writable, and nobody else's
        model = Message.from_bytes(buffer, exclusive=True).content.model  # type: ignore[union-attr]
        assert model is not None and model.exclusive
        return model

    plain, reused = WeightedMean(accumulate=accumulate), WeightedMean(accumulate=accumulate)
    first = received(updates[0])
    address = first["b"].ctypes.data
    for i, (update, weight) in enumerate(zip(updates, weights, strict=True)):
        plain.add(update, weight)
        reused.add(first if i == 0 else received(update), weight)
    expected, got = plain.result(), reused.result()
    assert expected is not None and got is not None and got.equals(expected)
    assert got["b"].ctypes.data == address  # float64 "b" lives on in the first message
    assert updates[0]["w"][0, 0] != 0 and not first.exclusive


def test_arrays_that_are_not_exclusive_are_never_written() -> None:
    update = Arrays({"w": np.arange(4.0)})
    mean = WeightedMean()
    mean.add(update, 2.0)
    assert update["w"].tolist() == [0.0, 1.0, 2.0, 3.0]
    from consortium.core.message import Content, Message

    task = Message.create(run_id="r", dst="s", round=1, kind="train", content=Content())
    wire = task.reply(arrays=update)
    readonly = Message.from_bytes(bytes(wire.to_bytes()), exclusive=True)
    assert readonly.content is not None and not readonly.content.model.exclusive  # type: ignore[union-attr]


def test_a_mean_summed_in_its_own_dtypes_is_laid_out_as_its_encoding() -> None:
    """Updates that cannot be adopted (read-only, as a server's app folds them from shared
    memory), summed in their own dtypes: the mean's arrays lie in one buffer laid out as
    its wire encoding, sent as it is (one part), with the values of the plain fold."""
    rng = np.random.default_rng(3)
    updates = [
        Arrays({"w": rng.normal(size=(40, 7)).astype("f4"), "n": np.arange(5, dtype="f4")})
        for _ in range(3)
    ]
    for update in updates:
        for array in update.values():
            array.setflags(write=False)
    mean = WeightedMean(accumulate="input")
    for update, weight in zip(updates, [2.0, 1.0, 5.0], strict=True):
        mean.add(update, weight)
    result = mean.result()
    assert result is not None
    (part,) = result.wire_parts()
    assert bytes(part) == result.to_bytes()
    expected = (updates[0]["w"] * 2.0 + updates[1]["w"] * 1.0 + updates[2]["w"] * 5.0) / 8.0
    assert result["w"].tobytes() == expected.astype("f4").tobytes()
