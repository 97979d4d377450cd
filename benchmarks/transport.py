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
tree's summed PSS, which counts pages its processes share once (the summed RSS
counts them in each process that maps them), read every 0.5 s: reading a PSS walks
the process's page tables, and every 50 ms for every process it took a sixth of the
machine's CPU away from the rounds being timed. Since server and node apps run
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
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
APP_DIR = HERE / "transport_app"
FLOWER_DIR = HERE / "peers" / "flower_transport"
sys.path.insert(0, str(HERE / "peers"))
sys.path.insert(0, str(HERE))

from flower_env import ensure_flower_venv, flower_env, run_measured  # noqa: E402

from bench_processes import (  # noqa: E402
    ADMIN,
    Sampler,
    consortium_cmd,
    spawn,
    spy,
    stop,
    wait_port,
    wait_run,
)
from consortium.transport.stage_times import STAGE_TIMES_ENV  # noqa: E402
from transport_report import (  # noqa: E402
    MB,
    Row,
    fmt,
    median,
    parse_size,
    read_rounds,
    read_stages,
    size_label,
    table,
)


def make_pki(root: Path, nodes: int) -> Path:
    """A CA and credentials for the server, ``nodes`` nodes and one admin (via the CLI)."""
    cli = consortium_cmd()
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
    cli = consortium_cmd()
    port_file = work / "port"
    sampler = Sampler()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        allow = [a for i in range(1, nodes + 1) for a in ("--allow", f"n{i}")]
        server = spawn(
            [*cli, "server", "--address", "127.0.0.1:0", "--credentials",
             str(pki / "credentials" / "localhost"), "--ca-dir", str(pki / "ca"), *allow,
             "--workdir", str(work / "srv"), "--port-file", str(port_file),
             "--offline-after", "60"],
            work / "server.out", work, env,
        )  # fmt: skip
        procs.append(server)
        sampler.add("server", server.pid)
        port = wait_port(port_file, server, 60)
        address = f"127.0.0.1:{port}"
        for i in range(1, nodes + 1):
            node = spawn(
                [*cli, "node", "--server", address, "--credentials",
                 str(pki / "credentials" / f"n{i}"), "--app", str(APP_DIR),
                 "--work-dir", str(work / f"n{i}"), "--config", f"partition-id={i - 1}"],
                work / f"n{i}.out", work, env,
            )  # fmt: skip
            procs.append(node)
            sampler.add(f"n{i}", node.pid, pss=False)  # only the server's PSS is reported
        spies = [
            spy(py_spy, p.pid, work / f"{name}.pyspy.txt")
            for name, p in (("server", server), ("n1", procs[1]))
            if py_spy is not None
        ]
        sampler.start()
        overrides: dict[str, Any] = {"params": params, "min-nodes": nodes, "num-rounds": rounds}
        overrides.update(app_config or {})
        started = subprocess.run(
            [*consortium_cmd(), "run", "start", str(APP_DIR), "--server", address,
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
            read_rounds(row, info.get("rounds", []))
    finally:
        stop(procs)
        for spy in spies if "spies" in locals() else []:
            spy.wait(timeout=30)
        with contextlib.suppress(RuntimeError):
            sampler.stop()
        sampler.sample()
        row.process_cpu = _process_cpu(sampler, row.round_ends)
        if stages:
            row.stages = read_stages(stage_dir, row.round_ends)
        row.load = (row.load[0], os.getloadavg()[0]) if row.load else None
        row.server_peak_rss_mb = max(
            sampler.peak.get("server", 0) / MB, row.server_exact_peak_mb or 0.0
        )
        row.total_peak_rss_mb = sampler.peak_total / MB
        row.server_peak_pss_mb = sampler.peak_pss.get("server", 0) / MB or None
        row.server_pss_parts_mb = {
            kind: pss / MB for kind, pss in sampler.peak_pss_parts.get("server", {}).items()
        }
        if row.note:
            for log in sorted(work.glob("*.out")):
                tail = log.read_text(errors="replace").strip().splitlines()[-5:]
                print(f"--- {log.name}\n" + "\n".join(tail), file=sys.stderr)
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return row


def _follow(
    run_id: str,
    address: str,
    pki: Path,
    row: Row,
    timeout: float,
    procs: list[subprocess.Popen[bytes]],
) -> dict[str, Any] | None:
    """Poll the run until it ends; its summary (with per-round records), or None."""
    info = wait_run(pki, address, run_id, timeout, procs)
    if info is not None and info["status"] in ("pending", "running"):
        row.note = "a process exited during the run"
    return info


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
    return {k: median(v) for k, v in per_round.items()}


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
        f"(PSS {fmt(row.server_peak_pss_mb, '.0f')}: "
        f"{ {k: round(v) for k, v in row.server_pss_parts_mb.items()} }) "
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
