"""Fleet load: one deployed server, many long-polling nodes, admin calls during the rounds.

    python benchmarks/fleet_load.py                         # 200 nodes, 1M params, 5 rounds
    python benchmarks/fleet_load.py --quick                 # 20 nodes, 2 rounds (< 1 min)
    python benchmarks/fleet_load.py --nodes 100 --procs 2 --json fleet.json

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
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_processes import Sampler, consortium_cmd, spawn, stop, wait_port  # noqa: E402
from transport import ADMIN, APP_DIR  # noqa: E402
from transport_report import MB, Row, median, parse_size, read_rounds, size_label  # noqa: E402

PROBE_EVERY_S = 0.1
#: the targets of issue 10 ("Done when")
P99_TARGET_MS = 200.0
RSS_FACTOR, RSS_EXTRA_MB = 3.0, 200.0


# -- results ----------------------------------------------------------------------------------
@dataclass
class Result:
    nodes: int
    params: int
    rounds: int
    procs: int
    #: seconds from starting the node processes until every node had said hello
    connect_s: float | None = None
    #: round 1: the loop's record; rounds 2, ...: wall time between round ends
    round_seconds: list[float] = field(default_factory=list)
    #: the server process tree (``consortium server`` and the run's own process), sampled
    server_peak_rss_mb: float | None = None
    #: the server's RSS once every node was connected and long-polling, before ``run start``
    server_baseline_rss_mb: float | None = None
    #: the machine's 1-minute load average when the run started and when it ended
    load_avg: tuple[float, float] | None = None
    #: the ``consortium server`` process alone, and the run's process alone
    server_main_peak_rss_mb: float | None = None
    run_proc_peak_rss_mb: float | None = None
    #: the run's tracking process (MLflow and the plot, ``server/tracking_process.py``) alone
    tracking_proc_peak_rss_mb: float | None = None
    #: the most the server's pool of model-sized buffers held at once (as the app reports it)
    server_pool_peak_mb: float | None = None
    #: ``consortium server --offline-after`` (None: the server's default, 10 s)
    offline_after: float | None = None
    #: each node runs its app in a sandboxed process (as deployed) instead of in-process
    app_processes: bool = False
    #: options added to ``consortium server``'s command line (``--server-arg``)
    server_args: list[str] = field(default_factory=list)
    nodes_peak_rss_mb: float | None = None
    #: (seconds since the run started, call, milliseconds, ok) of every admin call
    admin_calls: list[tuple[float, str, float, bool]] = field(default_factory=list)
    #: seconds ``consortium run start`` took (its StartRun call waits like any admin call)
    run_start_s: float | None = None
    #: call -> median milliseconds once the run was over, the nodes still connected
    admin_at_rest_ms: dict[str, float] = field(default_factory=dict)
    #: from ``run start`` until the probe saw the run end
    run_wall_s: float | None = None
    status: str = ""
    note: str = ""

    @property
    def model_mb(self) -> float:
        return self.params * 4 / MB

    @property
    def rss_target_mb(self) -> float:
        return RSS_FACTOR * self.model_mb + RSS_EXTRA_MB

    def latency_ms(self, q: float, call: str | None = None) -> float | None:
        """The ``q`` quantile (nearest rank) of admin call latency, of one ``call`` or all."""
        values = sorted(ms for _, c, ms, _ in self.admin_calls if call in (None, c))
        if not values:
            return None
        return values[min(len(values) - 1, round(q * (len(values) - 1)))]

    @property
    def rss_met(self) -> bool:
        """The target, for the ``consortium server`` process (its children apart)."""
        peak = self.server_main_peak_rss_mb
        return peak is not None and peak < self.rss_target_mb

    @property
    def tree_rss_met(self) -> bool:
        """The target, for the server's process tree (the run's and tracking processes too)."""
        return self.server_peak_rss_mb is not None and self.server_peak_rss_mb < self.rss_target_mb

    @property
    def p99_met(self) -> bool:
        p99 = self.latency_ms(0.99)
        failed = any(not ok for *_, ok in self.admin_calls)
        return p99 is not None and p99 < P99_TARGET_MS and not failed

    @property
    def completed(self) -> bool:
        return self.status == "finished" and len(self.round_seconds) == self.rounds

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        calls = self.admin_calls
        out.update(
            model_mb=self.model_mb,
            round_median_s=median(self.round_seconds) if self.round_seconds else None,
            round_max_s=max(self.round_seconds) if self.round_seconds else None,
            rss_target_mb=self.rss_target_mb,
            rss_over_model=(self.server_peak_rss_mb or 0.0) / self.model_mb,
            rss_target_met=self.rss_met,
            tree_rss_target_met=self.tree_rss_met,
            admin_p50_ms=self.latency_ms(0.50),
            admin_p99_ms=self.latency_ms(0.99),
            admin_max_ms=self.latency_ms(1.0),
            **{
                f"{call}_{name}_ms": self.latency_ms(q, call)
                for call in ("list_runs", "show_run")
                for name, q in (("p50", 0.5), ("p99", 0.99))
            },
            admin_call_count=len(calls),
            admin_failed=sum(1 for *_, ok in calls if not ok),
            admin_target_met=self.p99_met,
            completed=self.completed,
        )
        return out


#: what the command line of the run's tracking process holds (the server's other child is
#: the run's own program)
TRACKING_CHILD = "consortium.server.tracking_process"


class ServerSampler:
    """Samples the server's RSS every 50 ms: its own process, each child (the run's
    program, the run's tracking process) and the tree; keeps the peaks."""

    def __init__(self, pid: int) -> None:
        import psutil

        self._root = psutil.Process(pid)
        self.peak_main = self.peak_child = self.peak_tree = self.peak_tracking = 0
        self._tracking: dict[int, bool] = {}  # child pid -> is the tracking process
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss", daemon=True)
        self._thread.start()

    def sample(self) -> None:
        import psutil

        with contextlib.suppress(psutil.Error):
            main = self._root.memory_info().rss
            children = 0
            for child in self._root.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    rss = child.memory_info().rss
                    children += rss
                    if child.pid not in self._tracking:
                        self._tracking[child.pid] = TRACKING_CHILD in " ".join(child.cmdline())
                    if self._tracking[child.pid]:
                        self.peak_tracking = max(self.peak_tracking, rss)
                    else:
                        self.peak_child = max(self.peak_child, rss)
            self.peak_main = max(self.peak_main, main)
            self.peak_tree = max(self.peak_tree, main + children)

    def current_main(self) -> int:
        """The ``consortium server`` process's RSS now (0 if it is gone)."""
        import psutil

        try:
            return int(self._root.memory_info().rss)
        except psutil.Error:
            return 0

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(0.05):
            self.sample()


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


