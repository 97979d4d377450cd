"""Fleet load: one deployed server, many long-polling nodes, admin calls during the rounds.

    python benchmarks/fleet_load.py                         # 200 nodes, 1M params, 5 rounds
    python benchmarks/fleet_load.py --quick                 # 20 nodes, 2 rounds (< 1 min)
    python benchmarks/fleet_load.py --nodes 100 --procs 2 --json fleet.json
    python benchmarks/fleet_load.py --quick --keep          # keep the logs in /tmp

One ``consortium server`` process (mutual TLS, loopback, ``--allow-file``
listing the nodes, otherwise default options, plus any ``--server-arg``) and N
nodes: each node is the project's own ``NodeRunner`` over a gRPC
``FleetClient`` (its own channel, TLS session, certificate, heartbeats and
long-polls, exactly as ``consortium node`` runs it), many per process, one
thread each (``--procs`` worker processes, N / procs nodes each: 200
interpreters would not fit the machine, the server sees no difference). A
deployed node runs the app in a sandboxed process per run; here the app runs
in the node's thread (``fleet_nodes.InProcessNode``) unless
``--app-processes``: 200 app interpreters would measure the machine, not the
server. The app is ``benchmarks/transport_app`` (P float32 parameters in 8
tensors; every node returns what it received plus a small change; FedAvg),
started with ``consortium run start``.

Reported: seconds per round (round 1 is the loop's own record, rounds 2, 3, ...
the wall time between two round ends, as in ``transport.py``; median and max
over all rounds), the server's peak RSS (its process tree sampled every 50 ms
with psutil: ``consortium server`` and the run's own process, each also alone)
against the target 3 x model size + 200 MB, its RSS once every node is
connected (before ``run start``), the load average, and the latency of
admin calls (``ControlClient.list_runs`` and ``show_run``, alternating, from a
thread of this process every ~100 ms while the run is on; p50/p99) against the
target p99 < 200 ms. Every process is stopped at the end, on failure and on
Ctrl-C too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_processes import (  # noqa: E402
    ADMIN,
    Sampler,
    consortium_cmd,
    dump_stacks,
    spawn,
    stack_summary,
    stop,
    wait_port,
)
from fleet_probes import AdminProbe, ServerSampler, client_tls  # noqa: E402
from fleet_report import Result, table  # noqa: E402
from transport import APP_DIR  # noqa: E402
from transport_report import MB, Row, parse_size, read_rounds, size_label  # noqa: E402


# -- credentials ------------------------------------------------------------------------------
def make_pki(root: Path, nodes: int) -> Path:
    """A CA, server, ``nodes`` node and one admin credentials, in process (the CLI per
    certificate would take ~1 s each: 200 interpreter starts)."""
    from consortium.transport.ca import CertificateAuthority

    ca = CertificateAuthority.init(root / "ca")
    creds = root / "credentials"
    ca.issue("server", "localhost", creds / "localhost", ips=["127.0.0.1"])
    for i in range(1, nodes + 1):
        ca.issue("node", f"n{i}", creds / f"n{i}")
    ca.issue("admin", ADMIN, creds / ADMIN)
    (root / "allow.txt").write_text("".join(f"n{i}\n" for i in range(1, nodes + 1)))
    return root


# -- the node worker process ------------------------------------------------------------------
def node_worker(
    address: str,
    pki: Path,
    work: Path,
    first: int,
    count: int,
    ready: Path,
    max_s: float,
    app_processes: bool,
) -> int:
    """Run nodes n<first> .. n<first+count-1>, one NodeRunner thread each, until SIGTERM,
    SIGINT, the parent's exit or ``max_s`` seconds; count connected nodes into ``ready``.
    The app runs in this process (:class:`InProcessNode`) unless ``app_processes``."""
    import logging

    from consortium.core.buffers import tune_malloc
    from consortium.node.runner import NodePolicy, NodeRunner
    from consortium.transport.grpc_client import FleetClient
    from fleet_nodes import InProcessNode

    tune_malloc()
    logging.basicConfig(
        filename=str(work / f"worker-{first}.log"),
        level=logging.WARNING,
        format="%(asctime)s %(threadName)s %(name)s %(levelname)s %(message)s",
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    parent = os.getppid()
    policy = NodePolicy(local_apps={"transport-bench": APP_DIR})
    runners: list[NodeRunner] = []
    node_cls = NodeRunner if app_processes else InProcessNode
    clients: list[FleetClient] = []
    threads: list[threading.Thread] = []
    for i in range(first, first + count):
        client = FleetClient(address, tls=client_tls(pki / "credentials" / f"n{i}", "node"))
        runner = node_cls(
            client,
            node_config={"partition-id": i - 1},
            work_dir=work / f"n{i}",
            policy=policy,
        )
        clients.append(client)
        runners.append(runner)
        threads.append(threading.Thread(target=runner.run, name=f"n{i}", daemon=True))
    for t in threads:
        t.start()
    deadline = time.monotonic() + max_s
    while not stop.wait(0.5):
        if os.getppid() != parent or time.monotonic() > deadline:
            break
        connected = sum(1 for r in runners if r.name)
        ready.write_text(f"{connected} {sum(r.tasks_done for r in runners)}")
    for r in runners:
        r.stop.set()
    end = time.monotonic() + 10.0  # a long-poll returns within its wait (5 s)
    for t in threads:
        t.join(timeout=max(0.1, end - time.monotonic()))
    for c in clients:
        c.close()
    return 0


# -- one measurement --------------------------------------------------------------------------
def run_fleet(
    nodes: int,
    params: int,
    rounds: int,
    procs: int,
    root: Path,
    timeout: float,
    offline_after: float | None = None,
    app_processes: bool = False,
    server_args: tuple[str, ...] = (),
) -> Result:
    result = Result(nodes, params, rounds, procs, offline_after=offline_after,
                    app_processes=app_processes, server_args=list(server_args))  # fmt: skip
    pki = make_pki(root, nodes)
    work = root / "work"
    work.mkdir()
    cli = consortium_cmd()
    sampler = Sampler()
    workers: list[subprocess.Popen[bytes]] = []
    server: subprocess.Popen[bytes] | None = None
    server_rss: ServerSampler | None = None
    probe: AdminProbe | None = None
    try:
        server = spawn(
            [*cli, "server", "--address", "127.0.0.1:0",
             "--credentials", str(pki / "credentials" / "localhost"),
             "--ca-dir", str(pki / "ca"), "--allow-file", str(pki / "allow.txt"),
             "--workdir", str(work / "srv"), "--port-file", str(work / "port"),
             *(["--offline-after", str(offline_after)] if offline_after else []),
             *server_args],
            work / "server.out", work,
        )  # fmt: skip
        server_rss = ServerSampler(server.pid)
        address = f"127.0.0.1:{wait_port(work / 'port', server, 60)}"
        sampler.start()
        per = -(-nodes // procs)
        t0 = time.monotonic()
        for first in range(1, nodes + 1, per):
            count = min(per, nodes - first + 1)
            w = spawn(
                [sys.executable, __file__, "--worker", address, str(pki), str(work),
                 str(first), str(count), str(timeout + 120), "1" if app_processes else "0"],
                work / f"worker-{first}.out", work,
            )  # fmt: skip
            workers.append(w)
            sampler.add(f"w{first}", w.pid, pss=False)  # their RSS is what is reported
        result.connect_s = _wait_connected(work, nodes, [server, *workers], timeout=120)
        if result.connect_s is None:
            result.note = "not every node connected within 120 s"
        else:
            result.connect_s -= t0
        time.sleep(2.0)  # the nodes' first long-polls and heartbeats settle
        result.server_baseline_rss_mb = server_rss.current_main() / MB
        load0 = os.getloadavg()[0]
        probe = AdminProbe(address, pki, result)
        run_t0 = time.monotonic()
        probe.start()
        started = subprocess.run(
            [*cli, "run", "start", str(APP_DIR), "--server", address,
             "--credentials", str(pki / "credentials" / ADMIN),
             "--run-config", f"params={params}", "--run-config", f"min-nodes={nodes}",
             "--run-config", f"num-rounds={rounds}"],
            capture_output=True, text=True, timeout=180, cwd=work,
        )  # fmt: skip
        if started.returncode != 0:
            result.note = f"run start failed: {started.stderr.strip()[-300:]}"
            return result
        result.run_start_s = time.monotonic() - run_t0
        probe.run_id = started.stdout.strip().splitlines()[-1]
        deadline = run_t0 + timeout
        while time.monotonic() < deadline and not probe.done.wait(0.2):
            if any(p.poll() is not None for p in [server, *workers]):
                result.note = "a process exited during the run"
                break
        result.run_wall_s = time.monotonic() - run_t0
        result.load_avg = (load0, os.getloadavg()[0])
        probe.close()
        info = probe.info
        result.admin_at_rest_ms = probe.at_rest()
        probe.close_client()
        probe = None
        if info is None or info.get("status") in ("pending", "running"):
            result.status = str(info.get("status")) if info else "unknown"
            result.note = result.note or f"not finished after {timeout:.0f} s"
        else:
            result.status = str(info["status"])
            if result.status != "finished":
                result.note = f"run {result.status}: {str(info.get('error', ''))[:300]}"
        if info is not None:
            row = Row("consortium", params, nodes, rounds)
            read_rounds(row, info.get("rounds", []))
            result.round_seconds = row.round_seconds
            result.server_pool_peak_mb = row.server_pool_peak_mb
    finally:
        failed = bool(result.note) or sys.exc_info()[0] is not None
        if failed and server is not None and server.poll() is None:
            dump_stacks(server.pid)  # what the server and its run's process were doing
            time.sleep(1.0)
        if probe is not None:
            probe.close_client()
        stop([*workers, *([server] if server else [])], grace=15)
        with contextlib.suppress(RuntimeError):
            sampler.stop()
        if server_rss is not None:
            server_rss.stop()
            result.server_peak_rss_mb = server_rss.peak_tree / MB or None
            result.server_main_peak_rss_mb = server_rss.peak_main / MB or None
            result.run_proc_peak_rss_mb = server_rss.peak_child / MB or None
            result.tracking_proc_peak_rss_mb = server_rss.peak_tracking / MB or None
        result.nodes_peak_rss_mb = sum(sampler.peak.values()) / MB or None
        if failed:  # what each process said last, and the threads' stacks
            for log in sorted(work.glob("*.out")) + sorted(work.glob("srv/*.log")):
                tail = log.read_text(errors="replace").strip().splitlines()[-5:]
                print(f"--- {log.name}\n" + "\n".join(tail), file=sys.stderr)
            for log in [work / "server.out", *sorted(work.glob("srv/runs/*/app.log"))]:
                if log.exists() and (stacks := stack_summary(log.read_text(errors="replace"))):
                    print(f"--- stacks in {log.relative_to(work)}\n{stacks}", file=sys.stderr)
    return result


def _wait_connected(
    work: Path, nodes: int, procs: list[subprocess.Popen[bytes]], timeout: float
) -> float | None:
    """The time (monotonic) at which every node had connected, or None after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        total = 0
        for f in work.glob("ready-*"):
            with contextlib.suppress(ValueError, IndexError, OSError):
                total += int(f.read_text().split()[0])
        if total >= nodes:
            return time.monotonic()
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a process exited while the nodes were connecting")
        time.sleep(0.2)
    return None


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--worker":
        address, pki, work, first, count, max_s, app_processes = sys.argv[2:9]
        ready = Path(work) / f"ready-{first}"
        return node_worker(
            address, Path(pki), Path(work), int(first), int(count), ready, float(max_s),
            app_processes == "1",
        )  # fmt: skip
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--params", type=parse_size, default=parse_size("1M"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--procs", type=int, help="node worker processes (default: 50 nodes each)")
    ap.add_argument("--timeout", type=float, default=480.0, help="for the run, seconds")
    ap.add_argument(
        "--offline-after",
        type=float,
        help="pass to consortium server (its default: 10 s without a heartbeat)",
    )
    ap.add_argument(
        "--app-processes",
        action="store_true",
        help="each node runs the app in its own sandboxed process, as deployed (default: in "
        "the node worker's process; the server sees no difference)",
    )
    ap.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="add ARG to consortium server's options (repeat; e.g. --server-arg=--no-tracking)",
    )
    ap.add_argument("--quick", action="store_true", help="20 nodes, 2 rounds: a smoke run")
    ap.add_argument("--json", type=Path, help="write the figures as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    args = ap.parse_args(argv)
    if args.quick:
        args.nodes, args.rounds = 20, 2
        args.timeout = min(args.timeout, 120.0)
    if args.nodes < 1 or args.rounds < 1:
        ap.error("--nodes and --rounds must be at least 1")
    procs = max(1, min(args.nodes, args.procs or -(-args.nodes // 50)))
    # SIGTERM (e.g. from ``timeout``) unwinds like Ctrl-C: the finally blocks stop every process
    signal.signal(signal.SIGTERM, _terminate)

    tmp = Path(tempfile.mkdtemp(prefix="consortium-fleet-"))
    try:
        result = run_fleet(
            args.nodes, args.params, args.rounds, procs, tmp, args.timeout,
            offline_after=args.offline_after, app_processes=args.app_processes,
            server_args=tuple(args.server_arg),
        )  # fmt: skip
    finally:
        if args.keep:
            print(f"work folder kept: {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    print(
        f"\n### Fleet load: {result.nodes} long-polling nodes, {size_label(result.params)} "
        f"params, {result.rounds} rounds, mutual TLS, loopback, {os.cpu_count()} cores\n"
    )
    print(table(result))
    if result.note:
        print(f"\n{result.note}")
    if args.json:
        args.json.write_text(json.dumps(result.as_dict(), indent=2))
    return 0 if result.completed else 1


if __name__ == "__main__":
    sys.exit(main())
