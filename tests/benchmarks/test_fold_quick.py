"""Smoke test of ``benchmarks/fold.py``: both ways run, a model of large arrays is split
across the CPUs there are, and the table and JSON carry every figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from consortium.core.parallel import MAX_SPLIT_THREADS, cpu_count

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "fold.py"


def test_the_fold_benchmark_times_one_thread_and_the_split(tmp_path: Path) -> None:
    out = tmp_path / "fold.json"
    args = ["--sizes", "20M", "--replies", "2", "--repeat", "1", "--json", str(out)]
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| 20M | 2 |" in done.stdout
    (row,) = json.loads(out.read_text())
    assert row["threads"] == min(cpu_count(), MAX_SPLIT_THREADS)  # 8 arrays of 2.5M elements: split
    for mode in ("one thread", "split"):
        assert set(row[mode]) == {"check", "fold", "divide", "total"}
        assert all(seconds > 0 for seconds in row[mode].values())
    assert row["speed_up"] > 0
