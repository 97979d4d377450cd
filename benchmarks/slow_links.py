"""Slow links inside the transport: a deployed round when each node's TCP connection to
the server crosses a throttling proxy, with and without replies received to disk.

    python benchmarks/slow_links.py                                   # 25M params, 4 nodes
    python benchmarks/slow_links.py --params 25M --nodes 4 --rate-mbit 20 --json out.json

``benchmarks/wan.py`` throttles outside gRPC (the node waits, then sends at loopback
speed), so its server never sees a slow transfer. Here every node reaches the server
through a TCP proxy of this process (:class:`ThrottledProxy`): each direction of each
connection is a token bucket of ``--rate-mbit`` (burst 64 kB, ``wan_link.TokenBucket``)
with ``--latency-ms`` added, so gRPC, TLS and HTTP/2 flow control run over a slow link as
they would over a real one, heartbeats and long-polls included.

Each configuration starts ``consortium server`` (mutual TLS) with ``--transfer-budget-mb``
(default 128: one 100 MB reply at a time, as the default 256 is for a 100M-parameter
model), N x ``consortium node`` and a run of ``benchmarks/transport_app`` (FedAvg over a
model of ``--params`` float32 parameters), and reports each round's seconds, how many
replies the server received to disk (its log's "to disk" lines; how many of them at once,
their node's link known to be slow) and the peak PSS of the server's process tree:

* ``waiting``: ``--spill-mb 0``: each upload waits for the budget, so for the one before;
* ``spilled``: the defaults: a reply that does not fit the budget is received to disk,
  at once from a node whose link the server measured under ``--slow-link-mbit`` (every
  node here, from its first task on), after ``--spill-after`` seconds from others.
"""

from __future__ import annotations

import argparse
import json
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_processes import (  # noqa: E402
    ADMIN,
    Sampler,
    consortium_cmd,
    spawn,
    stop,
    wait_port,
    wait_run,
)
from consortium.transport.stall import BYTES_PER_MBIT  # noqa: E402
from transport import APP_DIR, make_pki  # noqa: E402
from transport_report import parse_size, size_label  # noqa: E402
from wan_link import BURST, TokenBucket  # noqa: E402

#: bytes read from a socket at a time (then paid for, then sent on)
PIECE = 64 * 1024


class ThrottledProxy:
    """Forwards connections on a loopback port to ``target``, each direction of each
    connection through its own token bucket of ``rate`` bytes a second, ``latency``
    seconds later."""

    def __init__(self, target: tuple[str, int], rate: float, latency: float) -> None:
        self.target, self.rate, self.latency = target, rate, latency
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for src, dst in ((client, upstream), (upstream, client)):
                self._pipe(src, dst)

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        """One direction: read, pay the bucket, then send ``latency`` later, in order."""
        bucket = TokenBucket(self.rate, BURST)
        line: queue.Queue[tuple[float, bytes]] = queue.Queue()

        def read() -> None:
            try:
                while data := src.recv(PIECE):
                    bucket.take(len(data))
                    line.put((time.monotonic() + self.latency, data))
            except OSError:
                pass
            line.put((0.0, b""))

        def send() -> None:
            try:
                while True:
                    due, data = line.get()
                    if not data:
                        break
                    time.sleep(max(0.0, due - time.monotonic()))
                    dst.sendall(data)
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                src.close()

        threading.Thread(target=read, daemon=True).start()
        threading.Thread(target=send, daemon=True).start()


