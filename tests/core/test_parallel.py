"""run_split: ranges cut where asked, worked on by several threads at once, results in
order; inline for small arrays and inside a range; errors raised once all ranges ended;
a forked child gets a pool of its own."""

from __future__ import annotations

import itertools
import os
import threading
import time

import pytest

from consortium.core import parallel
from consortium.core.parallel import run_split, split_parts, split_ranges

CUTS = [(10, 3, 1), (100, 4, 8), (7, 4, 8), (2**20 + 5, 3, 2**18), (5, 8, 1)]


@pytest.mark.parametrize(("size", "parts", "align"), CUTS)
def test_ranges_cover_everything_once_cut_at_the_alignment(
    size: int, parts: int, align: int
) -> None:
    ranges = split_ranges(size, parts, align)
    assert ranges[0][0] == 0 and ranges[-1][1] == size
    assert all(a < b for a, b in ranges) and len(ranges) <= parts
    assert all(b == c for (_, b), (c, _) in itertools.pairwise(ranges))
    assert all(b % align == 0 for _, b in ranges[:-1])
    lengths = [b - a for a, b in ranges]
    assert max(lengths) - min(lengths) <= align  # about equal


def _split_everything(monkeypatch: pytest.MonkeyPatch, threads: int = 3) -> None:
    monkeypatch.setattr(parallel, "SPLIT_MIN_ELEMENTS", 1)
    monkeypatch.setattr(parallel, "SPLIT_ALIGN", 1)
    monkeypatch.setattr(parallel, "_threads", lambda: threads)


def test_a_large_array_is_worked_on_by_several_threads_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _split_everything(monkeypatch)
    started = threading.Barrier(3, timeout=10)  # only passes if the 3 ranges run together
    seen: list[tuple[int, int, int, str]] = []

    def work(start: int, stop: int, index: int) -> int:
        seen.append((start, stop, index, threading.current_thread().name))
        started.wait()
        return stop - start

    assert run_split(30, work) == [10, 10, 10]
    assert sorted(s[:3] for s in seen) == [(0, 10, 0), (10, 20, 1), (20, 30, 2)]
    names = {index: name for _, _, index, name in seen}
    assert names[0] == threading.current_thread().name  # the caller takes the first range
    assert len(set(names.values())) == 3


def test_small_arrays_and_one_cpu_stay_on_the_callers_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    me = threading.current_thread().name
    names: list[str] = []

    def work(start: int, stop: int, index: int) -> None:
        names.append(threading.current_thread().name)

    run_split(parallel.SPLIT_MIN_ELEMENTS - 1, work)
    monkeypatch.setattr(parallel, "_threads", lambda: 1)
    run_split(parallel.SPLIT_MIN_ELEMENTS * 4, work)
    assert names == [me, me]
    assert run_split(0, work) == []


def test_a_split_asked_for_inside_a_range_stays_on_its_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each pool thread busy with an outer range: inner splits there would wait for threads
    that wait for them."""
    _split_everything(monkeypatch, threads=2)

    def inner(start: int, stop: int, index: int) -> str:
        return threading.current_thread().name

    def outer(start: int, stop: int, index: int) -> list[str]:
        assert split_parts(100) == 1
        return run_split(100, inner)

    results = run_split(40, outer)
    assert [len(r) for r in results] == [1, 1]
    assert results[0] != results[1]


def test_where_no_helper_thread_can_start_the_work_stays_on_the_callers_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An app process under an address-space limit may start no thread: its folds still
    run, on one thread, rather than fail."""
    _split_everything(monkeypatch)
    monkeypatch.setattr(parallel, "_HELPERS", None)  # none started yet in this process

    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    me = threading.current_thread().name
    names: list[str] = []

    def work(start: int, stop: int, index: int) -> int:
        names.append(threading.current_thread().name)
        return stop - start

    assert split_parts(30) == 1
    assert run_split(30, work) == [30]
    assert names == [me]


def test_the_first_error_is_raised_once_every_range_has_ended(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _split_everything(monkeypatch)
    ended: list[int] = []

    def work(start: int, stop: int, index: int) -> None:
        if index == 0:
            raise ValueError("range 0 failed")
        time.sleep(0.2)
        ended.append(index)

    with pytest.raises(ValueError, match="range 0 failed"):
        run_split(30, work)
    assert sorted(ended) == [1, 2]  # nothing still writes after the call returned


def test_a_forked_child_splits_with_threads_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    _split_everything(monkeypatch, threads=2)
    assert run_split(10, lambda a, b, i: b - a) == [5, 5]  # the parent's pool exists now
    pid = os.fork()
    if pid == 0:  # the child: the parent's pool threads did not come along
        code = 0 if run_split(10, lambda a, b, i: b - a) == [5, 5] else 1
        os._exit(code)
    deadline = time.monotonic() + 20
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    if done[0] == 0:  # waiting for threads that are not there
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the child's split never ended")
    assert os.waitstatus_to_exitcode(done[1]) == 0


def test_most_caps_the_ranges(monkeypatch: pytest.MonkeyPatch) -> None:
    _split_everything(monkeypatch)
    assert run_split(30, lambda a, b, i: (a, b, i), most=2) == [(0, 15, 0), (15, 30, 1)]
    assert run_split(30, lambda a, b, i: i, most=1) == [0]
