"""check_finite: a fast sum test first, the element-wise count only when it fails;
check_update: the global model's layout, and finite values, in one pass;
num_examples: a whole, finite number >= 0, or the reply is rejected with the reason."""

from __future__ import annotations

import re

import numpy as np
import pytest

from consortium.core.arrays import Arrays
from consortium.core.errors import UpdateRejected
from consortium.server.validate import check_finite, check_update, num_examples


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.complex64])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_rejected_with_a_count(dtype: type, bad: float) -> None:
    value = np.ones(1000, dtype=dtype)
    value[[3, 999]] = bad
    with pytest.raises(UpdateRejected, match=r"array 'w' contains 2 NaN/inf"):
        check_finite(Arrays({"w": value}))


def test_plus_and_minus_inf_together_are_rejected() -> None:
    with pytest.raises(UpdateRejected, match="2 NaN/inf"):
        check_finite(Arrays({"w": np.array([np.inf, -np.inf, 1.0], dtype=np.float32)}))


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_finite_values_whose_sum_overflows_are_accepted(dtype: type) -> None:
    big = np.full(64, np.finfo(dtype).max, dtype=dtype)  # the sum is inf; no element is
    with np.errstate(over="ignore"):
        assert not np.isfinite(big.sum())
    check_finite(Arrays({"w": big, "v": -big}))


def test_integer_arrays_and_finite_models_pass() -> None:
    check_finite(Arrays({"steps": np.array([2**62], dtype=np.int64), "w": np.zeros((3, 4))}))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("size", [1, 21, 64, 65])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_small_arrays_checked_in_python_are_rejected_too(
    dtype: type, size: int, bad: float
) -> None:
    value = np.zeros((1, size), dtype=dtype)
    value[0, size - 1] = bad
    with pytest.raises(UpdateRejected, match=r"array 'bias' contains 1 NaN/inf"):
        check_finite(Arrays({"weight": np.ones((1, 20)), "bias": value}))


def test_a_bad_large_array_behind_small_good_ones_is_found() -> None:
    large = np.ones(10_000)
    large[-1] = np.nan
    arrays = Arrays({"a": np.ones(3), "b": np.ones(20, dtype=np.float32), "c": large})
    with pytest.raises(UpdateRejected, match=r"record 'x' array 'c' contains 1 NaN/inf"):
        check_finite(arrays, what="record 'x'")


@pytest.mark.parametrize(
    ("value", "count"), [(0, 0), (100, 100), (100.0, 100), (np.int64(7), 7), (np.float32(3), 3)]
)
def test_num_examples_takes_a_whole_number(value: object, count: int) -> None:
    assert num_examples({"num_examples": value}) == count  # type: ignore[dict-item]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "does not report num_examples"),
        ("100", "must be a number, got str '100'"),
        ([1], "must be a number, got list"),
        (2.5, "must be a whole number, got 2.5"),
        (float("nan"), "must be a whole number, got nan"),
        (float("inf"), "must be a whole number, got inf"),
        (np.float32("-inf"), "must be >= 0, got -inf"),
        (-1, "must be >= 0, got -1"),
    ],
)
def test_num_examples_rejects_anything_else_with_the_reason(value: object, reason: str) -> None:
    metrics = {} if value is None else {"num_examples": value}
    with pytest.raises(UpdateRejected, match=re.escape(reason)):
        num_examples(metrics)  # type: ignore[arg-type]


GLOBAL = Arrays({"w": np.zeros((4, 5)), "b": np.zeros(5, dtype=np.float32), "n": np.zeros(1, int)})


@pytest.mark.parametrize(
    ("update", "reason"),
    [
        (None, "the reply carries no model"),
        (Arrays({"w": np.zeros((4, 5)), "b": np.zeros(5, np.float32)}), "missing ['n']"),
        (Arrays({**GLOBAL, "x": np.zeros(1)}), "unexpected ['x']"),
        (Arrays({**GLOBAL, "w": np.zeros((5, 4))}), "'w' should be float64[4, 5], got float64[5,"),
        (Arrays({**GLOBAL, "b": np.zeros(5)}), "'b' should be float32[5], got float64[5]"),
        (Arrays({"b": GLOBAL["b"], "w": GLOBAL["w"], "n": GLOBAL["n"]}), "in a different order"),
    ],
)
def test_an_update_laid_out_otherwise_than_the_model_is_rejected(
    update: Arrays | None, reason: str
) -> None:
    with pytest.raises(UpdateRejected, match=re.escape(reason)):
        check_update(GLOBAL, update)


@pytest.mark.parametrize("size", [5, 64, 65, 1000])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_an_update_with_a_non_finite_value_is_rejected_whatever_the_arrays_size(
    size: int, bad: float
) -> None:
    model = Arrays({"n": np.zeros(2, int), "w": np.zeros(size), "b": np.zeros(3)})
    update = Arrays({"n": np.ones(2, int), "w": np.ones(size), "b": np.ones(3)})
    check_update(model, update)
    update["w"][size // 2] = bad
    with pytest.raises(UpdateRejected, match=r"^array 'w' contains 1 NaN/inf value\(s\)$"):
        check_update(model, update)


@pytest.mark.filterwarnings("error::RuntimeWarning")  # an overflow warned of fails it
@pytest.mark.parametrize("where", [0, 4_999, 9_999])  # in each of the three ranges
def test_a_large_array_checked_in_parts_on_several_threads_still_finds_nan(
    where: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from consortium.core import parallel

    monkeypatch.setattr(parallel, "SPLIT_MIN_ELEMENTS", 1000)
    monkeypatch.setattr(parallel, "_threads", lambda: 3)
    value = np.ones(10_000, dtype=np.float32)
    check_finite(Arrays({"w": value}))
    value[where] = np.nan
    with pytest.raises(UpdateRejected, match="1 NaN/inf"):
        check_finite(Arrays({"w": value}))
    big = np.full(10_000, np.finfo(np.float32).max, dtype=np.float32)
    check_finite(Arrays({"w": big}))  # each part's sum overflows, quietly, in its own thread
