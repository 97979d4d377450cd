"""Smoke test of ``benchmarks/fleet_load.py --quick``: real server, 20 TLS nodes, 2 rounds
(~10 s, so it stays in the default suite)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "fleet_load.py"

KEYS = {
    "nodes",
    "params",
    "rounds",
    "procs",
    "round_seconds",
    "round_median_s",
    "round_max_s",
    "model_mb",
    "server_peak_rss_mb",
    "rss_target_mb",
    "rss_over_model",
    "rss_target_met",
    "admin_p50_ms",
    "admin_p99_ms",
    "admin_call_count",
    "admin_target_met",
    "status",
    "completed",
    "server_baseline_rss_mb",
    "load_avg",
    "app_processes",
}


def test_quick_run_writes_the_figures(tmp_path: Path) -> None:
    out = tmp_path / "fleet.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-6000:]
    assert "| admin target p99 < 200 ms |" in done.stdout
    figures = json.loads(out.read_text())
    assert figures.keys() >= KEYS
    assert figures["nodes"] == 20 and figures["rounds"] == 2
    assert figures["completed"] is True
    assert len(figures["round_seconds"]) == 2
    assert figures["server_peak_rss_mb"] > 0
    assert 0 < figures["server_baseline_rss_mb"] <= figures["server_peak_rss_mb"]
    assert figures["app_processes"] is False  # the app runs in the node's thread
    assert figures["admin_call_count"] > 0
