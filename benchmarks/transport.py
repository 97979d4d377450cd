"""Deployment transport: seconds per round and memory for big models, TLS on.

    python benchmarks/transport.py                          # 1M, 10M, 100M params x 2, 8 nodes
    python benchmarks/transport.py --sizes 1M,10M --nodes 2 --json out.json
    python benchmarks/transport.py --vs-flower              # + Flower 1.42 (SuperLink/SuperNodes)
    python benchmarks/transport.py --sizes 100M --nodes 2 --patch recommended

Each configuration starts real processes on loopback with the CLI, exactly as
an operator would: ``consortium ca init/issue`` once, then ``consortium server``
(mutual TLS), N x ``consortium node`` and ``consortium run start`` of the app in
``benchmarks/transport_app`` (a model of P float32 parameters in 8 tensors;
every node returns what it received plus a small deterministic change; FedAvg;
no evaluation). Seconds per round: round 1 is the round loop's own record (it
also pays for importing the app and opening the streams); rounds 2, 3, ... are
the wall time between two round ends, as the app's central evaluation stamps
them (the server's per-round checkpoint included); the table shows their
median. The loop's own records (no checkpoint) are kept in the JSON. The app
reports each process's CPU seconds and ``ru_maxrss``: CPU s per steady round
(server + nodes; unlike wall time it hardly moves when other programs share
the machine) and the server's exact peak. Server + nodes RSS is also sampled
every 50 ms, and the peak of the sum is reported.

Flower runs the same workload (``peers/flower_transport``): flower-superlink +
N flower-supernodes on loopback (Flower's deployment has no TLS here: insecure
mode, which flatters it), FedAvg from ``flwr.serverapp.strategy``.

``--patch NAME`` runs the server and nodes with an experimental change applied
in memory (see ``PATCHES``): how the proposals in docs/benchmarks.md were
measured before they were applied to the code.
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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
APP_DIR = HERE / "transport_app"
FLOWER_DIR = HERE / "peers" / "flower_transport"
sys.path.insert(0, str(HERE / "peers"))

from flower_env import ensure_flower_venv, flower_env, run_measured  # noqa: E402

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
    server_peak_rss_mb: float | None = None
    total_peak_rss_mb: float | None = None
    #: ru_maxrss of the server and (mean over nodes) of a node, as the app reported them
    server_exact_peak_mb: float | None = None
    node_exact_peak_mb: float | None = None
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
    """Samples the RSS of named process trees every ``SAMPLE_S`` seconds; keeps the peaks."""

    def __init__(self) -> None:
        self.groups: dict[str, psutil.Process] = {}
        self.peak: dict[str, int] = {}
        self.peak_total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def add(self, name: str, pid: int) -> None:
        self.groups[name] = psutil.Process(pid)
        self.peak.setdefault(name, 0)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        total = 0
        for name, root in list(self.groups.items()):
            rss = 0
            with contextlib.suppress(psutil.Error):
                for p in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        rss += p.memory_info().rss
            self.peak[name] = max(self.peak[name], rss)
            total += rss
        self.peak_total = max(self.peak_total, total)

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self.sample()


def _consortium_cmd(patches: list[str]) -> list[str]:
    if not patches:
        exe = Path(sys.executable).with_name("consortium")
        return [str(exe)] if exe.exists() else [sys.executable, "-m", "consortium.cli.main"]
    cmd = [sys.executable, str(Path(__file__).resolve()), "--as-cli"]
    for p in patches:
        cmd += ["--patch", p]
    return [*cmd, "--"]


def _spawn(cmd: list[str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as fh:
        return subprocess.Popen(
            cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
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
    cli = _consortium_cmd([])
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
    patches: list[str],
    timeout: float,
    keep: bool,
    py_spy: str | None = None,
    app_config: dict[str, str] | None = None,
) -> Row:
    row = Row("consortium", params, nodes, rounds)
    work = Path(tempfile.mkdtemp(prefix=f"tb-{size_label(params)}-{nodes}-", dir=pki))
    cli = _consortium_cmd(patches)
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
            work / "server.out", work,
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
                work / f"n{i}.out", work,
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
            [*_consortium_cmd([]), "run", "start", str(APP_DIR), "--server", address,
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
        row.server_peak_rss_mb = max(
            sampler.peak.get("server", 0) / MB, row.server_exact_peak_mb or 0.0
        )
        row.total_peak_rss_mb = sampler.peak_total / MB
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
        # wall time between round ends: what a user waits per round, checkpoints included
        row.round_seconds = [row.loop_seconds[0], *(b - a for a, b in itertools.pairwise(ends))]
    else:
        row.round_seconds = list(row.loop_seconds)
    cpu = [
        r["metrics"].get("central_cpu_s", 0.0) + row.nodes * r["metrics"].get("train_cpu_s", 0.0)
        for r in rounds
    ]
    row.cpu_seconds = [b - a for a, b in itertools.pairwise(cpu)]
    if rounds:
        last = rounds[-1]["metrics"]
        row.server_exact_peak_mb = last.get("central_maxrss_mb")
        row.node_exact_peak_mb = last.get("train_maxrss_mb")


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
        "| server peak MB | server ÷ model | server+nodes peak MB |"
        + (" Flower s/round | Flower peak MB | speed-up |" if vs_flower else ""),
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        + ("---:|---:|---:|" if vs_flower else ""),
    ]
    for c in (r for r in rows if r.system == "consortium"):
        ratio = c.server_peak_rss_mb / c.model_mb if c.server_peak_rss_mb else None
        line = (
            f"| {size_label(c.params)} | {c.model_mb:.0f} | {c.nodes} | {fmt(c.first_s, '.3f')} "
            f"| {fmt(c.steady_s, '.3f')} | {fmt(c.steady_cpu_s, '.2f')} "
            f"| {fmt(c.throughput_mb_s, '.0f')} | {fmt(c.server_peak_rss_mb, '.0f')} "
            f"| {fmt(ratio, '.2f')}× | {fmt(c.total_peak_rss_mb, '.0f')} |"
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
    ap.add_argument("--rounds", type=int, default=4, help="rounds per run (first reported apart)")
    ap.add_argument("--vs-flower", action="store_true", help="also run Flower 1.42 (installs it)")
    ap.add_argument("--flower-venv", type=Path, default=Path(".bench/flower-venv"))
    ap.add_argument(
        "--flower-max",
        type=parse_size,
        default=parse_size("200M"),
        help="skip Flower where params x nodes exceeds this (100M x 8 needs > 20 GB there)",
    )
    ap.add_argument(
        "--patch",
        action="append",
        default=[],
        help="experimental change (see PATCHES; 'recommended' = the proposed set)",
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
    ap.add_argument("--json", type=Path, help="write the table as JSON")
    args = ap.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",") if s]
    node_counts = [int(n) for n in args.nodes.split(",") if n]
    args.patch = [q for p in args.patch for q in (RECOMMENDED if p == "recommended" else [p])]
    unknown = [p for p in args.patch if p not in PATCHES]
    if unknown:
        ap.error(f"unknown --patch {unknown}; known: recommended, {', '.join(PATCHES)}")

    flower_python = ensure_flower_venv(args.flower_venv) if args.vs_flower else None
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="consortium-transport-") as tmp:
        pki = make_pki(Path(tmp), max(node_counts))
        for params in sizes:
            for nodes in node_counts:
                row = run_consortium(
                    params, nodes, args.rounds, pki,
                    patches=args.patch, timeout=args.timeout, keep=args.keep, py_spy=args.py_spy,
                    app_config=dict(kv.split("=", 1) for kv in args.app_config),
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

    patched = f", patches: {', '.join(args.patch)}" if args.patch else ""
    print(
        f"\n### Deployment transport: {args.rounds} rounds, TLS on, loopback, "
        f"{os.cpu_count()} cores{patched}\n"
    )
    print(table(rows, args.vs_flower))
    for r in rows:
        if r.note:
            print(f"\n{r.system} {size_label(r.params)} x {r.nodes}: {r.note}")
    if args.json:
        args.json.write_text(
            json.dumps({"patches": args.patch, "rows": [r.as_dict() for r in rows]}, indent=2)
        )
    return 0 if all(not r.note or r.note.startswith("not run") for r in rows) else 1


def _progress(row: Row) -> None:
    print(
        f"[transport] {row.system} {size_label(row.params)} x {row.nodes}: rounds "
        f"{[round(s, 3) for s in row.round_seconds]} "
        f"(loop {[round(s, 3) for s in row.loop_seconds]}) "
        f"cpu {[round(s, 2) for s in row.cpu_seconds]} "
        f"server {fmt(row.server_peak_rss_mb, '.0f')} MB "
        f"total {fmt(row.total_peak_rss_mb, '.0f')} MB" + (f" ({row.note})" if row.note else ""),
        file=sys.stderr,
        flush=True,
    )


# -- experimental patches (measured here before being proposed for the code) ------------------
# Each one applies, in memory and in the server/node processes only, a change
# proposed in docs/benchmarks.md ("Deployment transport"), so its effect can be
# measured against the code as it is: `--patch numpy-buffers --patch raw-chunks`.


def _alloc(n: int) -> Any:
    """n bytes (uint8 ndarray) for the patches; ``buffer-pool`` replaces it."""
    import numpy as np

    return np.empty(n, dtype=np.uint8)


def _alloc_like(shape: Any, dtype: Any) -> Any:
    import numpy as np

    dt = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    return _alloc(count * dt.itemsize).view(dt).reshape(shape)


class BufferPool:
    """Reuses model-sized buffers instead of asking the OS for fresh memory each round.

    On this machine kind (a VM) the first touch of memory the guest has not
    used recently costs ~3.5 s per GB of system time (the host backs it page
    by page); memory the process just freed is ~20x cheaper. A buffer handed
    out is an ndarray view of a pooled base; when the last reference to the
    view (and so to anything built on it) goes, the base returns to the pool.
    Idle buffers are kept up to ``max_idle`` bytes.
    """

    def __init__(self, min_bytes: int = 16 * MB, max_idle: int = 2048 * MB) -> None:
        self.min_bytes, self.max_idle = min_bytes, max_idle
        self._free: dict[int, list[Any]] = {}
        self._idle = 0
        self._lock = threading.Lock()

    def empty(self, n: int) -> Any:
        import weakref

        import numpy as np

        if n < self.min_bytes:
            return np.empty(n, dtype=np.uint8)
        with self._lock:
            stack = self._free.get(n)
            base = stack.pop() if stack else None
            if base is not None:
                self._idle -= n
        if base is None:
            base = np.empty(n, dtype=np.uint8)
        view = base[:]
        weakref.finalize(view, self._release, base)
        return view

    def _release(self, base: Any) -> None:
        with self._lock:
            if self._idle + base.nbytes <= self.max_idle:
                self._free.setdefault(base.nbytes, []).append(base)
                self._idle += base.nbytes


def _patch_buffer_pool() -> None:
    """Model-sized buffers of the other patches come from a :class:`BufferPool`."""
    global _alloc
    _alloc = BufferPool().empty  # type: ignore[assignment]


def _patch_numpy_buffers() -> None:
    """Large buffers from numpy (no zero fill, transparent huge pages) instead of bytearray.

    ``bytearray(n)`` zero-fills n fresh bytes in 4 KiB page faults (~1.2 GB/s
    here); ``np.empty`` is madvise(MADV_HUGEPAGE)d by numpy (~6 GB/s, filled).
    Shadows the builtin in the two modules that allocate message-sized buffers.
    """
    import builtins

    from consortium.core import message
    from consortium.transport import chunks

    class _IsBytearray(type):
        def __instancecheck__(cls, obj: object) -> bool:  # isinstance(x, bytearray) unchanged
            return isinstance(obj, builtins.bytearray)

    class empty(metaclass=_IsBytearray):  # noqa: N801 - stands in for the builtin
        def __new__(cls, n: int) -> memoryview:  # type: ignore[misc]
            return memoryview(_alloc(n))

    chunks.bytearray = empty  # type: ignore[attr-defined]
    message.bytearray = empty  # type: ignore[attr-defined]


class _RawChunk:
    """A Chunk whose ``data`` is a view of the received gRPC message (no copy)."""

    __slots__ = ("crc32", "data", "index", "last", "message_id", "total_crc32", "total_size")
    DESCRIPTOR: Any = None

    def __init__(self, message_id: str = "", total_size: int = 0, index: int = 0,
                 data: Any = b"", crc32: int = 0, last: bool = False,
                 total_crc32: int = 0) -> None:  # fmt: skip
        self.message_id, self.total_size, self.index = message_id, total_size, index
        self.data, self.crc32, self.last, self.total_crc32 = data, crc32, last, total_crc32

    @staticmethod
    def SerializeToString(chunk: Any) -> bytes:  # noqa: N802 - protobuf's name
        """Protobuf wire format of a Chunk, built with one copy of ``data``."""
        head = bytearray()
        if chunk.message_id:
            ident = chunk.message_id.encode()
            head += b"\x0a" + _varint(len(ident)) + ident
        for tag, value in ((0x10, chunk.total_size), (0x18, chunk.index)):
            if value:
                head += bytes((tag,)) + _varint(int(value))
        data = memoryview(chunk.data).cast("B")
        if len(data):
            head += b"\x22" + _varint(len(data))
        tail = bytearray()
        for tag, value in ((0x28, chunk.crc32), (0x30, int(chunk.last)), (0x38, chunk.total_crc32)):
            if value:
                tail += bytes((tag,)) + _varint(int(value))
        return b"".join((head, data, tail))

    @classmethod
    def FromString(cls, raw: bytes) -> _RawChunk:  # noqa: N802 - protobuf's name
        view = memoryview(raw)
        out = cls()
        pos, end = 0, len(raw)
        while pos < end:
            key, pos = _read_varint(raw, pos)
            number, wire = key >> 3, key & 7
            if wire == 0:
                value, pos = _read_varint(raw, pos)
                name = _VARINT_FIELDS.get(number)
                if name is not None:
                    setattr(out, name, bool(value) if name == "last" else value)
            elif wire == 2:
                size, pos = _read_varint(raw, pos)
                if pos + size > end:
                    raise ValueError("truncated length-delimited field")
                if number == 1:
                    out.message_id = bytes(view[pos : pos + size]).decode()
                elif number == 4:
                    out.data = view[pos : pos + size]
                pos += size
            else:
                raise ValueError(f"unexpected wire type {wire}")
        return out


_VARINT_FIELDS = {2: "total_size", 3: "index", 5: "crc32", 6: "last", 7: "total_crc32"}


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(raw: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(raw):
            raise ValueError("truncated varint")
        byte = raw[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _patch_raw_chunks() -> None:
    """Chunks (de)serialized by hand: one copy to send a chunk, none to parse one.

    Today a 4 MiB piece is copied by ``bytes(piece)``, again into the protobuf
    object and again by SerializeToString; parsing copies it into the protobuf
    and again into a bytes object on ``.data``. Same wire format.
    """
    import types

    from consortium.transport import chunks, grpc_server
    from consortium.transport.proto import fleet_pb2, fleet_pb2_grpc

    _RawChunk.DESCRIPTOR = fleet_pb2.Chunk.DESCRIPTOR
    shim = types.ModuleType("fleet_pb2_raw_chunks")
    shim.__dict__.update(fleet_pb2.__dict__)
    shim.Chunk = _RawChunk  # type: ignore[attr-defined]
    chunks.pb = shim  # type: ignore[attr-defined]
    grpc_server.pb = shim  # type: ignore[attr-defined]
    fleet_pb2_grpc.consortium_dot_v1_dot_fleet__pb2 = shim  # type: ignore[attr-defined]


def _patch_fold_blocked() -> None:
    """WeightedMean without a model-sized float64 scratch, mean computed in place.

    Folds in blocks of 1 Mi elements through one small scratch buffer and
    divides the float64 sums in place: 2 x model (the float64 sums) instead of
    4 x (+ 2 x more while computing the mean). Same arithmetic, same bits.
    """
    import numpy as np

    from consortium.core.arrays import Arrays
    from consortium.core.errors import UpdateRejected
    from consortium.strategy import aggregate

    block = 1 << 20

    def add(self: Any, arrays: Arrays, weight: float) -> None:
        if weight < 0 or not np.isfinite(weight):
            raise UpdateRejected(f"aggregation weight must be finite and >= 0, got {weight}")
        first = self._sums is None
        if first:
            self._sums = {}
        scratch = self._scratch.get("")
        if scratch is None:
            scratch = self._scratch[""] = np.empty(block, dtype=np.float64)
        for name, value in arrays.items():
            if first:
                self._dtypes[name] = value.dtype
                self._sums[name] = _alloc_like(value.shape, np.float64)
            acc = self._sums[name].reshape(-1)
            flat = value.reshape(-1)
            for i in range(0, flat.size, block):
                part = scratch[: min(block, flat.size - i)]
                np.multiply(flat[i : i + block], weight, out=part, casting="unsafe")
                if first:
                    acc[i : i + block] = part
                else:
                    acc[i : i + block] += part
        self.total_weight += weight
        self.count += 1

    def result(self: Any) -> Arrays | None:
        if self._sums is None or self.total_weight <= 0:
            return None
        out = Arrays()
        for name, acc in self._sums.items():
            np.divide(acc, self.total_weight, out=acc)
            out[name] = acc.astype(self._dtypes[name], copy=False)
        self._sums = None  # the sums were consumed in place
        return out

    aggregate.WeightedMean.add = add  # type: ignore[method-assign]
    aggregate.WeightedMean.result = result  # type: ignore[method-assign]


def _patch_fold_f32() -> None:
    """WeightedMean accumulating float32 parameters in float32, in place (1 x model).

    What Flower does. Relative rounding error grows with the number of nodes
    (about n x 6e-8); the float64 path stays for every other dtype.
    """
    import numpy as np

    from consortium.core.arrays import Arrays
    from consortium.core.errors import UpdateRejected
    from consortium.strategy import aggregate

    _patch_fold_blocked()
    blocked_add, blocked_result = aggregate.WeightedMean.add, aggregate.WeightedMean.result

    def add(self: Any, arrays: Arrays, weight: float) -> None:
        if any(v.dtype != np.float32 for v in arrays.values()):
            return blocked_add(self, arrays, weight)  # type: ignore[no-any-return]
        if weight < 0 or not np.isfinite(weight):
            raise UpdateRejected(f"aggregation weight must be finite and >= 0, got {weight}")
        w = np.float32(weight)
        if self._sums is None:
            self._sums = {}
            for name, value in arrays.items():
                self._dtypes[name] = value.dtype
                acc = self._sums[name] = _alloc_like(value.shape, np.float32)
                np.multiply(value, w, out=acc)
        else:
            for name, value in arrays.items():
                acc, flat = self._sums[name].reshape(-1), value.reshape(-1)
                for i in range(0, flat.size, 1 << 20):  # block-sized temporaries only
                    acc[i : i + (1 << 20)] += flat[i : i + (1 << 20)] * w
        self.total_weight += weight
        self.count += 1
        return None

    aggregate.WeightedMean.add = add  # type: ignore[method-assign]
    aggregate.WeightedMean.result = blocked_result  # type: ignore[method-assign]


def arrays_wire_parts(arrays: Any) -> list[Any]:
    """The wire form of an Arrays record as buffers: its header, then views of the arrays.

    Concatenated they equal ``arrays.to_bytes()``; nothing is copied (a
    non-contiguous array is made contiguous first).
    """
    import numpy as np

    from consortium.core import arrays as arrays_mod

    header, buffers, _ = arrays._layout()
    start = arrays_mod._align(arrays_mod._PREFIX.size + len(header))
    parts: list[Any] = [
        arrays_mod._PREFIX.pack(arrays_mod.MAGIC, len(header))
        + header
        + bytes(start - arrays_mod._PREFIX.size - len(header))
    ]
    position = 0
    for arr, offset in buffers:
        if offset > position:
            parts.append(bytes(offset - position))
        flat = np.ascontiguousarray(arr).reshape(-1)
        parts.append(memoryview(flat.view(np.uint8)))
        position = offset + int(arr.nbytes)
    return parts


def _patch_zero_copy_parts() -> None:
    """Message.to_parts sends views of the arrays instead of encoding them into a new buffer.

    The server then holds no encoded copy of the model it sends (1 x model
    less, one 400 MB copy less per round at 100M); a node replying with
    arrays it received (or computed) sends them without copying either.
    """
    from consortium.core import message

    def to_parts(self: Any, blob_cache: dict[int, Any] | None = None) -> list[Any]:
        cache = blob_cache if blob_cache is not None else {}
        encoded = []
        for arrays in self._blobs():
            blob = cache.get(id(arrays))
            if blob is None:
                blob = cache[id(arrays)] = arrays_wire_parts(arrays)
            encoded.append(blob)
        head, layout, _ = self._head([sum(len(memoryview(p)) for p in b) for b in encoded])
        parts: list[Any] = [head]
        position = 0
        for blob, (_, off, size) in zip(encoded, layout, strict=True):
            if off > position:
                parts.append(bytes(off - position))
            parts.extend(blob)
            position = off + size
        return parts

    message.Message.to_parts = to_parts  # type: ignore[method-assign]


def _patch_no_crc() -> None:
    """No CRC-32 over the payload (TLS already authenticates every byte): measures its cost."""
    from consortium.transport import chunks

    class _NoCrc:
        @staticmethod
        def crc32(data: Any, value: int = 0) -> int:
            return 0

    chunks.zlib = _NoCrc  # type: ignore[attr-defined]


def _patch_receive_budget() -> None:
    """At most ``CONSORTIUM_RECEIVE_BUDGET`` bytes (default 512 MiB) of replies being received.

    A PushResult whose announced size does not fit waits, before allocating
    anything, until another reception ends (gRPC flow control holds the node
    meanwhile); one is always admitted when none is in progress. Replies
    received but not yet folded are not counted: folding (~0.1 s per 400 MB)
    is much faster than receiving, so few wait. Needs numpy-buffers.
    """
    from consortium.transport import chunks, grpc_server

    budget = int(os.environ.get("CONSORTIUM_RECEIVE_BUDGET", str(512 * MB)))
    small = 16 * MB
    cond = threading.Condition()
    state = {"in_flight": 0}
    mine = threading.local()
    factory = chunks.bytearray  # type: ignore[attr-defined]
    if factory is bytearray:
        raise RuntimeError("receive-budget needs --patch numpy-buffers first")

    class budgeted(metaclass=type(factory)):  # noqa: N801 - stands in for the builtin
        def __new__(cls, n: int) -> memoryview:  # type: ignore[misc]
            if n >= small and getattr(mine, "receiving", False):
                with cond:
                    while state["in_flight"] and state["in_flight"] + n > budget:
                        cond.wait()
                    state["in_flight"] += n
                mine.taken = getattr(mine, "taken", 0) + n
            return memoryview(_alloc(n))

    original = grpc_server.FleetServicer.PushResult

    def push_result(self: Any, request_iterator: Any, context: Any) -> Any:
        mine.receiving, mine.taken = True, 0
        try:
            return original(self, request_iterator, context)
        finally:
            mine.receiving = False
            if mine.taken:
                with cond:
                    state["in_flight"] -= mine.taken
                    cond.notify_all()
                mine.taken = 0

    chunks.bytearray = budgeted  # type: ignore[attr-defined]
    grpc_server.FleetServicer.PushResult = push_result  # type: ignore[method-assign]


def _patch_node_drop_buffers() -> None:
    """The node lets go of a task's buffers before pulling the next task.

    ``NodeRunner._serve`` keeps ``payload``, ``task`` and ``reply`` bound
    while it waits for and receives the next task: two model-sized buffers
    alive at once. Handling one task in its own method drops them on return.
    """
    from consortium.core.message import Message
    from consortium.node import runner

    def _serve(self: Any) -> None:
        while not self.stop.is_set():
            self._flush_outbox()
            if self._rehello.is_set():
                self._connect()
            _one_task(self)

    def _one_task(self: Any) -> None:
        payload = self.client.pull_task(self.poll_wait)
        if payload is None:
            return
        task = Message.from_bytes(payload)
        reply = self._handle(task)
        self._outbox.append((reply.metadata.message_id, reply))
        self._flush_outbox()

    runner.NodeRunner._serve = _serve  # type: ignore[method-assign]


def _patch_checkpoint_direct() -> None:
    """Checkpoints written from the arrays' own memory: no model-sized buffer, one pass."""
    from consortium.server import checkpoint

    def _write(fh: Any, header: bytes, model: Any, state: Any) -> None:
        import hashlib

        digest = hashlib.sha256()

        def put(data: Any) -> None:
            digest.update(data)
            fh.write(data)

        put(checkpoint._PREFIX.pack(checkpoint.MAGIC, checkpoint.VERSION, len(header)) + header)
        put(bytes(checkpoint._pad(checkpoint._PREFIX.size + len(header))))
        for blob in (model, state):
            size = 0
            for part in arrays_wire_parts(blob):
                put(part)
                size += len(memoryview(part))
            put(bytes(checkpoint._pad(size)))
        fh.write(digest.digest())
        fh.flush()
        os.fsync(fh.fileno())

    checkpoint._write = _write  # type: ignore[attr-defined]


