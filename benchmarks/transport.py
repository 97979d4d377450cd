"""Deployment transport: seconds per round and memory for big models, TLS on.

    python benchmarks/transport.py                          # 1M, 10M, 100M params x 2, 8 nodes
    python benchmarks/transport.py --sizes 1M,10M --nodes 2 --json out.json
    python benchmarks/transport.py --vs-flower              # + Flower 1.42 (SuperLink/SuperNodes)

Each configuration starts real processes on loopback with the CLI, exactly as
an operator would: ``consortium ca init/issue`` once, then ``consortium server``
(mutual TLS), N x ``consortium node`` and ``consortium run start`` of the app in
``benchmarks/transport_app`` (a model of P float32 parameters in 8 tensors;
every node returns what it received plus a small deterministic change; FedAvg;
no evaluation). Seconds per round: round 1 is the round loop's own record (it
also pays for importing the app and opening the streams); rounds 2, 3, ... are
the wall time between two round ends, as the app's central evaluation stamps
them (the server's per-round checkpoint included); the table shows their
median (with the default 6 rounds, the median of rounds 2-6: rounds 2 and 3
still pay for first-touching the server's reused buffers and checkpoint
files). The loop's own records (no checkpoint) are kept in the JSON. The app
reports each process's CPU seconds and ``ru_maxrss``: CPU s per steady round
(server + nodes; unlike wall time it hardly moves when other programs share
the machine) and the server's exact peak. Server + nodes RSS is also sampled
every 50 ms, and the peak of the sum is reported, and so is the peak of the server
tree's summed PSS: the server and its app process share model-sized blocks
(``sandbox/shared_blocks.py``), which the summed RSS counts in each process that
maps them and the PSS counts once. Since server and node apps run
in processes of their own, what the app reports covers those processes only: the
sampler also reads every process's CPU, and the JSON's ``process_cpu`` gives per
steady round the server process, its child processes (the app), the nodes and their
child processes. ``--stages`` adds the transport's stage timers (see
``consortium.transport.stage_times``).

Flower runs the same workload (``peers/flower_transport``): flower-superlink +
N flower-supernodes on loopback (Flower's deployment has no TLS here: insecure
mode, which flatters it), FedAvg from ``flwr.serverapp.strategy``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
APP_DIR = HERE / "transport_app"
FLOWER_DIR = HERE / "peers" / "flower_transport"
sys.path.insert(0, str(HERE / "peers"))

from flower_env import ensure_flower_venv, flower_env, run_measured  # noqa: E402

from consortium.transport.stage_times import STAGE_TIMES_ENV  # noqa: E402

MB = 1024 * 1024
SAMPLE_S = 0.05
ADMIN = "bench-admin"


# -- results -------------------------------------------------------------------------------
@dataclass
class Row:
    system: str
    params: int
    nodes: int
    rounds: int
    #: round 1: the loop's own record; rounds 2, 3, ...: wall time between round ends
    round_seconds: list[float] = field(default_factory=list)
    #: the loop's record of each round (tasks sent -> new model; no checkpoint)
    loop_seconds: list[float] = field(default_factory=list)
    #: CPU seconds of server + nodes in rounds 2, 3, ... (round 1 has no baseline)
    cpu_seconds: list[float] = field(default_factory=list)
    #: per steady round, (user, system) CPU seconds of the server and of one node (mean)
    server_cpu_split: list[tuple[float, float]] = field(default_factory=list)
    node_cpu_split: list[tuple[float, float]] = field(default_factory=list)
    server_peak_rss_mb: float | None = None
    total_peak_rss_mb: float | None = None
    #: the peak of the server tree's summed PSS: pages shared between the server and
    #: its app process (shared memory, ``sandbox/shared_blocks.py``) counted once, where
    #: the summed RSS counts them in each process that maps them
    server_peak_pss_mb: float | None = None
    #: ru_maxrss of the server app's process (where its central evaluation runs; since
    #: server apps run in their own process, not the server's) and (mean over nodes) of
    #: a node's app process, as the app reported them
    server_exact_peak_mb: float | None = None
    node_exact_peak_mb: float | None = None
    #: the most the server's buffer pool held at once (buffers in use + idle)
    server_pool_peak_mb: float | None = None
    #: wall-clock end of each round (the app's central evaluation)
    round_ends: list[float] = field(default_factory=list)
    #: per steady round (median), CPU s of: the server process (gRPC, the fleet), its
    #: child processes (the run's server app: the fold, the checkpoint), the nodes'
    #: processes (all nodes) and their child processes (the nodes' apps)
    process_cpu: dict[str, float] = field(default_factory=dict)
    #: --stages: process role -> stage -> wall s, CPU s and MB per steady round (rounds
    #: 3, 4, ...; nodes: the mean node)
    stages: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    #: 1-minute load average before and after the configuration ran
    load: tuple[float, float] | None = None
    note: str = ""

    @property
    def model_mb(self) -> float:
        return self.params * 4 / MB

    @property
    def first_s(self) -> float | None:
        return self.round_seconds[0] if self.round_seconds else None

    @property
    def steady_s(self) -> float | None:
        """Median of the rounds after the first (the first alone if only one ran)."""
        rest = self.round_seconds[1:] or self.round_seconds
        return _median(rest) if rest else None

    @property
    def steady_cpu_s(self) -> float | None:
        """Median CPU seconds (all processes) of rounds 2, 3, ..."""
        return _median(self.cpu_seconds) if self.cpu_seconds else None

    @property
    def throughput_mb_s(self) -> float | None:
        """MB of updates the server received per second of a steady round."""
        s = self.steady_s
        return self.nodes * self.model_mb / s if s else None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(
            model_mb=self.model_mb,
            first_round_s=self.first_s,
            steady_round_s=self.steady_s,
            steady_cpu_s=self.steady_cpu_s,
            throughput_mb_s=self.throughput_mb_s,
        )
        return out


def _median(values: list[float]) -> float:
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def parse_size(text: str) -> int:
    """``1M`` / ``10m`` / ``2.5e6`` / ``600000000`` -> a parameter count."""
    t = text.strip().upper()
    scale = {"K": 10**3, "M": 10**6, "G": 10**9}.get(t[-1:], 1)
    if scale != 1:
        t = t[:-1]
    return int(float(t) * scale)


def size_label(params: int) -> str:
    for unit, scale in (("G", 10**9), ("M", 10**6), ("K", 10**3)):
        if params >= scale and params % scale == 0:
            return f"{params // scale}{unit}"
    return str(params)


# -- process handling -------------------------------------------------------------------------
class Sampler:
    """Samples the RSS and PSS of named process trees every ``SAMPLE_S`` seconds; keeps
    the peaks."""

    def __init__(self) -> None:
        self.groups: dict[str, psutil.Process] = {}
        self.peak: dict[str, int] = {}
        self.peak_pss: dict[str, int] = {}
        self.peak_total = 0
        #: (time.time(), group -> (CPU s of its process, CPU s of its child processes))
        self.cpu: list[tuple[float, dict[str, tuple[float, float]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def add(self, name: str, pid: int) -> None:
        self.groups[name] = psutil.Process(pid)
        self.peak.setdefault(name, 0)
        self.peak_pss.setdefault(name, 0)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        total = 0
        cpu: dict[str, tuple[float, float]] = {}
        for name, root in list(self.groups.items()):
            rss = pss = 0
            own = kids = 0.0
            with contextlib.suppress(psutil.Error):
                for p in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        memory = p.memory_full_info()  # smaps_rollup: RSS and PSS
                        rss += memory.rss
                        pss += memory.pss
                        t = p.cpu_times()
                        if p.pid == root.pid:
                            own += t.user + t.system
                        else:
                            kids += t.user + t.system
            self.peak[name] = max(self.peak[name], rss)
            self.peak_pss[name] = max(self.peak_pss[name], pss)
            total += rss
            cpu[name] = (own, kids)
        self.peak_total = max(self.peak_total, total)
        self.cpu.append((time.time(), cpu))

    def cpu_between(self, start: float, end: float) -> dict[str, tuple[float, float]]:
        """CPU seconds (the process itself, its child processes) each group used between
        the samples nearest ``start`` and ``end`` (wall-clock times)."""
        if not self.cpu:
            return {}
        a = min(self.cpu, key=lambda s: abs(s[0] - start))[1]
        b = min(self.cpu, key=lambda s: abs(s[0] - end))[1]
        return {
            name: (b[name][0] - a.get(name, (0.0, 0.0))[0], b[name][1] - a.get(name, (0.0, 0.0))[1])
            for name in b
        }

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self.sample()


def _consortium_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("consortium")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "consortium.cli.main"]


def _spawn(
    cmd: list[str], log: Path, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with open(log, "wb") as fh:
        return subprocess.Popen(
            cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )


def _stop(procs: list[subprocess.Popen[bytes]], grace: float = 10.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def make_pki(root: Path, nodes: int) -> Path:
    """A CA and credentials for the server, ``nodes`` nodes and one admin (via the CLI)."""
    cli = _consortium_cmd()
    steps = [
        ["ca", "init", "--dir", "ca"],
        ["ca", "issue", "--server", "localhost", "--ip", "127.0.0.1"],
        *(["ca", "issue", "--node", f"n{i}"] for i in range(1, nodes + 1)),
        ["ca", "issue", "--admin", ADMIN],
    ]
    for step in steps:
        subprocess.run([*cli, *step], cwd=root, check=True, capture_output=True)
    return root


# -- Consortium -------------------------------------------------------------------------------
def run_consortium(
    params: int,
    nodes: int,
    rounds: int,
    pki: Path,
    *,
    timeout: float,
    keep: bool,
    py_spy: str | None = None,
    app_config: dict[str, str] | None = None,
    stages: bool = False,
) -> Row:
    row = Row("consortium", params, nodes, rounds)
    row.load = (os.getloadavg()[0], 0.0)
    work = Path(tempfile.mkdtemp(prefix=f"tb-{size_label(params)}-{nodes}-", dir=pki))
    stage_dir = work / "stages"
    env = None
    if stages:
        stage_dir.mkdir()
        env = {**os.environ, STAGE_TIMES_ENV: str(stage_dir)}
    cli = _consortium_cmd()
    port_file = work / "port"
    sampler = Sampler()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        allow = [a for i in range(1, nodes + 1) for a in ("--allow", f"n{i}")]
        server = _spawn(
            [*cli, "server", "--address", "127.0.0.1:0", "--credentials",
             str(pki / "credentials" / "localhost"), "--ca-dir", str(pki / "ca"), *allow,
             "--workdir", str(work / "srv"), "--port-file", str(port_file),
             "--offline-after", "60"],
            work / "server.out", work, env,
        )  # fmt: skip
        procs.append(server)
        sampler.add("server", server.pid)
        port = _wait_port(port_file, server, 60)
        address = f"127.0.0.1:{port}"
        for i in range(1, nodes + 1):
            node = _spawn(
                [*cli, "node", "--server", address, "--credentials",
                 str(pki / "credentials" / f"n{i}"), "--app", str(APP_DIR),
                 "--work-dir", str(work / f"n{i}"), "--config", f"partition-id={i - 1}"],
                work / f"n{i}.out", work, env,
            )  # fmt: skip
            procs.append(node)
            sampler.add(f"n{i}", node.pid)
        spies = [
            _spy(py_spy, p.pid, work / f"{name}.pyspy.txt")
            for name, p in (("server", server), ("n1", procs[1]))
            if py_spy is not None
        ]
        sampler.start()
        overrides: dict[str, Any] = {"params": params, "min-nodes": nodes, "num-rounds": rounds}
        overrides.update(app_config or {})
        started = subprocess.run(
            [*_consortium_cmd(), "run", "start", str(APP_DIR), "--server", address,
             "--credentials", str(pki / "credentials" / ADMIN),
             *(a for k, v in overrides.items() for a in ("--run-config", f"{k}={v}"))],
            capture_output=True, text=True, timeout=120, cwd=work,
        )  # fmt: skip
        if started.returncode != 0:
            row.note = f"run start failed: {started.stderr.strip()[-300:]}"
            return row
        run_id = started.stdout.strip().splitlines()[-1]
        info = _follow(run_id, address, pki, row, timeout, procs)
        if info is None:
            row.note = row.note or "timed out"
        elif info["status"] != "finished":
            row.note = f"run {info['status']}: {info.get('error', '')[:300]}"
        if info is not None:
            _read_rounds(row, info.get("rounds", []))
    finally:
        _stop(procs)
        for spy in spies if "spies" in locals() else []:
            spy.wait(timeout=30)
        with contextlib.suppress(RuntimeError):
            sampler.stop()
        sampler.sample()
        row.process_cpu = _process_cpu(sampler, row.round_ends)
        if stages:
            row.stages = _read_stages(stage_dir, row.round_ends)
        row.load = (row.load[0], os.getloadavg()[0]) if row.load else None
        row.server_peak_rss_mb = max(
            sampler.peak.get("server", 0) / MB, row.server_exact_peak_mb or 0.0
        )
        row.total_peak_rss_mb = sampler.peak_total / MB
        row.server_peak_pss_mb = sampler.peak_pss.get("server", 0) / MB or None
        if row.note:
            for log in sorted(work.glob("*.out")):
                tail = log.read_text(errors="replace").strip().splitlines()[-5:]
                print(f"--- {log.name}\n" + "\n".join(tail), file=sys.stderr)
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return row


def _spy(py_spy: str, pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling ``pid`` (without pausing it) into a collapsed-stacks file."""
    cmd = [py_spy, "record", "--pid", str(pid), "--rate", "50", "--nonblocking",
           "--format", "raw", "--output", str(out)]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_port(port_file: Path, server: subprocess.Popen[bytes], timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_file.exists() and port_file.read_text().strip():
            return int(port_file.read_text())
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode}")
        time.sleep(0.05)
    raise RuntimeError("the server did not write its port file")