def run(name: str, args: argparse.Namespace, pki: Path, extra: list[str]) -> dict[str, Any]:
    """One configuration: its rounds' seconds and the replies the server spilled."""
    cli = consortium_cmd()
    work = Path(tempfile.mkdtemp(prefix=f"slow-{name}-", dir=pki))
    allow = [a for i in range(1, args.nodes + 1) for a in ("--allow", f"n{i}")]
    procs: list[subprocess.Popen[bytes]] = []
    proxies: list[ThrottledProxy] = []
    result: dict[str, Any] = {"config": name, "server_options": extra}
    sampler = Sampler()  # the server's tree
    sampling = False
    try:
        server = spawn(
            [*cli, "server", "--address", "127.0.0.1:0", "--credentials",
             str(pki / "credentials" / "localhost"), "--ca-dir", str(pki / "ca"), *allow,
             "--workdir", str(work / "srv"), "--port-file", str(work / "port"),
             "--offline-after", "60", "--transfer-budget-mb", str(args.budget_mb), *extra],
            work / "server.out", work,
        )  # fmt: skip
        procs.append(server)
        sampler.add("server", server.pid)
        sampler.start()
        sampling = True
        port = wait_port(work / "port", server, 60)
        rate = args.rate_mbit * BYTES_PER_MBIT
        for i in range(1, args.nodes + 1):
            proxy = ThrottledProxy(("127.0.0.1", port), rate, args.latency_ms / 1000)
            proxies.append(proxy)
            procs.append(spawn(
                [*cli, "node", "--server", f"127.0.0.1:{proxy.port}", "--credentials",
                 str(pki / "credentials" / f"n{i}"), "--app", str(APP_DIR),
                 "--work-dir", str(work / f"n{i}"), "--config", f"partition-id={i - 1}"],
                work / f"n{i}.out", work,
            ))  # fmt: skip
        config = {"params": args.params, "min-nodes": args.nodes, "num-rounds": args.rounds}
        started = subprocess.run(
            [*cli, "run", "start", str(APP_DIR), "--server", f"127.0.0.1:{port}",
             "--credentials", str(pki / "credentials" / ADMIN),
             *(a for k, v in config.items() for a in ("--run-config", f"{k}={v}"))],
            capture_output=True, text=True, timeout=120, cwd=work, check=True,
        )  # fmt: skip
        run_id = started.stdout.strip().splitlines()[-1]
        info = wait_run(pki, f"127.0.0.1:{port}", run_id, args.timeout, procs)
        result["status"] = info["status"] if info else "timed out"
        result["round_seconds"] = [float(r["seconds"]) for r in (info or {}).get("rounds", [])]
        log = (work / "srv" / "server.log").read_text(errors="replace")
        result["replies_spilled"] = log.count("to disk: ")
        result["spilled_at_once"] = log.count("to disk: the transfer budget is full and its")
        result["transfers_cut_off"] = log.count("cut off ")
    finally:
        if sampling:
            sampler.stop()
            result["server_pss_mb"] = round(sampler.peak_pss["server"] / 2**20)
            parts = sampler.peak_pss_parts.get("server", {})
            result["server_pss_parts_mb"] = {k: round(v / 2**20) for k, v in parts.items()}
        stop(procs)
        for proxy in proxies:
            proxy.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=parse_size, default=parse_size("25M"))
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rate-mbit", type=float, default=20.0, help="each link, each direction")
    ap.add_argument("--latency-ms", type=float, default=25.0, help="added one way")
    ap.add_argument("--budget-mb", type=int, default=128, help="--transfer-budget-mb")
    ap.add_argument("--configs", default="waiting,spilled")
    ap.add_argument("--timeout", type=float, default=1800.0, help="per configuration, s")
    ap.add_argument("--keep", action="store_true", help="keep the work folders (logs)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    options = {"waiting": ["--spill-mb", "0"], "spilled": []}
    root = Path(tempfile.mkdtemp(prefix="consortium-slow-links-"))
    rows = []
    try:
        make_pki(root, args.nodes)
        for name in args.configs.split(","):
            row = run(name, args, root, options[name])
            print(f"[slow_links] {json.dumps(row)}", file=sys.stderr, flush=True)
            rows.append(row)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    model_mb = args.params * 4 / 1e6
    print(f"\n### Slow links: {size_label(args.params)} params ({model_mb:.0f} MB) x "
          f"{args.nodes} nodes, {args.rate_mbit:g} Mbit/s and {args.latency_ms:g} ms each "
          f"way per node, budget {args.budget_mb} MB\n")  # fmt: skip
    print("| config | status | seconds per round | replies to disk | cut off | server PSS MB |")
    print("|---|---|---|---:|---:|---:|")
    for row in rows:
        seconds = ", ".join(f"{s:.1f}" for s in row.get("round_seconds", []))
        print(f"| {row['config']} | {row.get('status')} | {seconds} | "
              f"{row.get('replies_spilled')} | {row.get('transfers_cut_off')} | "
              f"{row.get('server_pss_mb')} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)},
                                         "rows": rows}, indent=2, default=str))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