def _patch_trace_receive() -> None:
    """Logs, per reply received by the server: wall and handler-thread CPU seconds, and
    the share of each spent copying chunks into the buffer (diagnostics only)."""
    import logging

    from consortium.transport import chunks, grpc_server

    log = logging.getLogger("consortium.server")
    stats = threading.local()
    feed = chunks.Reassembler.feed

    def timed_feed(self: Any, chunk: Any) -> None:
        if getattr(stats, "wall", None) is None:  # a node receiving a task
            return feed(self, chunk)
        t, c = time.perf_counter(), time.thread_time()
        feed(self, chunk)
        stats.wall += time.perf_counter() - t
        stats.cpu += time.thread_time() - c
        return None

    original = grpc_server.FleetServicer.PushResult

    def push_result(self: Any, request_iterator: Any, context: Any) -> Any:
        import resource

        stats.wall = stats.cpu = 0.0
        t, c = time.perf_counter(), time.thread_time()
        r0 = resource.getrusage(resource.RUSAGE_THREAD)
        try:
            return original(self, request_iterator, context)
        finally:
            wall, cpu = stats.wall, stats.cpu
            stats.wall = None
            r1 = resource.getrusage(resource.RUSAGE_THREAD)
            log.info(
                "trace-receive: %.3f s wall, %.3f s thread CPU (%.3f user %.3f sys, %d minor "
                "faults, %d inv. switches); in feed %.3f s wall, %.3f s CPU",
                time.perf_counter() - t,
                time.thread_time() - c,
                r1.ru_utime - r0.ru_utime,
                r1.ru_stime - r0.ru_stime,
                r1.ru_minflt - r0.ru_minflt,
                r1.ru_nivcsw - r0.ru_nivcsw,
                wall,
                cpu,
            )

    chunks.Reassembler.feed = timed_feed  # type: ignore[method-assign]
    grpc_server.FleetServicer.PushResult = push_result  # type: ignore[method-assign]


