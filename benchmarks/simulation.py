"""Simulation speed and memory: Consortium vs Flower on the same workload.

    python benchmarks/simulation.py                      # Consortium, N = 10, 100, 1000, 10000
    python benchmarks/simulation.py --vs-flower          # + Flower 1.42 in its own virtualenv
    python benchmarks/simulation.py --sizes 1000 --json out.json
    python benchmarks/simulation.py --vs-revision HEAD~3 --repeat 3   # this tree vs an older one
    python benchmarks/simulation.py --sizes 10000 --backend processes --workers 2 --repeat 3

Workload "logreg-20" (see sim_consortium.py and peers/flower_sim.py): logistic
regression on 20 synthetic features, 100 rows per node, every node every
round, 5 rounds, FedAvg, no tracking. Each run is a fresh process, so wall
time includes interpreter start-up and imports; peak RSS is summed over the
whole process tree (Flower's Ray workers included). ``--backend processes``
runs Consortium's nodes in worker processes; the second table then splits the
whole tree's CPU time (driver + workers) into the nodes' own and the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "peers"))

from flower_env import ensure_flower_venv, flower_env, run_measured  # noqa: E402

MB = 1024 * 1024


@dataclass
class Row:
    system: str
    nodes: int
    wall_s: float | None
    s_per_round: float | None
    peak_rss_mb: float | None
    final_accuracy: float | None
    note: str = ""
    #: the run itself (no start-up), its CPU time, and its split (sim_consortium.py)
    run_s: float | None = None
    run_cpu_s: float | None = None
    node_compute_s: float | None = None
    framework_s: float | None = None
    framework_us_per_task: float | None = None
    #: the machine's 1-minute load average when the run started (2 cores: above ~2 it
    #: was shared with other work)
    load: float | None = None
    #: processes backend: the whole tree's CPU (driver + workers), the workers' part,
    #: the nodes' own CPU time, and the peak of the tree's summed PSS
    backend: str = "threads"
    tree_cpu_s: float | None = None
    workers_cpu_s: float | None = None
    node_cpu_s: float | None = None
    peak_pss_mb: float | None = None


def _parse(stdout: str) -> dict:  # type: ignore[type-arg]
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)  # type: ignore[no-any-return]
    raise RuntimeError(f"no JSON result in output:\n{stdout[-2000:]}")


def run_one(
    system: str, cmd: list[str], env: dict[str, str] | None, nodes: int, timeout: float
) -> Row:
    load = os.getloadavg()[0]
    m = run_measured(cmd, env, timeout)
    if not m.ok:
        note = "timed out" if m.timed_out else f"exit {m.returncode}: {m.stderr.strip()[-300:]}"
        return Row(system, nodes, m.wall_s, None, m.peak_rss_bytes / MB, None, note, load=load)
    out = _parse(m.stdout)
    per_round = out.get("seconds_per_round") or []
    rss = max(
        m.peak_rss_bytes,
        int(out.get("self_peak_rss_bytes") or 0),
        int(out.get("tree_peak_rss_bytes") or 0),
    )
    pss = out.get("tree_peak_pss_bytes")
    return Row(
        system,
        nodes,
        m.wall_s,
        sum(per_round) / len(per_round) if per_round else None,
        rss / MB,
        out.get("final_accuracy"),
        run_s=out.get("run_s"),
        run_cpu_s=out.get("run_cpu_s"),
        node_compute_s=out.get("node_compute_s"),
        framework_s=out.get("framework_s"),
        framework_us_per_task=out.get("framework_us_per_task"),
        load=load,
        backend=out.get("backend", "threads"),
        tree_cpu_s=out.get("tree_cpu_s"),
        workers_cpu_s=out.get("workers_cpu_s"),
        node_cpu_s=out.get("node_cpu_s"),
        peak_pss_mb=pss / MB if pss else None,
    )


def revision_tree(revision: str, root: Path) -> tuple[Path, str]:
    """A checkout of ``revision`` under .bench/ (made once), and its short commit id."""
    sha = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--short", revision],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    tree = root / ".bench" / f"rev-{sha}"
    if not (tree / "src").exists():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "-C", str(root), "archive", sha], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree, sha


def best(rows: list[Row]) -> Row:
    """Of repeated runs, the fastest (the least disturbed by the rest of the machine)."""
    ok = [r for r in rows if r.wall_s is not None and not r.note]
    return min(ok, key=lambda r: r.wall_s or 0.0) if ok else rows[0]


def fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10,100,1000,10000", help="comma-separated node counts")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vs-flower", action="store_true", help="also run Flower 1.42 (installs it)")
    ap.add_argument(
        "--flower-max-nodes",
        type=int,
        default=1000,
        help="largest N to run Flower on (~6 min per round at 10000)",
    )
    ap.add_argument("--flower-venv", type=Path, default=Path(".bench/flower-venv"))
    ap.add_argument("--timeout", type=float, default=1800.0, help="per run, seconds")
    ap.add_argument("--json", type=Path, help="write the table as JSON")
    ap.add_argument(
        "--vs-revision",
        metavar="REV",
        help="also run the same workload with Consortium as of git revision REV "
        "(checked out under .bench/), alternating with this tree",
    )
    ap.add_argument("--repeat", type=int, default=1, help="runs per size and system (best kept)")
    ap.add_argument(
        "--backend",
        choices=["auto", "threads", "processes"],
        default="auto",
        help="Consortium's backend (default: auto, the library's default)",
    )
    ap.add_argument("--workers", type=int, help="Consortium's threads or worker processes")
    ap.add_argument("--nodes-per-batch", type=int, help="processes backend: tasks per call")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if args.vs_revision:
        return compare_revision(args, sizes)

    flower_python = None
    if args.vs_flower:
        flower_python = ensure_flower_venv(args.flower_venv)
        home = Path(".bench/flower-home").resolve()
        home.mkdir(parents=True, exist_ok=True)
        fenv = flower_env(home)

    rows: list[Row] = []
    for n in sizes:
        common = ["--nodes", str(n), "--rounds", str(args.rounds), "--seed", str(args.seed)]
        cmd = [sys.executable, str(HERE / "sim_consortium.py"), *common, *backend_args(args)]
        runs = []
        for _ in range(args.repeat):
            runs.append(run_one("consortium", cmd, None, n, args.timeout))
            print(f"consortium N={n}: {runs[-1]}", file=sys.stderr, flush=True)
        rows.append(best(runs))
        if flower_python is not None:
            if n > args.flower_max_nodes:
                rows.append(
                    Row("flower", n, None, None, None, None, "not run (over --flower-max-nodes)")
                )
                continue
            fcmd = [str(flower_python), str(HERE / "peers" / "flower_sim.py"), *common]
            runs = []
            for _ in range(args.repeat):
                runs.append(run_one("flower", fcmd, fenv, n, args.timeout))
                print(f"flower N={n}: {runs[-1]}", file=sys.stderr, flush=True)
            rows.append(best(runs))

    print(f"\n### Simulation, logreg-20, {args.rounds} rounds (2-core machine)\n")
    header = "| N | Consortium wall s | s/round | peak RSS MB | accuracy |"
    sep = "|---:|---:|---:|---:|---:|"
    if args.vs_flower:
        header += (
            " Flower wall s | Flower s/round | Flower RSS MB | speed-up (wall) | memory ratio |"
        )
        sep += "---:|---:|---:|---:|---:|"
    print(header)
    print(sep)
    ratios = []
    for n in sizes:
        c = next(r for r in rows if r.system == "consortium" and r.nodes == n)
        line = (
            f"| {n} | {fmt(c.wall_s, '.2f')} | {fmt(c.s_per_round, '.3f')} | "
            f"{fmt(c.peak_rss_mb, '.0f')} | {fmt(c.final_accuracy, '.3f')} |"
        )
        if args.vs_flower:
            f = next(r for r in rows if r.system == "flower" and r.nodes == n)
            speed = f.wall_s / c.wall_s if f.wall_s and c.wall_s and not f.note else None
            mem = (
                f.peak_rss_mb / c.peak_rss_mb
                if f.peak_rss_mb and c.peak_rss_mb and not f.note
                else None
            )
            ratios.append({"nodes": n, "speedup_wall": speed, "memory_ratio": mem})
            wall = f.note or fmt(f.wall_s, ".2f")
            line += (
                f" {wall} | {fmt(f.s_per_round, '.3f')} | "
                f"{fmt(f.peak_rss_mb, '.0f')} | {fmt(speed, '.1f')}× | {fmt(mem, '.1f')}× |"
            )
        print(line)
        if c.note:
            print(f"\nconsortium N={n}: {c.note}")
    print_split([r for r in rows if r.system == "consortium"], args.rounds, args.repeat)
    if args.json:
        args.json.write_text(
            json.dumps(
                {"rounds": args.rounds, "rows": [asdict(r) for r in rows], "ratios": ratios},
                indent=2,
            )
        )
    return 0 if all(not r.note or r.note.startswith("not run") for r in rows) else 1


def backend_args(args: argparse.Namespace) -> list[str]:
    """sim_consortium.py's backend options, as asked (auto: its default, left unsaid so
    that an older revision runs its own default)."""
    out = [] if args.backend == "auto" else ["--backend", args.backend]
    if args.workers is not None:
        out += ["--workers", str(args.workers)]
    if args.nodes_per_batch is not None:
        out += ["--nodes-per-batch", str(args.nodes_per_batch)]
    return out


def print_split(rows: list[Row], rounds: int, repeat: int) -> None:
    """Where Consortium's run time went: the nodes' own compute (data and training, timed
    inside the handler) and the framework (everything else), per node-task too."""
    in_processes = [r for r in rows if r.backend == "processes"]
    if in_processes:
        print_process_split(in_processes, rounds, repeat)
    rows = [r for r in rows if r.backend != "processes"]
    if not rows:
        return
    print(f"\n### Where the time goes (Consortium, threads, best of {repeat}; start-up excluded)\n")
    print(
        "| N | load (1 min) | run s | run CPU s | node compute s | framework s "
        "| node µs/task | framework µs/task |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        tasks = r.nodes * rounds
        node_us = r.node_compute_s / tasks * 1e6 if r.node_compute_s is not None else None
        print(
            f"| {r.nodes} | {fmt(r.load, '.1f')} | {fmt(r.run_s, '.2f')} | "
            f"{fmt(r.run_cpu_s, '.2f')} | {fmt(r.node_compute_s, '.2f')} | "
            f"{fmt(r.framework_s, '.2f')} | {fmt(node_us, '.1f')} | "
            f"{fmt(r.framework_us_per_task, '.1f')} |"
        )


def print_process_split(rows: list[Row], rounds: int, repeat: int) -> None:
    """The processes backend: the tree's CPU time (driver + workers) against the nodes'
    own CPU time (timed inside the handler, summed across workers); the framework's
    share per task is (tree CPU − node CPU) / tasks. Memory: the tree's peak RSS sum
    (shared pages counted once per process) and peak PSS sum (counted once)."""
    print(
        f"\n### Where the time goes (Consortium, processes, best of {repeat}; start-up excluded)\n"
    )
    print(
        "| N | load (1 min) | run s | tree CPU s | driver CPU s | workers CPU s | node CPU s "
        "| node µs/task | framework µs/task | tree RSS MB | tree PSS MB |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        tasks = r.nodes * rounds
        node_us = r.node_cpu_s / tasks * 1e6 if r.node_cpu_s is not None else None
        print(
            f"| {r.nodes} | {fmt(r.load, '.1f')} | {fmt(r.run_s, '.2f')} | "
            f"{fmt(r.tree_cpu_s, '.2f')} | {fmt(r.run_cpu_s, '.2f')} | "
            f"{fmt(r.workers_cpu_s, '.2f')} | {fmt(r.node_cpu_s, '.2f')} | {fmt(node_us, '.1f')} | "
            f"{fmt(r.framework_us_per_task, '.1f')} | {fmt(r.peak_rss_mb, '.0f')} | "
            f"{fmt(r.peak_pss_mb, '.0f')} |"
        )


def compare_revision(args: argparse.Namespace, sizes: list[int]) -> int:
    """This tree against an older revision on the same workload, runs interleaved."""
    root = HERE.parent
    tree, sha = revision_tree(args.vs_revision, root)
    old_env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    table = []
    for n in sizes:
        common = ["--nodes", str(n), "--rounds", str(args.rounds), "--seed", str(args.seed)]
        now: list[Row] = []
        then: list[Row] = []
        for _ in range(args.repeat):
            cmd = [sys.executable, str(HERE / "sim_consortium.py"), *common]
            now.append(run_one("consortium", cmd, None, n, args.timeout))
            old = [sys.executable, str(tree / "benchmarks" / "sim_consortium.py"), *common]
            then.append(run_one(f"consortium@{sha}", old, old_env, n, args.timeout))
            print(f"N={n}: now {now[-1]}\n       {sha} {then[-1]}", file=sys.stderr, flush=True)
        table.append((n, best(now), best(then)))
    print(f"\n### Simulation, logreg-20, {args.rounds} rounds: this tree vs {sha} "
          f"(best of {args.repeat})\n")  # fmt: skip
    print(f"| N | wall s | s/round | peak RSS MB | {sha} wall s | {sha} s/round | "
          f"{sha} RSS MB | time now/{sha} | memory now/{sha} |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    ratios = []
    for n, c, o in table:
        speed = c.wall_s / o.wall_s if c.wall_s and o.wall_s else None
        mem = c.peak_rss_mb / o.peak_rss_mb if c.peak_rss_mb and o.peak_rss_mb else None
        ratios.append({"nodes": n, "time_ratio": speed, "memory_ratio": mem})
        print(
            f"| {n} | {fmt(c.wall_s, '.2f')} | {fmt(c.s_per_round, '.3f')} | "
            f"{fmt(c.peak_rss_mb, '.0f')} | {fmt(o.wall_s, '.2f')} | {fmt(o.s_per_round, '.3f')} | "
            f"{fmt(o.peak_rss_mb, '.0f')} | {fmt(speed, '.2f')} | {fmt(mem, '.2f')} |"
        )
    if args.json:
        rows = [asdict(r) for _, c, o in table for r in (c, o)]
        args.json.write_text(
            json.dumps(
                {"rounds": args.rounds, "baseline": sha, "rows": rows, "ratios": ratios}, indent=2
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
