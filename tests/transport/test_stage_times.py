"""Stage timers: off by default; on, they count every chunk's checksum and copy, per process."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from consortium.transport import stage_times
from consortium.transport.chunks import iter_chunks, reassemble


def _round_trip(size: int) -> None:
    payload = os.urandom(size)
    result = reassemble(iter_chunks(payload, "m", chunk_size=1000), max_bytes=10**6)
    assert result is not None and bytes(result[1]) == payload


def test_off_by_default_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stage_times, "TIMES", stage_times.StageTimes(""))
    _round_trip(5000)
    stage_times.flush(force=True)
    assert stage_times.TIMES.snapshot() == {}
    assert list(tmp_path.iterdir()) == []


def test_on_counts_each_stage_and_appends_snapshots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stage_times, "TIMES", stage_times.StageTimes(str(tmp_path)))
    stage_times.set_role("server")
    _round_trip(5000)
    stage_times.flush(force=True)
    _round_trip(2500)
    stage_times.flush(force=True)
    lines = (tmp_path / f"server-{os.getpid()}.jsonl").read_text().splitlines()
    first, last = (json.loads(x) for x in lines)
    assert first["time"] <= last["time"]
    for name in ("send.crc32", "recv.crc32", "recv.copy"):
        assert first["stages"][name]["bytes"] == 5000
        assert first["stages"][name]["calls"] == 5
        assert last["stages"][name]["bytes"] == 7500
        assert last["stages"][name]["calls"] == 8
        assert last["stages"][name]["seconds"] > 0.0 and last["stages"][name]["cpu"] >= 0.0
