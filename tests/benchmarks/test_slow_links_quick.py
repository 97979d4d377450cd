"""``benchmarks/slow_links.py``: its throttling proxy passes every byte, in order, at the
link's rate and latency; and the benchmark runs a deployed round through it (small)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SCRIPT = BENCHMARKS / "slow_links.py"
sys.path.insert(0, str(BENCHMARKS))
from slow_links import ThrottledProxy  # noqa: E402
from wan_link import BURST  # noqa: E402


def _echo_server() -> tuple[socket.socket, int]:
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return listener, listener.getsockname()[1]


def test_the_proxy_passes_every_byte_at_the_links_rate_and_latency() -> None:
    listener, port = _echo_server()
    proxy = ThrottledProxy(("127.0.0.1", port), rate=1_000_000, latency=0.05)
    payload = os.urandom(BURST + 300_000)  # after the burst, 0.3 s at 1 MB/s each way
    try:
        with socket.create_connection(("127.0.0.1", proxy.port)) as conn:
            started = time.monotonic()
            threading.Thread(target=conn.sendall, args=(payload,), daemon=True).start()
            received = bytearray()
            while len(received) < len(payload):
                data = conn.recv(65536)
                assert data, "the proxy closed the connection early"
                received += data
            took = time.monotonic() - started
    finally:
        proxy.close()
        listener.close()
    assert bytes(received) == payload
    # both directions pay: at least 0.3 s of rate and 2 x 50 ms of latency, overlapped
    assert 0.35 <= took < 5.0, took


@pytest.mark.slow  # ~25 s: a whole deployment; the proxy itself is tested above
def test_the_benchmark_runs_a_round_through_slow_links(tmp_path: Path) -> None:
    out = tmp_path / "slow.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--params", "1M", "--nodes", "2", "--rounds", "1",
         "--rate-mbit", "100", "--latency-ms", "5", "--configs", "spilled",
         "--json", str(out)],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["status"] for r in rows] == ["finished"]
    assert len(rows[0]["round_seconds"]) == 1 and rows[0]["transfers_cut_off"] == 0
    assert "| spilled | finished |" in done.stdout