def _client_tls(creds: Path, role: str) -> Any:
    from consortium.transport.credentials import load_client_credentials
    from consortium.transport.grpc_client import ClientTls

    loaded = load_client_credentials(creds, role=role)  # type: ignore[arg-type]
    return ClientTls(
        key=loaded.private_key, certificate=loaded.certificate_chain, ca=loaded.root_certificates
    )


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
        client = FleetClient(address, tls=_client_tls(pki / "credentials" / f"n{i}", "node"))
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


# -- admin probe ------------------------------------------------------------------------------
class AdminProbe:
    """Calls ``list_runs`` and ``show_run`` in turn every ~100 ms from its own thread, timing
    each; remembers the run's last status. Started with the run: until ``run_id`` is set
    (``consortium run start`` returned) it calls ``list_runs`` only."""

    def __init__(self, address: str, pki: Path, result: Result) -> None:
        from consortium.transport.grpc_client import ControlClient

        self.client = ControlClient(address, tls=_client_tls(pki / "credentials" / ADMIN, "admin"))
        self.run_id: str | None = None
        self.result = result
        self.info: dict[str, Any] | None = None
        self.stop = threading.Event()
        self.done = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="admin-probe", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self.stop.set()
        self._thread.join(timeout=40)  # at most one call in flight (30 s deadline)

    def close_client(self) -> None:
        self.close()
        self.client.close()

    def at_rest(self, calls: int = 10) -> dict[str, float]:
        """Median milliseconds of each call once the run is over (the nodes still
        long-polling): the calls' own cost, apart from the rounds' load."""
        from consortium.core.errors import ConsortiumError

        run_id = self.run_id
        timings: dict[str, list[float]] = {"list_runs": [], "show_run": []}
        for _ in range(calls):
            for call, times in timings.items():
                t = time.monotonic()
                try:
                    if call == "list_runs":
                        self.client.list_runs()
                    elif run_id is not None:
                        self.client.show_run(run_id)
                except ConsortiumError:
                    continue
                times.append((time.monotonic() - t) * 1000)
        return {call: median(times) for call, times in timings.items() if times}

    def _loop(self) -> None:
        from consortium.core.errors import ConsortiumError

        n = 0
        while not self.stop.is_set():
            run_id = self.run_id
            call = "list_runs" if n % 2 == 0 or run_id is None else "show_run"
            n += 1
            t = time.monotonic()
            ok = True
            try:
                if call == "list_runs":
                    self.client.list_runs()
                else:
                    assert run_id is not None
                    self.info = self.client.show_run(run_id)
                    if self.info.get("status") not in ("pending", "running"):
                        self.done.set()
            except ConsortiumError:
                ok = False
            ms = (time.monotonic() - t) * 1000
            self.result.admin_calls.append((t - self._t0, call, ms, ok))
            self.stop.wait(max(0.0, PROBE_EVERY_S - ms / 1000))


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
            sampler.add(f"w{first}", w.pid)
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
        if result.note or sys.exc_info()[0] is not None:  # what each process said last
            for log in sorted(work.glob("*.out")) + sorted(work.glob("srv/*.log")):
                tail = log.read_text(errors="replace").strip().splitlines()[-5:]
                print(f"--- {log.name}\n" + "\n".join(tail), file=sys.stderr)
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


