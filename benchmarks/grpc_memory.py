"""Bare gRPC's memory with many long-polling TLS connections: synchronous vs asyncio server.

    python benchmarks/grpc_memory.py                         # 200 nodes, 1M params, both servers
    python benchmarks/grpc_memory.py --server sync --nodes 20,100,200 --repeat 2 --json m.json

Issue 10 asks whether the native heap ``consortium server`` grows by while it
serves 200 nodes (~0.75 MB per node served, docs/benchmarks.md) belongs to gRPC
with that many TLS connections moving a model each, or to its synchronous server
(a thread per call in progress). This measures bare gRPC, no Consortium code on
the data path, as ``grpc_floor.py`` does: one server process and the nodes as
threads of a few client processes on loopback, each node with its own channel
and certificate (its own TLS connection), mutual TLS and Consortium's gRPC
options, the HTTP/2 stream window the server would give that many nodes
(``fairness.stream_window``) and its malloc settings (``tune_malloc`` and
``HeapTrimmer``; ``--malloc default`` for glibc's own). The methods:

* ``Pull`` (server-streaming), the long-poll: it waits up to ``--poll-seconds``
  for the round to open (empty otherwise: the node polls again), then, holding
  one of ``--concurrent-sends`` slots, streams the model as pre-built
  4 MiB-chunked messages;
* ``Push`` (client-streaming): the node uploads as many bytes; the server only
  counts them, reading at most ``--concurrent-uploads`` at once (the others wait
  before their first byte, as the real server's receive slots do).

Variants to tell where the memory goes: ``--directions down|up`` (move the model
one way only), ``--grant-uploads`` (a node asks for its upload slot with a
unary ``Grant`` before it opens its push: no push waits open),
``--train-seconds`` (spread the uploads), ``--plaintext`` (no TLS),
``--stream-window-kib`` and ``--server-option`` (gRPC's own settings). Results:
docs/benchmarks.md, "Bare gRPC's memory with 200 connections".

``--server sync`` is ``grpc.server`` with a thread pool sized so every waiting
poll has a thread (nodes + 16); ``aio`` is ``grpc.aio.server`` with async
handlers (no thread per call). The server samples itself every 0.2 s (RSS and
threads from /proc/self/status, glibc ``mallinfo2``: in use = ``uordblks`` +
``hblkhd``, free = ``fordblks``) through its phases: connecting, idle (every
node polling, before the first round), rounds, after (nodes still polling) and
disconnected (every client process gone).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import grpc

from consortium.transport.ca import CertificateAuthority
from consortium.transport.fairness import RECEIVES_AT_ONCE, SENDS_AT_ONCE, stream_window
from consortium.transport.grpc_options import GRPC_OPTIONS
from grpc_memory_server import MB, SERVICE, Plan, chunks_of, read_file, serve
from transport_report import parse_size, size_label


# -- the nodes -----------------------------------------------------------------------------------
def clients(plan: Plan, pki: Path, names: list[str], port: int) -> None:
    """One thread and one channel per node; prints {name: rounds finished, or the error}."""
    chunks = chunks_of(plan.up)
    finished: dict[str, int | str] = {}

    def node(name: str) -> None:
        creds = pki / "credentials" / name
        address = f"127.0.0.1:{port}"
        if plan.plaintext:  # a pool of its own: channels alike would share one connection
            own = [*GRPC_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
            channel = grpc.insecure_channel(address, options=own)
        else:
            channel = grpc.secure_channel(
                address,
                grpc.ssl_channel_credentials(
                    read_file(creds / "ca.crt"),
                    read_file(creds / f"{name}.key"),
                    read_file(creds / f"{name}.crt"),
                ),
                options=[*GRPC_OPTIONS, ("grpc.ssl_target_name_override", "localhost")],
            )
        pull = channel.unary_stream(f"/{SERVICE}/Pull")
        grant = channel.unary_unary(f"/{SERVICE}/Grant")
        push = channel.stream_unary(f"/{SERVICE}/Push")
        done = 0
        try:
            for rnd in range(plan.rounds + 1):
                tag = f"{name}:{rnd}".encode()
                got: list[bytes] = []
                while not got:
                    got = list(pull(tag, timeout=600))
                if rnd == plan.rounds:
                    break
                received = sum(len(m) for m in got)
                if received != plan.down:
                    raise ValueError(f"round {rnd}: {received} bytes, not {plan.down}")
                del got
                time.sleep(random.uniform(0, plan.train_s))  # its training
                if plan.grant:
                    grant(tag, timeout=600)
                push(iter([tag, *chunks]), timeout=600)
                done += 1
            finished[name] = done
        except (grpc.RpcError, ValueError) as exc:
            finished[name] = f"after {done} rounds: {exc}"
        finally:
            channel.close()

    threads = [threading.Thread(target=node, args=(name,)) for name in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(finished), flush=True)


# -- the benchmark -------------------------------------------------------------------------------
def make_pki(root: Path, nodes: int) -> Path:
    """A CA and the server's and ``nodes`` nodes' credentials, in process (fast)."""
    ca = CertificateAuthority.init(root / "ca")
    creds = root / "credentials"
    ca.issue("server", "localhost", creds / "localhost", ips=["127.0.0.1"])
    for i in range(1, nodes + 1):
        ca.issue("node", f"n{i}", creds / f"n{i}")
    return root


def run(
    impl: str, plan: Plan, procs: int, pki: Path, timeout: float, prefix: list[str]
) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"{impl}-{plan.nodes}-", dir=pki))
    port_file, result = work / "port", work / "result.json"
    me = [sys.executable, str(Path(__file__).resolve())]
    common = ["--pki", str(pki), "--plan", json.dumps(asdict(plan))]
    load = [os.getloadavg()[0]]
    server = subprocess.Popen(
        [
            *prefix,
            *me,
            "--serve",
            impl,
            "--port-file",
            str(port_file),
            "--result",
            str(result),
            *common,
        ],
        stdin=subprocess.PIPE,
        text=True,
    )
    nodes: list[subprocess.Popen[str]] = []
    outputs: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text()):
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"the {impl} server did not start")
            time.sleep(0.05)
        names = [f"n{i}" for i in range(1, plan.nodes + 1)]
        groups = [names[i::procs] for i in range(procs)]
        nodes += [
            subprocess.Popen(
                [*me, "--clients", ",".join(g), "--port", port_file.read_text(), *common],
                stdout=subprocess.PIPE,
                text=True,
            )
            for g in groups
        ]
        outputs = [p.communicate(timeout=timeout)[0] for p in nodes]
        load.append(os.getloadavg()[0])
        assert server.stdin is not None
        server.stdin.write("gone\n")
        server.stdin.flush()
        with contextlib.suppress(subprocess.TimeoutExpired):  # no figures: reported below
            server.wait(timeout=plan.settle_s + 60)
    finally:
        for proc in [*nodes, server]:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if not result.exists():
        raise RuntimeError(
            f"the {impl} server wrote no figures (exit status {server.returncode}); "
            f"the nodes said: {' '.join(o.strip()[-500:] for o in outputs)}"
        )
    figures: dict[str, Any] = json.loads(result.read_text())
    finished: dict[str, int | str] = {}
    for out in outputs:
        finished.update(json.loads(out.strip().splitlines()[-1]) if out.strip() else {})
    errors = {n: f for n, f in finished.items() if isinstance(f, str)}
    return {
        "server": impl,
        **asdict(plan),
        "params": max(plan.down, plan.up) // 4,
        "model_mb": round(max(plan.down, plan.up) / MB, 2),
        "procs": procs,
        "load_avg": [round(x, 2) for x in load],
        "s_per_round": round(statistics.median(figures["round_seconds"]), 3),
        **figures,
        # clients that finished each round, as they report it
        "clients_finished": [
            sum(1 for f in finished.values() if isinstance(f, int) and f > rnd)
            for rnd in range(plan.rounds)
        ],
        "client_errors": errors,
    }


def _only(row: dict[str, Any]) -> str:
    only = ", down only" if not row["up"] else ", up only" if not row["down"] else ""
    only += ", granted uploads" if row["grant"] else ""
    return only + (", plaintext" if row["plaintext"] else "")


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| server | nodes | load | s/round | idle RSS / heap | peak RSS | heap in use peak (mean) "
        "| threads idle / peak | after RSS / heap | disconnected RSS / heap |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        p = r["phases"]
        idle, rounds, after, gone = p["idle"], p["rounds"], p["after"], p["disconnected"]
        lines.append(
            f"| {r['server']}{_only(r)} | {r['nodes']} "
            f"| {r['load_avg'][0]:.1f} → {r['load_avg'][1]:.1f} "
            f"| {r['s_per_round']:.2f} | {idle['rss_last']:.0f} / {idle['in_use_last']:.0f} MB "
            f"| {rounds['rss_max']:.0f} MB | {rounds['in_use_max']:.0f} "
            f"({rounds['in_use_mean']:.0f}) MB "
            f"| {idle['threads_last']:.0f} / "
            f"{rounds['threads_max']:.0f} | {after['rss_last']:.0f} / {after['in_use_last']:.0f} "
            f"MB | {gone['rss_last']:.0f} / {gone['in_use_last']:.0f} MB |"
        )
    return "\n".join(lines)


def _measure(
    args: argparse.Namespace,
    counts: list[int],
    params: int,
    extra: tuple[tuple[str, int], ...],
    root: Path,
) -> list[dict[str, Any]]:
    impls = ("sync", "aio") if args.server == "both" else (args.server,)
    pki = make_pki(root, max(counts))
    rows: list[dict[str, Any]] = []
    for nodes in counts:
        window = args.stream_window_kib * 1024 if args.stream_window_kib else stream_window(nodes)
        plan = Plan(
            nodes=nodes,
            rounds=args.rounds,
            down=0 if args.directions == "up" else params * 4,
            up=0 if args.directions == "down" else params * 4,
            sends=args.concurrent_sends,
            uploads=args.concurrent_uploads,
            window=window,
            poll_s=args.poll_seconds,
            settle_s=args.settle_seconds,
            train_s=args.train_seconds,
            grant=args.grant_uploads,
            plaintext=args.plaintext,
            malloc=args.malloc,
            extra=extra,
        )
        for _ in range(args.repeat):
            for impl in impls:
                procs = min(args.procs, nodes)
                rows.append(run(impl, plan, procs, pki, args.timeout, shlex.split(args.wrap)))
                print(json.dumps({k: rows[-1][k] for k in ("server", "nodes", "load_avg",
                      "s_per_round", "clients_finished")}), flush=True)  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--server", choices=("sync", "aio", "both"), default="both")
    ap.add_argument("--nodes", default="200", help="a count, or several: 20,100,200")
    ap.add_argument("--procs", type=int, default=4, help="client processes (nodes as threads)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--params", default="1M", help="float32 parameters: 64K, 1M, 25M...")
    ap.add_argument(
        "--directions",
        choices=("both", "down", "up"),
        default="both",
        help="move the model both ways (a round), or only one way (the other moves 0 bytes)",
    )
    ap.add_argument("--concurrent-sends", type=int, default=SENDS_AT_ONCE)
    ap.add_argument("--concurrent-uploads", type=int, default=RECEIVES_AT_ONCE)
    ap.add_argument("--stream-window-kib", type=int, help="default: the server's for N nodes")
    ap.add_argument(
        "--server-option",
        action="append",
        default=[],
        metavar="NAME=INT",
        help="a gRPC server option to add (repeatable), e.g. grpc.max_concurrent_streams=8",
    )
    ap.add_argument("--poll-seconds", type=float, default=5.0, help="a long-poll's wait")
    ap.add_argument("--settle-seconds", type=float, default=3.0, help="idle/after/gone phases")
    ap.add_argument(
        "--train-seconds",
        type=float,
        default=0.0,
        help="each node waits a random 0..T s between pull and push (spreads the uploads)",
    )
    ap.add_argument(
        "--grant-uploads",
        action="store_true",
        help="a node asks for an upload slot before it opens its push (no push waits open)",
    )
    ap.add_argument("--plaintext", action="store_true", help="no TLS (to tell its share)")
    ap.add_argument("--malloc", choices=("production", "default"), default="production")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=900, help="seconds for one run's nodes")
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--wrap",
        default="",
        help="a command to run the server under, e.g. 'heaptrack -o /tmp/server' (its figures "
        "then include the tool's own cost)",
    )
    # internal: the server and client processes
    ap.add_argument("--serve", choices=("sync", "aio"), help=argparse.SUPPRESS)
    ap.add_argument("--clients", help=argparse.SUPPRESS)
    ap.add_argument("--pki", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--plan", help=argparse.SUPPRESS)
    ap.add_argument("--port-file", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        serve(args.serve, Plan.from_json(args.plan), args.pki, args.port_file, args.result)
        return 0
    if args.clients:
        clients(Plan.from_json(args.plan), args.pki, args.clients.split(","), args.port)
        return 0
    try:
        counts = [int(n) for n in args.nodes.split(",")]
    except ValueError:
        ap.error(f"--nodes must be counts separated by commas, got {args.nodes!r}")
    if min(counts) < 1 or args.rounds < 1 or args.procs < 1 or args.repeat < 1:
        ap.error("--nodes, --rounds, --procs and --repeat must be >= 1")
    try:
        params = parse_size(args.params)
    except ValueError:
        ap.error(f"--params must be a count such as 64K or 1M, got {args.params!r}")
    if params < 1:
        ap.error(f"--params must be >= 1, got {args.params!r}")
    try:
        extra = tuple((k, int(v)) for k, v in (o.split("=", 1) for o in args.server_option))
    except ValueError:
        ap.error(f"--server-option must be NAME=INTEGER, got {args.server_option}")
    root = Path(tempfile.mkdtemp(prefix="consortium-grpc-memory-"))
    try:
        rows = _measure(args, counts, params, extra, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"\n### Bare gRPC + mutual TLS, {size_label(params)} params "
        f"({params * 4 / MB:.1f} MB), {args.rounds} rounds, loopback (MB, server process)\n"
    )
    print(_table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    failed = [r for r in rows if r["client_errors"] or min(r["clients_finished"]) < r["nodes"]]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