def _follow(
    run_id: str,
    address: str,
    pki: Path,
    row: Row,
    timeout: float,
    procs: list[subprocess.Popen[bytes]],
) -> dict[str, Any] | None:
    """Poll the run until it ends; its summary (with per-round records), or None."""
    from consortium.transport.grpc_client import ClientTls, ControlClient

    creds = pki / "credentials" / ADMIN
    tls = ClientTls(
        key=(creds / f"{ADMIN}.key").read_bytes(),
        certificate=(creds / f"{ADMIN}.crt").read_bytes(),
        ca=(creds / "ca.crt").read_bytes(),
    )
    client = ControlClient(address, tls=tls)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            info = client.show_run(run_id)
            if info["status"] not in ("pending", "running"):
                return info
            if any(p.poll() is not None for p in procs):
                row.note = "a process exited during the run"
                return client.show_run(run_id)
            time.sleep(0.2)
    finally:
        client.close()
    return None


def _read_rounds(row: Row, rounds: list[dict[str, Any]]) -> None:
    """Round seconds, CPU per round and exact peaks from what the app reported.

    The app's replies carry each node's process CPU seconds and peak RSS (the
    round record keeps their mean), its central evaluation the server's: CPU
    of round r is the growth of those counters since round r - 1.
    """
    row.loop_seconds = [float(r["seconds"]) for r in rounds]
    ends = [r["metrics"].get("central_time") for r in rounds]
    if rounds and all(e is not None for e in ends):
        row.round_ends = [float(e) for e in ends]
        # wall time between round ends: what a user waits per round, checkpoints included
        row.round_seconds = [row.loop_seconds[0], *(b - a for a, b in itertools.pairwise(ends))]
    else:
        row.round_seconds = list(row.loop_seconds)
    cpu = [
        r["metrics"].get("central_cpu_s", 0.0) + row.nodes * r["metrics"].get("train_cpu_s", 0.0)
        for r in rounds
    ]
    row.cpu_seconds = [b - a for a, b in itertools.pairwise(cpu)]
    for key, out in (("central", row.server_cpu_split), ("train", row.node_cpu_split)):
        user_sys = [
            (m.get(f"{key}_cpu_s", 0.0) - m.get(f"{key}_sys_s", 0.0), m.get(f"{key}_sys_s", 0.0))
            for m in (r["metrics"] for r in rounds)
        ]
        out.extend((u1 - u0, s1 - s0) for (u0, s0), (u1, s1) in itertools.pairwise(user_sys))
    if rounds:
        last = rounds[-1]["metrics"]
        row.server_exact_peak_mb = last.get("central_maxrss_mb")
        row.node_exact_peak_mb = last.get("train_maxrss_mb")
        row.server_pool_peak_mb = last.get("central_pool_high_water_mb")


