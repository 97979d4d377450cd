"""What a transport benchmark run measured (:class:`Row`), read from the run's records,
and the table it prints (``benchmarks/transport.py``; ``fleet_load.py`` and
``grpc_floor.py`` share the row and the size helpers)."""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MB = 1024 * 1024


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
    #: the server tree's PSS at its peak, by process (the server itself, its app, tracking)
    server_pss_parts_mb: dict[str, float] = field(default_factory=dict)
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
        return median(rest) if rest else None

    @property
    def steady_cpu_s(self) -> float | None:
        """Median CPU seconds (all processes) of rounds 2, 3, ..."""
        return median(self.cpu_seconds) if self.cpu_seconds else None

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


def median(values: list[float]) -> float:
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


def read_rounds(row: Row, rounds: list[dict[str, Any]]) -> None:
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


def read_stages(folder: Path, ends: list[float]) -> dict[str, dict[str, dict[str, float]]]:
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
