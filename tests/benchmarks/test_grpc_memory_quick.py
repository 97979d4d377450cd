"""Smoke test of ``benchmarks/grpc_memory.py``: both bare gRPC servers, 4 TLS nodes in 2
processes, 2 rounds of a 64K-parameter model (a few seconds)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "grpc_memory.py"

PHASES = {"connecting", "idle", "rounds", "after", "disconnected"}
FIGURES = {"samples", "rss_max", "rss_last", "in_use_max", "in_use_mean", "free_max", "threads_max"}


def test_both_servers_serve_every_node_every_round(tmp_path: Path) -> None:
    out = tmp_path / "memory.json"
    args = ["--nodes", "4", "--procs", "2", "--rounds", "2", "--params", "64K"]
    quick = ["--poll-seconds", "1", "--settle-seconds", "0.5", "--json", str(out)]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args, *quick],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "| heap in use peak (mean) |" in done.stdout
    rows = json.loads(out.read_text())
    assert [r["server"] for r in rows] == ["sync", "aio"]
    for row in rows:
        assert row["nodes"] == 4 and row["rounds"] == 2 and row["params"] == 64_000
        # every node finished every round, as the nodes report it and as the server counted
        assert row["clients_finished"] == [4, 4]
        assert row["pulls"] == [4, 4] and row["pushes"] == [4, 4]
        assert row["client_errors"] == {}
        assert row["connections"] == 4  # one TLS connection per node
        assert len(row["round_seconds"]) == 2
        assert row["phases"].keys() == PHASES
        for figures in row["phases"].values():
            assert figures.keys() >= FIGURES
            assert figures["samples"] >= 2
            assert 0 < figures["in_use_max"] <= figures["rss_max"]
    sync, aio = rows
    # the synchronous server holds a pool thread per waiting poll, asyncio none
    assert sync["phases"]["idle"]["threads_max"] > aio["phases"]["idle"]["threads_max"]