def _process_cpu(sampler: Sampler, ends: list[float]) -> dict[str, float]:
    """Median CPU s per steady round of the server, its app process, nodes and their apps."""
    per_round: dict[str, list[float]] = {}
    for a, b in itertools.pairwise(ends):
        used = sampler.cpu_between(a, b)
        sums = {"server": 0.0, "server app": 0.0, "nodes": 0.0, "node apps": 0.0}
        for name, (own, kids) in used.items():
            main, child = ("server", "server app") if name == "server" else ("nodes", "node apps")
            sums[main] += own
            sums[child] += kids
        for key, value in sums.items():
            per_round.setdefault(key, []).append(value)
    return {k: _median(v) for k, v in per_round.items()}


def _read_stages(folder: Path, ends: list[float]) -> dict[str, dict[str, dict[str, float]]]:
    """Stage timers the processes wrote (consortium.transport.stage_times) per steady round:
    the growth of each counter from the end of round 2 to the last round's end (all rounds
    if fewer than 3 ended), the server's and the mean node's."""
    start, end = (ends[1], ends[-1]) if len(ends) >= 3 else (0.0, float("inf"))
    rounds = max(1, len(ends) - 2 if len(ends) >= 3 else len(ends))
    found: dict[str, list[dict[str, dict[str, float]]]] = {}
    for path in sorted(folder.glob("*.jsonl")):
        role = path.name.split("-", 1)[0]
        lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        before = [x["stages"] for x in lines if x["time"] <= start + 0.05]
        upto = [x["stages"] for x in lines if x["time"] <= end + 0.05]
        a, b = (before[-1] if before else {}), (upto[-1] if upto else {})
        found.setdefault(role, []).append(
            {
                k: {f: v[f] - a.get(k, {}).get(f, 0.0) for f in ("seconds", "cpu", "bytes")}
                for k, v in b.items()
            }
        )
    out: dict[str, dict[str, dict[str, float]]] = {}
    for role, procs in found.items():
        names = sorted({k for p in procs for k in p})
        share = len(procs) * rounds
        out[role] = {
            k: {
                "seconds": sum(p.get(k, {}).get("seconds", 0.0) for p in procs) / share,
                "cpu": sum(p.get(k, {}).get("cpu", 0.0) for p in procs) / share,
                "mb": sum(p.get(k, {}).get("bytes", 0.0) for p in procs) / share / MB,
            }
            for k in names
        }
    return out


