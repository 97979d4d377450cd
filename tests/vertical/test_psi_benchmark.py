"""Smoke test of ``benchmarks/psi.py --quick`` with tiny sizes: it runs, checks its own
intersections and writes the JSON report the docs quote."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "psi.py"


def test_psi_benchmark_quick_writes_its_report(tmp_path: Path) -> None:
    out = tmp_path / "psi.json"
    args = [sys.executable, str(SCRIPT), "--quick", "--sizes", "300", "--ops", "50",
            "--json", str(out)]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    rows = {(r["ids"], r["parties"]): r for r in report["psi"]}
    assert set(rows) == {(300, 2), (300, 3)}
    for (n, parties), row in rows.items():
        assert row["shared"] == n // 2
        assert row["bytes_relayed"] > 32 * n * parties  # every point went by at least once
        assert row["floor_bytes"] < row["bytes_relayed"]
    assert report["ops"]["hash_blind_us"] > 0 and "| 300 | 2 | 150 |" in done.stdout
