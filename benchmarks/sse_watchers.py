"""Do many dashboard watchers slow a deployed run? Round times with 0 and with N SSE streams.

    python benchmarks/sse_watchers.py                        # 10 rounds, 0 vs 200 watchers, x2
    python benchmarks/sse_watchers.py --rounds 20 --watchers 500 --repeats 3 --json out.json

Starts ``consortium local`` (a CA, a server with the REST API, the four
heart-disease hospitals as ``consortium node`` processes, all on loopback with
mutual TLS), then runs the heart-disease app for ``--rounds`` rounds, first with
nobody watching, then with ``--watchers`` concurrent ``GET /api/v1/runs/{id}/events``
streams opened as the run starts (asyncio over raw sockets, in this one process:
each watcher reads every event until ``run_finished``), alternating the two
``--repeats`` times so a noisy machine hurts both alike. A round's time is the
server's own record (``seconds`` in ``/metrics``, from its first task sent to
its last reply folded); the table shows the median over every round of every
repeat, the run's wall time (start to ``finished``), and the ratio with/without
watchers (the issue's target: under 1.05), and the CPU time of the server
process and of its REST API process (``consortium server --http`` serves the
API from a process of its own; "of which connecting" is the API process's CPU
until every watcher had its response headers: accepting, authenticating and
opening the 200 streams, apart from streaming the rounds to them). Round 1 is left out of the round
times: it pays for starting the run on every node (fetching the bundle, starting
the app process, loading the data) and varies by seconds. Every watcher must
have seen every round and the run's end, or the benchmark fails. The load
average is printed before and after: on a shared machine, compare runs at
similar loads.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

from consortium import ControlClient
from local_federation import start_local

ROOT = Path(__file__).resolve().parents[1]
HEART = ROOT / "examples" / "heart_disease"


@dataclass
class Trial:
    """One run: how many watched it, its round times, and what the watchers saw."""

    watchers: int
    run_id: str
    round_seconds: list[float]
    wall_seconds: float
    #: watchers that saw every round and the run's end
    complete: int = 0
    events: int = 0
    #: CPU seconds the server process spent on the run (all its threads: gRPC, runs)
    server_cpu: float = 0.0
    #: CPU seconds the REST API process spent on the run (the watchers' streams)
    api_cpu: float = 0.0
    #: of which until every watcher's stream had its response headers (connecting,
    #: authenticating, the first read): the rest is the run's rounds
    api_connect_cpu: float = 0.0
    #: CPU seconds this process (the watchers' client: 200 browsers elsewhere in life)
    #: spent on the run, on the same cores
    client_cpu: float = 0.0


@dataclass
class Result:
    rounds: int
    watchers: int
    repeats: int
    trials: list[Trial] = field(default_factory=list)
    #: the 1-minute load average before and after
    load: list[float] = field(default_factory=list)

    def rounds_of(self, watchers: int) -> list[float]:
        return [s for t in self.trials if t.watchers == watchers for s in t.round_seconds]

    def walls_of(self, watchers: int) -> list[float]:
        return [t.wall_seconds for t in self.trials if t.watchers == watchers]

    def cpu_per_round(self, watchers: int, who: str = "server") -> float:
        """CPU seconds per round (whole runs, round 1 included) of ``who``: the server
        process, the API process or the watchers' client."""
        trials = [t for t in self.trials if t.watchers == watchers]
        spent = sum({"server": t.server_cpu, "api": t.api_cpu, "client": t.client_cpu}[who]
                    for t in trials)  # fmt: skip
        return spent / (len(trials) * self.rounds)

    def api_connect_per_round(self, watchers: int) -> float:
        """Of :meth:`cpu_per_round` of the API process: connecting the watchers."""
        trials = [t for t in self.trials if t.watchers == watchers]
        return sum(t.api_connect_cpu for t in trials) / (len(trials) * self.rounds)


async def _watch(
    host: str, port: int, path: str, token: str, rounds: int, heads: Heads
) -> tuple[bool, int]:
    """One SSE stream, read to its end: (saw every round and the end, events read)."""
    reader, writer = await asyncio.open_connection(host, port)
    request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}"
               "\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n")  # fmt: skip
    writer.write(request.encode())
    await writer.drain()
    seen, events, ended, head = set(), 0, False, True
    try:
        while not ended:
            line = await reader.readline()
            if not line:
                break
            text = line.decode("utf-8", "replace").strip()
            if head and not text:  # the end of the response's headers
                head = False
                heads.arrived()
            if text.startswith("event: "):
                events += 1
                ended = text == "event: run_finished"
            elif text.startswith("id: "):
                seen.add(text[4:])
    finally:
        writer.close()
    return ended and len(seen) == rounds, events


class Heads:
    """Counts the streams whose response headers arrived; at the last, the API process's
    CPU time (what connecting the watchers cost it, apart from streaming the rounds)."""

    def __init__(self, count: int, api: psutil.Process) -> None:
        self.left = count
        self.api = api
        self.cpu = 0.0

    def arrived(self) -> None:
        self.left -= 1
        if self.left == 0:
            self.cpu = _cpu(self.api)


