"""The server's work on a large model's replies, on one thread and split across the CPUs.

    python benchmarks/fold.py                       # 100M params, 2 replies
    python benchmarks/fold.py --sizes 10M,100M --replies 2,8 --json fold.json

What a server's app process does with each reply of a round and then once, as
a deployed FedAvg round does it: every reply checked (``check_update``: its
layout, no NaN or inf), folded into the running sum (``WeightedMean``,
``accumulate="input"``, the replies read-only as they lie in shared memory),
and the sum divided into the mean. The replies are float32, in 8 arrays, in a
memfd (as the server receives them). Each configuration runs ``--repeat``
times on one thread (``core.parallel`` told to split nothing) and as the
library runs it (large arrays split across the process's CPUs, see
``consortium/core/parallel.py``), interleaved; the table gives the medians,
and the ratio. The last reply's check, fold and division are what a round
waits for between the last upload and the next model going out.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from consortium.core import parallel  # noqa: E402
from consortium.core.arrays import Arrays  # noqa: E402
from consortium.server.validate import check_update  # noqa: E402
from consortium.strategy import WeightedMean  # noqa: E402
from transport_report import parse_size, size_label  # noqa: E402

ARRAYS = 8


def replies(params: int, count: int) -> list[Arrays]:
    """``count`` read-only float32 models of ``params`` values in ARRAYS arrays, in memfds."""
    sizes = [params // ARRAYS + (1 if i < params % ARRAYS else 0) for i in range(ARRAYS)]
    out = []
    for r in range(count):
        fd = os.memfd_create(f"reply-{r}")
        os.ftruncate(fd, params * 4)
        block = np.frombuffer(mmap.mmap(fd, params * 4), dtype=np.float32)
        block[:] = np.float32(0.5 + r)
        block.setflags(write=False)
        offsets = np.cumsum([0, *sizes])
        out.append(Arrays((f"layer{i}", block[offsets[i] : offsets[i + 1]])
                          for i in range(ARRAYS)))  # fmt: skip
    return out


def one_round(template: Arrays, updates: list[Arrays]) -> dict[str, float]:
    """Seconds of the checks, the folds and the division of one round."""
    mean = WeightedMean(accumulate="input")
    check = fold = 0.0
    for update in updates:
        start = time.perf_counter()
        check_update(template, update)
        middle = time.perf_counter()
        mean.add(update, 100.0)
        check += middle - start
        fold += time.perf_counter() - middle
    start = time.perf_counter()
    result = mean.result()
    divide = time.perf_counter() - start
    assert result is not None
    return {"check": check, "fold": fold, "divide": divide, "total": check + fold + divide}


def measure(params: int, count: int, repeat: int) -> dict[str, Any]:
    updates = replies(params, count)
    template = updates[0]
    split_min = parallel.SPLIT_MIN_ELEMENTS
    runs: dict[str, list[dict[str, float]]] = {"one thread": [], "split": []}
    for _ in range(repeat + 1):  # the first of each warms the pages and the pool
        for mode in runs:
            parallel.SPLIT_MIN_ELEMENTS = split_min if mode == "split" else 1 << 62
            runs[mode].append(one_round(template, updates))
    parallel.SPLIT_MIN_ELEMENTS = split_min
    result: dict[str, Any] = {"params": params, "replies": count, "repeat": repeat,
                              "threads": parallel.split_parts(params // ARRAYS)}  # fmt: skip
    for mode, rows in runs.items():
        result[mode] = {k: statistics.median(r[k] for r in rows[1:]) for k in rows[0]}
    result["speed_up"] = result["one thread"]["total"] / result["split"]["total"]
    return result


def table(results: list[dict[str, Any]]) -> str:
    out = [
        "| params | replies | threads | check ms | fold ms | divide ms | total ms "
        "| one thread: total ms | speed-up |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        s, o = r["split"], r["one thread"]
        out.append(
            f"| {size_label(r['params'])} | {r['replies']} | {r['threads']} "
            f"| {s['check'] * 1e3:.0f} | {s['fold'] * 1e3:.0f} | {s['divide'] * 1e3:.0f} "
            f"| {s['total'] * 1e3:.0f} | {o['total'] * 1e3:.0f} | {r['speed_up']:.2f}× |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100M")
    ap.add_argument("--replies", default="2")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    results = [
        measure(parse_size(size), int(count), args.repeat)
        for size in args.sizes.split(",")
        for count in args.replies.split(",")
    ]
    print(f"\n### The server's check, fold and division of a round ({args.repeat} runs)\n")
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
