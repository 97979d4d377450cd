"""Smoke test of ``benchmarks/overhead.py``: the torch workload trains, each node reports
its own time, and a round's wall time holds its slowest node's work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "overhead.py"


def _run(tmp_path: Path, mode: str) -> dict[str, object]:
    out = tmp_path / "overhead.json"
    args = ["--mode", mode, "--rounds", "3", "--epochs", "1", "--json", str(out)]
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "overhead" in done.stdout
    (row,) = json.loads(out.read_text())["rows"]
    assert isinstance(row, dict)
    return row


def _check(row: dict[str, object]) -> None:
    walls, works = row["walls"], row["works"]
    assert isinstance(walls, list) and isinstance(works, list) and len(walls) == len(works) == 2
    # a round cannot end before its slowest node's own work did
    assert all(0 < work <= wall for wall, work in zip(walls, works, strict=True))
    assert isinstance(row["overhead"], float) and 0 <= row["overhead"] < 1
    assert isinstance(row["accuracy"], float) and row["accuracy"] > 0.5  # it learns digits


def test_simulation_rounds_are_the_nodes_work_and_little_else(tmp_path: Path) -> None:
    _check(_run(tmp_path, "simulation"))


@pytest.mark.slow
def test_deployment_rounds_are_timed_from_the_state_store(tmp_path: Path) -> None:
    _check(_run(tmp_path, "deployment"))