async def _watch_all(
    url: str, token: str, run_id: str, count: int, rounds: int, heads: Heads
) -> list[Any]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = f"/api/v1/runs/{run_id}/events"
    tasks = [asyncio.create_task(_watch(host, port, path, token, rounds, heads))
             for _ in range(count)]  # fmt: skip
    return list(await asyncio.gather(*tasks))


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _trial(
    client: ControlClient,
    url: str,
    token: str,
    rounds: int,
    watchers: int,
    server: psutil.Process,
    api: psutil.Process,
) -> Trial:
    me = psutil.Process()  # the watchers' client
    started, cpu, api_cpu, client_cpu = time.monotonic(), _cpu(server), _cpu(api), _cpu(me)
    api_start = api_cpu
    run_id = client.start_run("heart-disease", {"num-rounds": rounds}, seed=7)
    outcomes: list[Any] = []
    heads = Heads(watchers, api)
    if watchers:
        outcomes = asyncio.run(_watch_all(url, token, run_id, watchers, rounds, heads))
    info = client.wait(run_id)
    wall, cpu, api_cpu = time.monotonic() - started, _cpu(server) - cpu, _cpu(api) - api_cpu
    client_cpu = _cpu(me) - client_cpu
    if info["status"] != "finished":
        raise SystemExit(f"run {run_id} ended {info['status']}: {info.get('error')}")
    # round 1 pays for the run's start on every node (bundle, app process, data): left out
    seconds = [float(r["seconds"]) for r in info["rounds"] if r["round"] > 1]
    trial = Trial(watchers, run_id, seconds, wall, server_cpu=cpu, api_cpu=api_cpu,
                  client_cpu=client_cpu)  # fmt: skip
    if watchers and heads.left == 0:
        trial.api_connect_cpu = heads.cpu - api_start
    trial.complete = sum(1 for ok, _ in outcomes if ok)
    trial.events = sum(n for _, n in outcomes)
    if watchers and trial.complete != watchers:
        raise SystemExit(f"only {trial.complete} of {watchers} watchers saw the whole run")
    return trial


def measure(
    rounds: int, watchers: int, repeats: int, directory: Path, client_nice: int = 0
) -> Result:
    local = start_local(directory, HEART)
    url, token = local.url, local.token
    os.nice(client_nice)  # after `consortium local` started: the federation keeps its own
    result = Result(rounds, watchers, repeats)
    try:
        client = local.client()
        local.wait_online()
        server, api = local.server(), local.api()
        _trial(client, url, token, 2, 0, server, api)  # warm-up: imports, first connections
        result.load.append(os.getloadavg()[0])
        for _ in range(repeats):
            for count in (0, watchers):
                trial = _trial(client, url, token, rounds, count, server, api)
                result.trials.append(trial)
                median = statistics.median(trial.round_seconds)
                print(f"  {count:4d} watchers: median round {median:.3f} s, "
                      f"run {trial.wall_seconds:.2f} s", file=sys.stderr)  # fmt: skip
        result.load.append(os.getloadavg()[0])
    finally:
        local.stop()
    return result


def table(result: Result) -> str:
    base = statistics.median(result.rounds_of(0))
    base_wall = statistics.median(result.walls_of(0))
    lines = [
        f"heart-disease, 4 nodes, {result.rounds} rounds x {result.repeats} runs per row "
        "(round times: rounds 2 and on); load average "
        + " -> ".join(f"{x:.1f}" for x in result.load),
        f"{'watchers':>8}  {'median round s':>14}  {'mean round s':>12}  {'median run s':>12}"
        f"  {'round ratio':>11}  {'run ratio':>9}  {'server CPU ms/round':>19}"
        f"  {'API CPU ms/round':>16}  {'of which connecting':>19}  {'client CPU ms/round':>19}",
    ]
    for count in (0, result.watchers):
        rounds = result.rounds_of(count)
        median, wall = statistics.median(rounds), statistics.median(result.walls_of(count))
        mean = statistics.fmean(rounds)
        cells = [f"{count:>8}", f"{median:>14.3f}", f"{mean:>12.3f}", f"{wall:>12.2f}",
                 f"{median / base:>11.3f}", f"{wall / base_wall:>9.3f}",
                 f"{1000 * result.cpu_per_round(count):>19.1f}",
                 f"{1000 * result.cpu_per_round(count, 'api'):>16.1f}",
                 f"{1000 * result.api_connect_per_round(count):>19.1f}",
                 f"{1000 * result.cpu_per_round(count, 'client'):>19.1f}"]  # fmt: skip
        lines.append("  ".join(cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--watchers", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="Also write the figures here.")
    parser.add_argument(
        "--client-nice",
        type=int,
        default=0,
        help="Run the watchers' client (this process, standing in for browsers that are "
        "elsewhere in life) this much nicer than the federation it watches [default: 0].",
    )
    args = parser.parse_args()
    # a SIGTERM (timeout, Ctrl-C's cousin) still stops `consortium local` and its nodes
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="sse-bench-") as tmp:
        result = measure(args.rounds, args.watchers, args.repeats, Path(tmp), args.client_nice)
    print(table(result))
    if args.json is not None:
        medians = {str(c): statistics.median(result.rounds_of(c)) for c in (0, args.watchers)}
        ratio = medians[str(args.watchers)] / medians["0"]
        summary = {"median_round_s": medians, "round_ratio": ratio}
        args.json.write_text(json.dumps({**asdict(result), **summary}, indent=2))


if __name__ == "__main__":
    main()