# -- report -----------------------------------------------------------------------------------
def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def table(r: Result) -> str:
    d = r.as_dict()
    yes = {True: "**met**", False: "**not met**"}
    rows = [
        ("nodes (processes)", f"{r.nodes} ({r.procs})"
         + ("" if r.app_processes else ", apps in-process")),
        ("load average at start / end", f"{r.load_avg[0]:.1f} / {r.load_avg[1]:.1f}"
         if r.load_avg else "—"),
        ("server --offline-after", f"{r.offline_after:g} s" if r.offline_after else "10 s"),
        ("other server options", " ".join(f"`{a}`" for a in r.server_args) or "defaults"),
        ("model", f"{size_label(r.params)} float32 = {r.model_mb:.1f} MB"),
        ("run", f"{r.status or '—'}, {len(r.round_seconds)}/{r.rounds} rounds"),
        ("all nodes connected after", f"{_fmt(r.connect_s, '.1f')} s"),
        ("round seconds", ", ".join(f"{s:.2f}" for s in r.round_seconds) or "—"),
        ("s/round median / max", f"{_fmt(d['round_median_s'], '.2f')} / "
         f"{_fmt(d['round_max_s'], '.2f')}"),
        ("server peak RSS (with the run's process)", f"{_fmt(r.server_peak_rss_mb, '.0f')} MB "
         f"({d['rss_over_model']:.1f} × model)"),
        ("`consortium server` RSS, nodes connected, before the run",
         f"{_fmt(r.server_baseline_rss_mb, '.0f')} MB"),
        ("RSS target < 3 × model + 200 MB: `consortium server` / with its children",
         f"< {r.rss_target_mb:.0f} MB: {yes[r.rss_met]} / {yes[r.tree_rss_met]}"),
        ("node processes peak RSS (sum)", f"{_fmt(r.nodes_peak_rss_mb, '.0f')} MB"),
        ("`consortium run start` took", f"{_fmt(r.run_start_s, '.1f')} s"),
        ("admin calls (failed)", f"{d['admin_call_count']} ({d['admin_failed']})"),
        ("admin p50 / p99 / max", f"{_fmt(d['admin_p50_ms'], '.0f')} / "
         f"{_fmt(d['admin_p99_ms'], '.0f')} / {_fmt(d['admin_max_ms'], '.0f')} ms"),
        ("admin target p99 < 200 ms", yes[r.p99_met]),
        ("after the run: list_runs / show_run median",
         " / ".join(f"{r.admin_at_rest_ms[c]:.0f}" if c in r.admin_at_rest_ms else "—"
                    for c in ("list_runs", "show_run")) + " ms"),
    ]  # fmt: skip
    if r.run_proc_peak_rss_mb:  # the run's program in a process of its own
        rows.insert(9, ("… `consortium server` / run process / tracking process",
                        f"{_fmt(r.server_main_peak_rss_mb, '.0f')} / "
                        f"{r.run_proc_peak_rss_mb:.0f} / "
                        f"{_fmt(r.tracking_proc_peak_rss_mb, '.0f')} MB"))  # fmt: skip
    return "\n".join(["| | |", "|---|---:|", *(f"| {k} | {v} |" for k, v in rows)])


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
    args = ap.parse_args(argv)
    if args.quick:
        args.nodes, args.rounds = 20, 2
        args.timeout = min(args.timeout, 120.0)
    if args.nodes < 1 or args.rounds < 1:
        ap.error("--nodes and --rounds must be at least 1")
    procs = max(1, min(args.nodes, args.procs or -(-args.nodes // 50)))
    # SIGTERM (e.g. from ``timeout``) unwinds like Ctrl-C: the finally blocks stop every process
    signal.signal(signal.SIGTERM, _terminate)

    with tempfile.TemporaryDirectory(prefix="consortium-fleet-") as tmp:
        result = run_fleet(
            args.nodes, args.params, args.rounds, procs, Path(tmp), args.timeout,
            offline_after=args.offline_after, app_processes=args.app_processes,
            server_args=tuple(args.server_arg),
        )  # fmt: skip

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
