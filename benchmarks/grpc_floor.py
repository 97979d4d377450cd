"""The floor under benchmarks/transport.py: the same bytes over bare gRPC + mutual TLS.

    python benchmarks/grpc_floor.py                    # 100M params (381 MB) x 2 nodes
    python benchmarks/grpc_floor.py --sizes 10M,100M --nodes 2,8 --json floor.json

One server process and N client processes on loopback, Consortium's gRPC
options and 4 MiB messages, certificates from ``consortium ca``. A round is
what a FedAvg round moves: every client downloads the model (the server
yields one pre-built message over and over: no encoding, no checksum), then
uploads as many bytes (the server only counts them; at most
``--concurrent-uploads`` at once, like the transfer budget); the next round
starts when every upload has ended. No Consortium code runs on the data path,
so what this costs is what gRPC (HTTP/2, TLS, its copies) and the kernel cost
on this machine: Consortium's round time minus this is what Consortium adds.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from consortium.transport.chunks import CHUNK_SIZE
from consortium.transport.grpc_options import GRPC_OPTIONS
from transport import make_pki
from transport_report import parse_size, size_label

SERVICE = "floor.Floor"


def _read(path: Path) -> bytes:
    return path.read_bytes()


def _messages(block: bytes, total: int) -> list[bytes]:
    """``total`` bytes as gRPC messages of at most one chunk (4 MiB), as Consortium cuts them."""
    full, rest = divmod(total, CHUNK_SIZE)
    return [block] * full + ([block[:rest]] if rest else [])


def serve(pki: Path, port_file: Path, nodes: int, total: int, concurrent: int) -> None:
    """Serve rounds: Down(round) waits until every upload of the previous round ended.

    At the end of each round the server appends its CPU seconds so far to
    ``port_file`` + ".cpu" (one JSON line per round)."""
    cpu_log = port_file.with_suffix(".cpu")
    messages = _messages(os.urandom(CHUNK_SIZE), total)
    uploads = threading.Semaphore(concurrent)
    done = threading.Condition()
    finished: dict[int, int] = {}

    def down(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        rnd = int(request)
        with done:
            done.wait_for(lambda: rnd == 0 or finished.get(rnd - 1, 0) >= nodes)
        yield from messages

    def up(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        rnd = -1
        with uploads:
            for raw in requests:
                if rnd < 0:
                    rnd = int(raw[:16])
        with done:
            finished[rnd] = finished.get(rnd, 0) + 1
            if finished[rnd] == nodes:
                with cpu_log.open("a") as fh:
                    fh.write(json.dumps({"round": rnd, "cpu": time.process_time()}) + "\n")
            done.notify_all()
        return b"ok"

    handlers = {
        "Down": grpc.unary_stream_rpc_method_handler(down),
        "Up": grpc.stream_unary_rpc_method_handler(up),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32), options=GRPC_OPTIONS)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    creds = pki / "credentials" / "localhost"
    port = server.add_secure_port(
        "127.0.0.1:0",
        grpc.ssl_server_credentials(
            [(_read(creds / "localhost.key"), _read(creds / "localhost.crt"))],
            root_certificates=_read(creds / "ca.crt"),
            require_client_auth=True,
        ),
    )
    server.start()
    port_file.write_text(str(port))
    server.wait_for_termination()


def client(pki: Path, name: str, port: int, total: int, rounds: int) -> None:
    """Download then upload ``total`` bytes per round; print each round's end time."""
    creds = pki / "credentials" / name
    channel = grpc.secure_channel(
        f"127.0.0.1:{port}",
        grpc.ssl_channel_credentials(
            _read(creds / "ca.crt"), _read(creds / f"{name}.key"), _read(creds / f"{name}.crt")
        ),
        options=[*GRPC_OPTIONS, ("grpc.ssl_target_name_override", "localhost")],
    )
    down = channel.unary_stream(f"/{SERVICE}/Down")
    up = channel.stream_unary(f"/{SERVICE}/Up")
    body = _messages(os.urandom(CHUNK_SIZE), total)
    for rnd in range(rounds):
        received = sum(len(m) for m in down(str(rnd).encode()))
        assert received == total
        tag = str(rnd).encode().ljust(16)
        up(iter([tag + body[0][16:], *body[1:]]))
        print(
            json.dumps({"round": rnd, "end": time.time(), "cpu": time.process_time()}), flush=True
        )


