"""A large model's fold, split across threads (core/parallel.py), gives the bits of one
thread: the first update scaled into the sums, later ones folded, an exclusive first
update adopted, read-only ones summed into the mean's encoding, and the division."""

from __future__ import annotations

import threading
from typing import Literal

import numpy as np
import pytest

from consortium.core import parallel
from consortium.core.arrays import Arrays
from consortium.core.message import Content, Message
from consortium.strategy import WeightedMean, aggregate

SHAPES = {"w": (2_003, 7), "b": (5_001,), "s": (3,)}


def _updates(dtype: str, count: int = 4) -> list[Arrays]:
    rng = np.random.default_rng(11)
    return [
        Arrays({k: rng.normal(size=s).astype(dtype) for k, s in SHAPES.items()})
        for _ in range(count)
    ]


def _exclusive(arrays: Arrays) -> Arrays:
    task = Message.create(run_id="r", dst="s", round=1, kind="train", content=Content())
    buffer = bytearray(task.reply(arrays=arrays).to_bytes())
    model = Message.from_bytes(buffer, exclusive=True).content.model  # type: ignore[union-attr]
    assert model is not None and model.exclusive
    return model


def _read_only(arrays: Arrays) -> Arrays:
    out = Arrays({k: v.copy() for k, v in arrays.items()})
    for value in out.values():
        value.setflags(write=False)
    return out


def _mean(updates: list[Arrays], accumulate: Literal["float64", "input"]) -> Arrays:
    mean = WeightedMean(accumulate=accumulate)
    for update, weight in zip(updates, [3.0, 0.5, 7.0, 11.0], strict=True):
        mean.add(update, weight)
    result = mean.result()
    assert result is not None
    return result


@pytest.mark.parametrize("kind", ["plain", "exclusive", "read-only"])
@pytest.mark.parametrize("accumulate", ["float64", "input"])
@pytest.mark.parametrize("dtype", ["f4", "f8"])
def test_a_split_fold_gives_the_bits_of_one_thread(
    kind: str, accumulate: Literal["float64", "input"], dtype: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setattr(aggregate, "BLOCK", 1000)  # "w" folds in 15 blocks, "b" in 6
    convert = {"plain": lambda a: a, "exclusive": _exclusive, "read-only": _read_only}[kind]
    alone = _mean([convert(u) for u in _updates(dtype)], accumulate)

    monkeypatch.setattr(parallel, "SPLIT_MIN_ELEMENTS", 4000)  # "w" and "b", not "s"
    monkeypatch.setattr(parallel, "_threads", lambda: 3)
    threads: set[str] = set()
    inside = parallel._inside

    def spied(*args: object) -> object:
        threads.add(threading.current_thread().name)
        return inside(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(parallel, "_inside", spied)
    split = _mean([convert(u) for u in _updates(dtype)], accumulate)

    assert len(threads) >= 2  # it ran on several threads (which helper takes which varies)
    for name in SHAPES:
        assert split[name].tobytes() == alone[name].tobytes(), name
        assert split[name].dtype == np.dtype(dtype) and split[name].shape == SHAPES[name]


def test_a_fold_keeps_to_the_ranges_its_scratch_was_sized_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The CPUs a process may use can grow between sizing the fold's scratch (one block a
    range) and running the fold: the fold still runs in as many ranges as it sized."""
    monkeypatch.setattr(aggregate, "BLOCK", 1000)
    alone = _mean(_updates("f4"), "input")
    monkeypatch.setattr(parallel, "SPLIT_MIN_ELEMENTS", 4000)
    cpus = iter([2] + [3] * 1000)  # the fold's first look sees 2 CPUs, later ones 3
    monkeypatch.setattr(parallel, "_threads", lambda: next(cpus))
    split = _mean(_updates("f4"), "input")
    for name in SHAPES:
        assert split[name].tobytes() == alone[name].tobytes(), name