# -- Flower -----------------------------------------------------------------------------------
def run_flower(params: int, nodes: int, rounds: int, python: Path, timeout: float) -> Row:
    """The same workload on Flower 1.42: flower-superlink + N flower-supernodes, insecure."""
    row = Row("flower", params, nodes, rounds)
    home = Path(tempfile.mkdtemp(prefix="flwr-transport-", dir=_bench_dir()))
    try:
        cmd = [str(python), str(FLOWER_DIR / "driver.py"), "--params", str(params),
               "--nodes", str(nodes), "--rounds", str(rounds),
               "--timeout", str(timeout)]  # fmt: skip
        m = run_measured(cmd, flower_env(home), timeout + 120)
        result = _last_json(m.stdout)
        if result is not None:
            row.round_seconds = list(result.get("seconds_per_round", []))
            row.loop_seconds = list(row.round_seconds)
            # the driver sums SuperLink (+ ServerApp) and SuperNode (+ ClientApp) trees,
            # leaving out itself and the `flwr run` client, as the Consortium side does
            row.server_peak_rss_mb = (result.get("server_peak_rss_bytes") or 0) / MB or None
            row.total_peak_rss_mb = (result.get("total_peak_rss_bytes") or 0) / MB or None
            row.note = str(result.get("error", ""))
        if not m.ok or result is None:
            row.note = row.note or (
                "timed out" if m.timed_out else f"exit {m.returncode}: {m.stderr.strip()[-300:]}"
            )
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return row


