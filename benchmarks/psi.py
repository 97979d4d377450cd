"""Private set intersection: time and bytes of ECDH-PSI against a plain hash join.

    python benchmarks/psi.py --json psi.json            # 100k x 100k, 1M x 1M (~8 CPU min)
    python benchmarks/psi.py --quick --json quick.json  # 2k x 2k, two and three parties (s)
    PYTHONPATH=/path/to/openmined_psi python benchmarks/psi.py --sizes 20000 --openmined

Each row is one :func:`~consortium.vertical.run_psi` session through
``run_simulation`` (threads backend, one worker: the parties run one after
another in this process, so its CPU time is the protocol's total CPU; wall time
is shown too, and is the CPU time only on an otherwise idle core), between parties
of ``n`` ids each with 50% of each party's ids shared by all (``MRN`` plus nine
digits). Bytes are every task and reply the server relays, encoded as on the
wire. The floor is a plain hash join in the clear: each peer sends its ids to
the hub (their UTF-8 bytes), which joins them with a Python set and sends back
the positions (8 bytes each) -- what PSI costs over not hiding anything.

``--openmined`` adds the same two-party intersection through ``openmined-psi``
(P-256, raw set, fpr 1e-9) when it is importable, for sizes up to
``--openmined-max``. ``ops`` measures one hash-to-curve plus blinding and one
blinding alone, in CPU microseconds per id.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from consortium.client import ClientApp
from consortium.core.grid import Grid
from consortium.server import ServerApp, ServerContext
from consortium.simulation import run_simulation
from consortium.vertical import NODE_THREADS, PsiSummary, aligned_rows, register_psi, run_psi
from consortium.vertical import psi_crypto as crypto


def party_sets(n: int, parties: int) -> dict[str, list[str]]:
    """``parties`` sets of ``n`` ids; the first half of each is shared by all, the second
    half is the party's own."""
    shared = [f"MRN{i:09d}" for i in range(n // 2)]
    return {
        f"party{p}": shared + [f"MRN{(p + 1) * 10**8 + i:09d}" for i in range(n - n // 2)]
        for p in range(parties)
    }


def psi_row(n: int, parties: int, threads: int, chunk: int) -> dict[str, Any]:
    """One PSI session between ``parties`` parties of ``n`` ids: time, bytes, checks."""
    sets = party_sets(n, parties)
    client = register_psi(ClientApp(), lambda context: sets[context.node_id])
    kept: dict[str, int] = {}

    @client.handler("bench.count")
    def count(message: Any, context: Any) -> Any:
        return message.reply(config={"shared": len(aligned_rows(context))})

    server = ServerApp()
    summary: list[PsiSummary] = []

    @server.main()
    def main(grid: Grid, context: ServerContext) -> None:
        from consortium.core.message import Content, Message

        summary.append(
            run_psi(grid, run_id=context.run_id, parties=list(sets), chunk_size=chunk, timeout=None)
        )
        tasks = [
            Message.create(run_id=context.run_id, dst=p, round=1, kind="bench.count",
                           content=Content())
            for p in sets
        ]  # fmt: skip
        for reply in grid.send_and_receive(tasks, timeout=None):
            assert reply.content is not None, reply.error
            kept[reply.metadata.src] = int(reply.content.config["shared"])  # type: ignore[arg-type]

    started, cpu = time.perf_counter(), time.process_time()
    run_simulation(
        server, client, node_ids=list(sets), node_config=lambda i, _: {NODE_THREADS: threads}
    )
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    (s,) = summary
    assert s.intersection == n // 2 and set(kept.values()) == {n // 2}, (s, kept)
    floor = hash_join_floor(sets)
    relayed = s.bytes_sent + s.bytes_received
    return {
        "ids": n, "parties": parties, "shared": s.intersection, "threads": threads,
        "chunk": chunk, "seconds": s.seconds, "wall_seconds": wall, "cpu_seconds": cpu,
        "bytes_relayed": relayed, "bytes_per_id": relayed / (n * parties),
        "round_trips": s.round_trips, "bytes_from": s.bytes_from,
        "floor_seconds": floor["seconds"], "floor_cpu_seconds": floor["cpu_seconds"],
        "floor_bytes": floor["bytes"],
    }  # fmt: skip


def hash_join_floor(sets: dict[str, list[str]]) -> dict[str, float]:
    """A plain join in the clear: peers send their ids to the hub, which joins them and
    sends each peer the positions of its shared rows."""
    hub, *peers = sets.values()
    started, cpu = time.perf_counter(), time.process_time()
    shared = set(hub)
    for ids in peers:
        shared &= set(ids)
    order = sorted(shared)
    positions = [[i for i, x in enumerate(ids) if x in shared] for ids in peers]
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    sent = sum(len(x.encode()) for ids in peers for x in ids)
    assert len(order) == len(hub) // 2
    return {"seconds": seconds, "cpu_seconds": cpu,
            "bytes": sent + 8 * sum(len(p) for p in positions)}  # fmt: skip


def ops_row(count: int) -> dict[str, float]:
    """Microseconds per id: hash to the curve and blind; blind an incoming point."""
    ids = [f"MRN{i:09d}" for i in range(count)]
    hkey, key = os.urandom(32), crypto.new_key()
    started = time.process_time()
    points = crypto.hash_and_blind(ids, hkey, key)
    hashed = time.process_time() - started
    started = time.process_time()
    crypto.blind(points, crypto.new_key(), what="bench")
    blinded = time.process_time() - started
    return {"ids": count, "hash_blind_us": hashed / count * 1e6, "blind_us": blinded / count * 1e6}


def openmined_row(n: int) -> dict[str, Any] | None:
    """The same two-party intersection through openmined-psi (None if not importable)."""
    try:
        import private_set_intersection.python as om  # type: ignore[import-not-found]
    except ImportError:
        return None
    a, b = party_sets(n, 2).values()
    started, cpu = time.perf_counter(), time.process_time()
    client = om.client.CreateWithNewKey(True)
    server = om.server.CreateWithNewKey(True)
    setup = server.CreateSetupMessage(1e-9, len(b), a, om.DataStructure.RAW)
    request = client.CreateRequest(b)
    response = server.ProcessRequest(request)
    shared = client.GetIntersection(setup, response)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert len(shared) == n // 2
    sizes = [len(m.SerializeToString()) for m in (setup, request, response)]
    return {"ids": n, "seconds": seconds, "cpu_seconds": cpu, "bytes": sum(sizes),
            "version": om.__version__}  # fmt: skip


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| ids per party | parties | shared | PSI CPU s | PSI wall s | hash join CPU s "
        "| PSI MB | join MB | bytes/id | round trips |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['ids']:,} | {r['parties']} | {r['shared']:,} | {r['cpu_seconds']:.1f} "
            f"| {r['wall_seconds']:.1f} | {r['floor_cpu_seconds']:.3f} "
            f"| {r['bytes_relayed'] / 1e6:.1f} "
            f"| {r['floor_bytes'] / 1e6:.1f} | {r['bytes_per_id']:.1f} | {r['round_trips']} |"
        )
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="write the report here")
    ap.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    ap.add_argument("--sizes", type=_ints, help="ids per party (100000,1000000)")
    ap.add_argument("--parties", type=_ints, help="parties per session (2; quick: 2,3)")
    ap.add_argument("--threads", type=int, default=1, help="threads per party (psi-threads)")
    ap.add_argument("--chunk", type=int, default=1 << 18, help="points per message")
    ap.add_argument("--ops", type=int, help="ids of the per-operation timing (20000)")
    ap.add_argument("--openmined", action="store_true", help="add openmined-psi rows")
    ap.add_argument("--openmined-max", type=int, default=20_000, help="its largest size")
    args = ap.parse_args()
    sizes = args.sizes or ([2_000] if args.quick else [100_000, 1_000_000])
    parties = args.parties or ([2, 3] if args.quick else [2])
    logging.getLogger("consortium").setLevel(logging.WARNING)

    report: dict[str, Any] = {"ops": ops_row(args.ops or (2_000 if args.quick else 20_000))}
    print(f"## Per id (CPU): {report['ops']['hash_blind_us']:.0f} µs to hash and blind, "
          f"{report['ops']['blind_us']:.0f} µs to blind\n", flush=True)  # fmt: skip
    started = time.perf_counter()
    rows = []
    for n in sizes:
        for count in parties:
            rows.append(psi_row(n, count, args.threads, args.chunk))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    report["psi"] = rows
    print("\n## ECDH-PSI (Edwards25519, PyNaCl) vs a plain hash join, 50% shared\n")
    print(table(rows) + "\n")
    if args.openmined:
        om = [r for n in sizes if n <= args.openmined_max if (r := openmined_row(n))]
        report["openmined"] = om
        for r in om:
            print(f"openmined-psi {r['version']}, {r['ids']:,} x {r['ids']:,}: "
                  f"{r['cpu_seconds']:.1f} s CPU ({r['seconds']:.1f} s wall), "
                  f"{r['bytes'] / 1e6:.2f} MB")  # fmt: skip
    wall = time.perf_counter() - started
    print(f"{wall:.0f} s")
    if args.json:
        report["settings"] = {k: str(v) if isinstance(v, Path) else v
                              for k, v in vars(args).items()}  # fmt: skip
        report["wall_seconds"] = wall
        report["cpus"] = os.cpu_count()
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
