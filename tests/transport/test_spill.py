"""A reply that waited for the transfer budget is received to disk, then read back into
memory once complete and admitted: the same bytes, its room and file gone after."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from consortium.transport.chunks import Chunk, Reassembler, iter_chunks
from consortium.transport.receive_budget import ReceiveBudget
from consortium.transport.spill import SpillError, SpillStore

PAYLOAD = os.urandom(3 * 1024 * 1024 + 17)


def _chunks() -> list[Chunk]:
    return list(iter_chunks([PAYLOAD], "m", chunk_size=1024 * 1024))


class Waits:
    """``server_wait``: whether a wait is going on."""

    def __init__(self) -> None:
        self.inside = threading.Event()

    @contextmanager
    def __call__(self) -> Iterator[None]:
        self.inside.set()
        try:
            yield
        finally:
            self.inside.clear()


def test_a_reply_that_waited_for_the_budget_is_received_to_disk_and_read_back(
    tmp_path: Path,
) -> None:
    budget = ReceiveBudget(len(PAYLOAD) + 100)
    budget.acquire(1000)  # another reply in flight: this one does not fit
    store = SpillStore(tmp_path / "spill", 10 * len(PAYLOAD), after=0.1)
    waits = Waits()
    rebuild = Reassembler(2**30, budget, server_wait=waits, spill=store)
    for chunk in _chunks():
        rebuild.feed(chunk)  # after 0.1 s on the first chunk, the rest goes to the file
    assert rebuild.reserved == 0 and store.used == len(PAYLOAD) and store.files_open == 1
    assert list((tmp_path / "spill").iterdir()) == []  # unlinked as soon as opened
    assert (tmp_path / "spill").stat().st_mode & 0o777 == 0o700
    landed: list[bytes] = []
    reading = threading.Thread(target=lambda: landed.append(bytes(rebuild.result())))
    reading.start()
    assert waits.inside.wait(5)  # complete, it waits for the budget as the server's own
    time.sleep(0.1)
    assert reading.is_alive() and not landed
    budget.release(1000)
    reading.join(5)
    assert landed == [PAYLOAD]
    assert rebuild.reserved == len(PAYLOAD) and budget.held_bytes == len(PAYLOAD)
    assert store.used == 0 and store.files_open == 0 and not waits.inside.is_set()


def test_a_reply_that_fits_the_budget_never_touches_the_disk(tmp_path: Path) -> None:
    budget = ReceiveBudget(10 * len(PAYLOAD))
    store = SpillStore(tmp_path / "spill", 10 * len(PAYLOAD), after=0.1)
    rebuild = Reassembler(2**30, budget, spill=store)
    for chunk in _chunks():
        rebuild.feed(chunk)
    assert bytes(rebuild.result()) == PAYLOAD and store.used == 0


def test_without_room_on_disk_a_reply_waits_for_the_budget_as_before(tmp_path: Path) -> None:
    budget = ReceiveBudget(len(PAYLOAD) + 100)
    budget.acquire(1000)
    store = SpillStore(tmp_path / "spill", len(PAYLOAD) - 1, after=0.1)
    rebuild = Reassembler(2**30, budget, spill=store)
    first, *rest = _chunks()
    feeding = threading.Thread(target=rebuild.feed, args=(first,), daemon=True)
    feeding.start()
    feeding.join(0.5)
    assert feeding.is_alive() and store.used == 0  # waiting for the budget, in memory
    budget.release(1000)
    feeding.join(5)
    for chunk in rest:
        rebuild.feed(chunk)
    assert bytes(rebuild.result()) == PAYLOAD


def test_a_spilled_reply_cut_short_gives_its_room_back(tmp_path: Path) -> None:
    budget = ReceiveBudget(len(PAYLOAD) + 100)
    budget.acquire(1000)
    store = SpillStore(tmp_path / "spill", 10 * len(PAYLOAD), after=0.1)
    rebuild = Reassembler(2**30, budget, spill=store)
    rebuild.feed(_chunks()[0])
    assert store.used == len(PAYLOAD)
    rebuild.close()  # the stream broke off
    assert store.used == 0 and budget.held_bytes == 1000


def test_a_spilled_file_that_comes_back_short_is_an_error_not_a_payload(tmp_path: Path) -> None:
    store = SpillStore(tmp_path, 100, after=0.1)
    spilled = store.open(10, "a test")
    assert spilled is not None
    spilled.write(b"0123456789")
    spilled.written = 20  # as if the file had lost its end
    with pytest.raises(SpillError, match="ended after 10 of 20 bytes"):
        spilled.read_into(memoryview(bytearray(20)))
    spilled.close()
    assert store.used == 0 and store.open(101, "a test") is None


def test_a_reply_from_a_node_on_a_slow_link_spills_at_once_and_says_so(tmp_path: Path) -> None:
    budget = ReceiveBudget(len(PAYLOAD) + 100)
    budget.acquire(1000)  # another reply in flight: this one does not fit
    store = SpillStore(tmp_path / "spill", 10 * len(PAYLOAD), after=60.0)
    spilled: list[int] = []
    rebuild = Reassembler(
        2**30, budget, spill=store, spill_at_once=True,
        on_spill=lambda: spilled.append(store.files_open),
    )  # fmt: skip
    first, *rest = _chunks()
    started = time.monotonic()
    rebuild.feed(first)
    assert time.monotonic() - started < 5  # not the 60 s a reply from a fast link waits
    assert spilled == [1] and store.used == len(PAYLOAD)  # told once the file is open
    for chunk in rest:
        rebuild.feed(chunk)
    budget.release(1000)
    assert bytes(rebuild.result()) == PAYLOAD and store.files_open == 0


def test_a_reply_from_a_slow_link_that_fits_the_budget_stays_in_memory(tmp_path: Path) -> None:
    budget = ReceiveBudget(10 * len(PAYLOAD))
    store = SpillStore(tmp_path / "spill", 10 * len(PAYLOAD))
    rebuild = Reassembler(2**30, budget, spill=store, spill_at_once=True)
    for chunk in _chunks():
        rebuild.feed(chunk)
    assert bytes(rebuild.result()) == PAYLOAD and store.used == 0