def _patch_malloc_tuning() -> None:
    """glibc malloc keeps chunk-sized (4 MiB) buffers in its heap instead of mmap/munmap.

    gRPC and protobuf allocate a fresh ~4 MiB object for every chunk sent or
    received. Above glibc's mmap threshold each one is a fresh mmap (page
    faults on first touch) and a munmap on free (TLB shootdowns across the
    process's threads, and mmap_lock contention with the page faults of the
    big receive buffers). ``mallopt(M_MMAP_THRESHOLD, 64 MiB)`` and a high
    ``M_TRIM_THRESHOLD`` make glibc reuse them; model-sized buffers (>= 64
    MiB) are still mmapped and returned to the OS when freed.
    """
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 64 * MB)
    libc.mallopt(m_trim_threshold, 256 * MB)


def _patch_no_checkpoint() -> None:
    """No per-round checkpoint (RoundLoop._checkpoint does nothing): measures its cost."""
    from consortium.server import loop

    loop.RoundLoop._checkpoint = lambda self, rnd, arrays: None  # type: ignore[method-assign]


PATCHES: dict[str, Callable[[], None]] = {
    "numpy-buffers": _patch_numpy_buffers,
    "raw-chunks": _patch_raw_chunks,
    "fold-blocked": _patch_fold_blocked,
    "fold-f32": _patch_fold_f32,
    "zero-copy-parts": _patch_zero_copy_parts,
    "no-crc": _patch_no_crc,
    "receive-budget": _patch_receive_budget,
    "node-drop-buffers": _patch_node_drop_buffers,
    "trace-receive": _patch_trace_receive,
    "buffer-pool": _patch_buffer_pool,
    "no-checkpoint": _patch_no_checkpoint,
    "malloc-tuning": _patch_malloc_tuning,
    "checkpoint-direct": _patch_checkpoint_direct,
}


#: The changes proposed in docs/benchmarks.md, in an order that works (receive-budget
#: wraps numpy-buffers' allocator).
RECOMMENDED = [
    "numpy-buffers",
    "buffer-pool",
    "raw-chunks",
    "zero-copy-parts",
    "node-drop-buffers",
    "fold-f32",
    "receive-budget",
    "checkpoint-direct",
]


def _as_cli(argv: list[str]) -> None:
    """``transport.py --as-cli --patch A -- server ...``: the consortium CLI with patches."""
    patches: list[str] = []
    while argv and argv[0] == "--patch":
        patches.append(argv[1])
        argv = argv[2:]
    if argv and argv[0] == "--":
        argv = argv[1:]
    for name in patches:
        PATCHES[name]()
    from consortium.cli.main import main as cli_main

    sys.exit(cli_main(argv))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--as-cli":
        _as_cli(sys.argv[2:])
    else:
        sys.exit(main())