def _bench_dir() -> Path:
    path = Path(".bench").resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _last_json(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)  # type: ignore[no-any-return]
    return None


# -- report -----------------------------------------------------------------------------------
def fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def table(rows: list[Row], vs_flower: bool) -> str:
    out = [
        "| params | model MB | nodes | round 1 s | s/round | CPU s/round | MB/s in "
        "| server peak MB | server ÷ model | server PSS MB | PSS ÷ model | server+nodes peak MB |"
        + (" Flower s/round | Flower peak MB | speed-up |" if vs_flower else ""),
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        + ("---:|---:|---:|" if vs_flower else ""),
    ]
    for c in (r for r in rows if r.system == "consortium"):
        ratio = c.server_peak_rss_mb / c.model_mb if c.server_peak_rss_mb else None
        pss_ratio = c.server_peak_pss_mb / c.model_mb if c.server_peak_pss_mb else None
        line = (
            f"| {size_label(c.params)} | {c.model_mb:.0f} | {c.nodes} | {fmt(c.first_s, '.3f')} "
            f"| {fmt(c.steady_s, '.3f')} | {fmt(c.steady_cpu_s, '.2f')} "
            f"| {fmt(c.throughput_mb_s, '.0f')} | {fmt(c.server_peak_rss_mb, '.0f')} "
            f"| {fmt(ratio, '.2f')}× | {fmt(c.server_peak_pss_mb, '.0f')} "
            f"| {fmt(pss_ratio, '.2f')}× | {fmt(c.total_peak_rss_mb, '.0f')} |"
        )
        if vs_flower:
            same = (c.params, c.nodes)
            f = next(
                (r for r in rows if r.system == "flower" and (r.params, r.nodes) == same), None
            )
            if f is None or f.steady_s is None:
                line += f" {f.note[:40] if f else 'not run'} | — | — |"
            else:
                speed = f.steady_s / c.steady_s if c.steady_s else None
                line += (
                    f" {f.steady_s:.2f} | {fmt(f.total_peak_rss_mb, '.0f')} "
                    f"| {fmt(speed, '.1f')}× |"
                )
        out.append(line)
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1M,10M,100M", help="parameter counts, e.g. 1M,10M,100M")
    ap.add_argument("--nodes", default="2,8", help="node counts, e.g. 2,8")
    ap.add_argument("--rounds", type=int, default=6, help="rounds per run (first reported apart)")
    ap.add_argument("--vs-flower", action="store_true", help="also run Flower 1.42 (installs it)")
    ap.add_argument("--flower-venv", type=Path, default=Path(".bench/flower-venv"))
    ap.add_argument(
        "--flower-max",
        type=parse_size,
        default=parse_size("200M"),
        help="skip Flower where params x nodes exceeds this (100M x 8 needs > 20 GB there)",
    )
    ap.add_argument("--timeout", type=float, default=900.0, help="per configuration, seconds")
    ap.add_argument("--keep", action="store_true", help="keep the work folders (logs)")
    ap.add_argument(
        "--app-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="more run config for transport_app, e.g. accumulate=input",
    )
    ap.add_argument(
        "--py-spy",
        metavar="EXE",
        help="profile the server and node n1 with this py-spy (files kept with --keep)",
    )
    ap.add_argument(
        "--stages",
        action="store_true",
        help="time the transport's stages in the server and nodes (CONSORTIUM_STAGE_TIMES)",
    )
    ap.add_argument("--json", type=Path, help="write the table as JSON")
    args = ap.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",") if s]
    node_counts = [int(n) for n in args.nodes.split(",") if n]

    flower_python = ensure_flower_venv(args.flower_venv) if args.vs_flower else None
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="consortium-transport-") as tmp:
        pki = make_pki(Path(tmp), max(node_counts))
        for params in sizes:
            for nodes in node_counts:
                row = run_consortium(
                    params, nodes, args.rounds, pki,
                    timeout=args.timeout, keep=args.keep, py_spy=args.py_spy,
                    app_config=dict(kv.split("=", 1) for kv in args.app_config),
                    stages=args.stages,
                )  # fmt: skip
                rows.append(row)
                _progress(row)
                if flower_python is not None:
                    if params * nodes > args.flower_max:
                        skipped = Row("flower", params, nodes, args.rounds)
                        skipped.note = "not run (over --flower-max: memory)"
                        rows.append(skipped)
                    else:
                        rows.append(
                            run_flower(params, nodes, args.rounds, flower_python, args.timeout)
                        )
                    _progress(rows[-1])
        if args.keep:
            kept = Path(".bench") / "transport-runs"
            shutil.copytree(tmp, kept, dirs_exist_ok=True)
            print(f"work folders kept in {kept}", file=sys.stderr)

    print(
        f"\n### Deployment transport: {args.rounds} rounds, TLS on, loopback, "
        f"{os.cpu_count()} cores\n"
    )
    print(table(rows, args.vs_flower))
    for r in rows:
        if r.note:
            print(f"\n{r.system} {size_label(r.params)} x {r.nodes}: {r.note}")
    for r in rows:
        if r.stages:
            print(f"\nStages, {size_label(r.params)} x {r.nodes} (s per round, rounds 3+):")
            for role, found in r.stages.items():
                parts = ", ".join(
                    f"{k} {v['seconds']:.3f} (CPU {v['cpu']:.3f})"
                    for k, v in found.items()
                    if v["seconds"] >= 0.001
                )
                print(f"  {role}: {parts}")
    if args.json:
        args.json.write_text(json.dumps({"rows": [r.as_dict() for r in rows]}, indent=2))
    return 0 if all(not r.note or r.note.startswith("not run") for r in rows) else 1