def run(params: int, nodes: int, rounds: int, concurrent: int, root: Path) -> dict[str, Any]:
    total = params * 4
    pki = make_pki(Path(tempfile.mkdtemp(dir=root)), nodes)
    port_file = pki / "port"
    me = [sys.executable, str(Path(__file__).resolve())]
    common = ["--pki", str(pki), "--total", str(total), "--rounds", str(rounds)]
    server = subprocess.Popen(
        [*me, "--serve", "--port-file", str(port_file), "--nodes", str(nodes),
         "--concurrent-uploads", str(concurrent), *common]
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text()):
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("the floor server did not start")
            time.sleep(0.05)
        port = port_file.read_text()
        clients = [
            subprocess.Popen(
                [*me, "--client", f"n{i}", "--port", port, *common],
                stdout=subprocess.PIPE,
                text=True,
            )
            for i in range(1, nodes + 1)
        ]
        outputs = [c.communicate(timeout=60 + 60 * rounds)[0] for c in clients]
    finally:
        server.kill()
        server.wait()
    records = [json.loads(line) for out in outputs for line in out.splitlines()]
    server_cpu = {
        r["round"]: r["cpu"]
        for r in map(json.loads, port_file.with_suffix(".cpu").read_text().splitlines())
    }
    ends = [max(r["end"] for r in records if r["round"] == i) for i in range(rounds)]
    cpus = [
        server_cpu[i] + sum(r["cpu"] for r in records if r["round"] == i) for i in range(rounds)
    ]
    node_cpus = [sum(r["cpu"] for r in records if r["round"] == i) / nodes for i in range(rounds)]
    seconds = [b - a for a, b in itertools.pairwise(ends)]
    cpu = [b - a for a, b in itertools.pairwise(cpus)]
    server = [server_cpu[i + 1] - server_cpu[i] for i in range(rounds - 1)]
    node = [b - a for a, b in itertools.pairwise(node_cpus)]
    return {
        "params": params,
        "nodes": nodes,
        "rounds": rounds,
        "concurrent_uploads": concurrent,
        "round_seconds": seconds,
        "s_per_round": statistics.median(seconds),
        "cpu_s_per_round": statistics.median(cpu),
        "server_cpu_s_per_round": statistics.median(server),
        "node_cpu_s_per_round": statistics.median(node),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100M")
    ap.add_argument("--nodes", default="2")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--concurrent-uploads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    # internal: the server and client processes
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--client", help=argparse.SUPPRESS)
    ap.add_argument("--pki", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--port-file", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--total", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        serve(args.pki, args.port_file, int(args.nodes), args.total, args.concurrent_uploads)
        return 0
    if args.client:
        client(args.pki, args.client, args.port, args.total, args.rounds)
        return 0
    root = Path(tempfile.mkdtemp(prefix="consortium-floor-"))
    rows = [
        run(parse_size(s), int(n), args.rounds, args.concurrent_uploads, root)
        for s in args.sizes.split(",")
        for n in args.nodes.split(",")
    ]
    print(f"\n### Bare gRPC + mutual TLS, {args.rounds} rounds, loopback\n")
    print(
        "| params | model MB | nodes | s/round | CPU s/round | server CPU s | node CPU s "
        "| rounds 2.. s |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    for row in rows:
        rest = ", ".join(f"{s:.2f}" for s in row["round_seconds"])
        print(
            f"| {size_label(row['params'])} | {row['params'] * 4 / 2**20:.0f} | {row['nodes']} "
            f"| {row['s_per_round']:.3f} | {row['cpu_s_per_round']:.2f} "
            f"| {row['server_cpu_s_per_round']:.2f} | {row['node_cpu_s_per_round']:.2f} | {rest} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
