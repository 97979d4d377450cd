"""Where a deployed round's CPU goes, by whose work it is: perf over a transport.py run.

    .venv/bin/python benchmarks/round_cpu.py --size 100M --nodes 2 --json round_cpu.json

Starts ``benchmarks/transport.py`` (one size, one node count, ``--rounds``) in the
background, waits ``--warmup`` seconds (past round 2, whose first-touch costs are not
a steady round's), then records every CPU with ``perf record -a --call-graph dwarf``
for ``--seconds`` and sorts each sample by its innermost frames into the categories of
:data:`CATEGORIES`: gRPC's own copies and TLS, the kernel's TCP copies, Consortium's
copies (chunk encoding, reassembly) and CRC-32, the node app staging its reply, numpy
arithmetic (check, fold, divide, the app's change), the benchmark's own sampler, idle.
Shares are scaled to CPU seconds per round with the run's own seconds per round.

Needs Linux ``perf`` allowed to sample the whole machine (root, or
``kernel.perf_event_paranoid`` at -1); recording with DWARF call graphs costs some CPU
itself, so the rounds recorded are a little slower than the run's others.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: category -> what it is (the table's rows, in this order)
CATEGORIES = {
    "idle": "no work: the CPU waited",
    "grpc": "gRPC core: TLS, HTTP/2 framing, its bookkeeping",
    "grpc-copy": "gRPC copying: a message into its send slice, TLS frames",
    "grpc-receive-copy": "gRPC receiving: a message's slices joined into bytes",
    "kernel-copy": "kernel copies: TCP send/receive (and the checkpoint's write)",
    "kernel": "kernel, other: interrupts, softirq, futex, scheduling, page faults",
    "consortium-encode-copy": "Consortium: a chunk's bytes built (header + data)",
    "consortium-reassembly-copy": "Consortium: a chunk's data copied into the payload block",
    "crc": "Consortium: CRC-32 of each chunk (isal)",
    "app-stage-copy": "node app: its reply copied into its shared block",
    "numpy": "numpy arithmetic: NaN check, fold, divide, the node app's change",
    "malloc": "malloc/free",
    "python": "the Python interpreter",
    "sampler": "the benchmark's sampler reading PSS (smaps_rollup)",
    "other": "anything else",
}


def classify(frames: list[str]) -> str:
    """The category of one sample, from its frames (innermost first, as ``perf script``
    prints them: ``address symbol (object)``)."""
    top = frames[0] if frames else ""

    def near(text: str, depth: int = 6) -> bool:
        return any(text in f for f in frames[:depth])

    if "safe_halt" in top or "cpuidle" in top or "do_idle" in top:
        return "idle"
    if "_erms" in top or "memcpy" in top or "memmove" in top:
        if near("contig_to_contig"):
            return "app-stage-copy"
        if near("memory_ass_sub"):
            return "consortium-reassembly-copy"
        if near("stringlib_bytes_join") or near("PyBytes_FromStringAndSize"):
            # gRPC joins a received message into bytes; Python code joins a chunk's parts
            return "grpc-receive-copy" if near("cygrpc", 3) else "consortium-encode-copy"
        return "grpc-copy" if near("cygrpc") else "other"
    if "crc32" in top:
        return "crc"
    if "smaps" in top or near("smaps", 3):
        return "sampler"
    if "_copy_to_iter" in top or "_copy_from_iter" in top or "copy_folio" in top:
        return "kernel-copy"
    if "FLOAT_" in top or "DOUBLE_" in top:
        return "numpy"
    if "cygrpc" in top:
        return "grpc"
    if "kernel.kallsyms" in top:
        return "kernel"
    if "malloc" in top or "free" in top or "_int_" in top:
        return "malloc"
    if "libpython" in top:
        return "python"
    return "other"


def split_samples(script: str) -> list[list[str]]:
    """``perf script`` output as one list of frames per sample (the header line dropped)."""
    out = []
    for block in script.split("\n\n"):
        lines = [line.strip() for line in block.strip().splitlines() if line.strip()]
        if len(lines) >= 2:
            out.append(lines[1:])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="100M", help="parameters, as transport.py's --sizes")
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=12, help="enough to outlast the recording")
    ap.add_argument("--warmup", type=float, default=20.0, help="seconds before recording")
    ap.add_argument("--seconds", type=float, default=4.0, help="seconds recorded")
    ap.add_argument("--json", type=Path, help="write the table as JSON")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="round-cpu-") as work:
        run_json, data = Path(work) / "transport.json", Path(work) / "perf.data"
        transport = subprocess.Popen(
            [sys.executable, str(HERE / "transport.py"), "--sizes", args.size,
             "--nodes", str(args.nodes), "--rounds", str(args.rounds), "--json", str(run_json)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(args.warmup)
        if transport.poll() is not None:
            sys.exit("transport.py ended before the recording: raise --rounds")
        subprocess.run(
            ["perf", "record", "-q", "-a", "--call-graph", "dwarf,16384", "-F", "499",
             "-o", str(data), "--", "sleep", str(args.seconds)],
            check=True,
        )  # fmt: skip
        script = subprocess.run(
            ["perf", "script", "-i", str(data), "-F", "comm,tid,ip,sym,dso"],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        if transport.wait() != 0:
            sys.exit("transport.py failed")
        row = json.loads(run_json.read_text())["rows"][0]
    samples = split_samples(script)
    counts = Counter(classify(frames) for frames in samples)
    seconds_per_round = float(row["steady_round_s"])
    cpus = len(samples) / (args.seconds * 499)  # CPUs recorded: samples per CPU-second
    scale = cpus * seconds_per_round / len(samples)  # a sample's share of a round's CPU-s
    print(
        f"### Where a {args.size} x {args.nodes} round's CPU goes ({seconds_per_round:.2f} "
        f"s/round, {len(samples)} samples on ~{cpus:.1f} CPUs)\n"
    )
    print("| category | share | CPU-s per round | what |")
    print("|---|---:|---:|---|")
    table = []
    for name, what in CATEGORIES.items():
        share = counts[name] / len(samples)
        table.append({"category": name, "share": share, "cpu_s_per_round": counts[name] * scale})
        print(f"| {name} | {100 * share:.1f} % | {counts[name] * scale:.2f} | {what} |")
    if args.json:
        args.json.write_text(json.dumps(
            {"size": args.size, "nodes": args.nodes, "seconds_per_round": seconds_per_round,
             "samples": len(samples), "rows": table}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