def _progress(row: Row) -> None:
    print(
        f"[transport] {row.system} {size_label(row.params)} x {row.nodes}: rounds "
        f"{[round(s, 3) for s in row.round_seconds]} "
        f"(loop {[round(s, 3) for s in row.loop_seconds]}) "
        f"cpu {[round(s, 2) for s in row.cpu_seconds]} "
        f"server user/sys {[(round(u, 2), round(s, 2)) for u, s in row.server_cpu_split]} "
        f"node user/sys {[(round(u, 2), round(s, 2)) for u, s in row.node_cpu_split]} "
        f"server {fmt(row.server_peak_rss_mb, '.0f')} MB "
        f"(PSS {fmt(row.server_peak_pss_mb, '.0f')}) "
        f"(ru_maxrss server app {fmt(row.server_exact_peak_mb, '.0f')}, "
        f"node {fmt(row.node_exact_peak_mb, '.0f')}, "
        f"server app pool {fmt(row.server_pool_peak_mb, '.0f')}) "
        f"total {fmt(row.total_peak_rss_mb, '.0f')} MB; "
        f"CPU s/round { ({k: round(v, 2) for k, v in row.process_cpu.items()}) }; "
        f"load {row.load}" + (f" ({row.note})" if row.note else ""),
        file=sys.stderr,
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
