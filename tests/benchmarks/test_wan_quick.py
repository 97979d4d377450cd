"""Smoke test of ``benchmarks/wan.py --quick`` (about 15 s quiet): every codec runs in a real
deployment over throttled links, and what crossed the links shrinks as each codec says; and
the benchmark's link throttle and its split of a round, on their own."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SCRIPT = BENCHMARKS / "wan.py"
sys.path.insert(0, str(BENCHMARKS))
from wan_link import BURST, ThrottledLink, TokenBucket  # noqa: E402
from wan_report import SPLIT, round_split  # noqa: E402


def test_token_bucket_sends_at_its_rate_after_the_burst() -> None:
    bucket = TokenBucket(rate=1_000_000, burst=BURST)
    started = time.monotonic()
    assert bucket.take(BURST) == 0.0  # the burst is banked
    waited = bucket.take(200_000)  # then 1 MB/s: 0.2 s
    elapsed = time.monotonic() - started
    assert 0.199 <= waited <= elapsed < 5.0


class _Inner:
    """Stands in for the FleetClient: one 100 kB task, then nothing."""

    max_message_bytes = 7

    def __init__(self) -> None:
        self.tasks = [memoryview(bytes(100_000))]
        self.pushed = 0

    def pull_task(self, wait: float) -> Any:
        return self.tasks.pop() if self.tasks else None

    def push_result(self, parts: Any, message_id: str) -> tuple[bool, str]:
        self.pushed += 1
        return True, "ok"


def test_throttled_link_pays_latency_and_rate_per_message() -> None:
    inner = _Inner()
    link = ThrottledLink(inner, rate=1_000_000, latency=0.05)  # type: ignore[arg-type]
    link.max_message_bytes = 99
    assert inner.max_message_bytes == 99
    started = time.monotonic()
    assert link.pull_task(1.0) is not None
    assert link.pull_task(1.0) is None  # an empty poll costs nothing
    assert link.push_result([b"x" * 150_000, memoryview(b"y" * 50_000)], "m") == (True, "ok")
    elapsed = time.monotonic() - started
    assert (link.stats.bytes_down, link.stats.bytes_up, link.stats.messages) == (
        100_000,
        200_000,
        2,
    )
    # each direction banks 64 kiB, the rest goes at 1 MB/s: down 34 ms, up 134 ms; + 2 x 50 ms
    assert 0.1 + 0.034 + 0.134 - 0.005 <= link.stats.seconds <= elapsed < 5.0
    assert inner.pushed == 1


def test_round_split_follows_the_last_reply_and_adds_up_to_the_round() -> None:
    # two rounds of two nodes; round 1 is left out (it starts the app processes)
    evals = [(9.0, 10.0), (14.8, 15.0)]
    starts = [0.0, 10.0]
    # node 0 is fast; node 1's reply reaches the server last, at 14.6
    tasks = [[(0.1, 1.0), (10.1, 11.0)], [(0.1, 1.0), (10.2, 11.2)]]
    replies = [[(2.0, 3.0), (12.0, 13.0)], [(2.0, 3.0), (13.0, 14.6)]]
    app = [[(0.5, 0.6), (0.5, 0.6)], [(0.5, 0.6), (1.2, 1.5)]]
    split = round_split(starts, evals, tasks, replies, app)
    assert list(split) == list(SPLIT)
    expected = [0.2, 1.0, 1.2, 0.3, 0.3, 1.6, 0.2, 0.2]
    assert list(split.values()) == pytest.approx(expected)
    assert sum(split.values()) == pytest.approx(evals[1][1] - starts[1])


@pytest.mark.slow  # a benchmark (~15 s quiet, more loaded); the codecs' correctness is
# tests/client/test_compression.py and tests/deploy/test_compression_deployed.py
def test_quick_run_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "wan.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "| codec (up / down) | rounds to target |" in done.stdout
    report = json.loads(out.read_text())
    rows = {r["codec"]: r for r in report["rows"]}
    assert list(rows) == ["none", "fp16", "int8", "topk"]
    none = rows["none"]
    assert none["rounds"] == report["settings"]["rounds"] == 4
    assert none["rounds_to_target"] is not None and none["seconds_to_target"] > 0
    params = report["settings"]["params"]
    # float32 both ways: the model's bytes plus the message's headers
    assert 4 * params < none["bytes_up_per_round"] < 4 * params + 8192
    assert 4 * params < none["bytes_down_per_round"] < 4 * params + 8192

    def ratio(codec: str, direction: str) -> float:
        key = f"bytes_{direction}_per_round"
        return float(rows[codec][key] / none[key])

    for direction in ("up", "down"):
        assert 0.45 < ratio("fp16", direction) < 0.55  # 2 bytes a value
        assert 0.22 < ratio("int8", direction) < 0.30  # 1 byte + a scale per 1024
    assert ratio("topk", "up") < 0.06  # 1 % of the values, 8 bytes each, + headers
    assert 0.22 < ratio("topk", "down") < 0.30  # the model goes down as int8
    # the link's own time follows the bytes; latency (50 ms a message) is the floor
    assert rows["int8"]["link_seconds_per_round"] < none["link_seconds_per_round"]
    for row in rows.values():
        assert row["link_seconds_per_round"] >= 2 * 0.05 - 1e-9
        # where a round went: every part measured, the links at least their latency
        assert list(row["split"]) == list(SPLIT)
        assert min(row["split"]["down link"], row["split"]["up link"]) >= 0.05 - 1e-9
        assert row["split"]["compute"] > 0
        assert 0 <= row["best_accuracy"] <= 1
        assert row["seconds_per_round"] > 0
