"""The simulation benchmark's workload (logreg-20, sim_consortium.py) on the Ray backend.

    python benchmarks/sim_ray.py --nodes 1000                     # a local Ray, started for it
    python benchmarks/sim_ray.py --nodes 1000 --backend threads   # the same run, threads
    python benchmarks/sim_ray.py --nodes 100000 --nodes-per-task 500   # batches of 500 nodes
    python benchmarks/sim_ray.py --nodes 100000 --ray-address HOST:PORT

Prints one JSON line: start-up (Ray's included), run and per-round seconds,
the final model's digest (equal across backends for one seed), the driver's
peak RSS and, on a local Ray, each raylet's RSS at the end and the peak RSS
of all Ray processes (raylets, GCS, agents, workers) sampled during the run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import psutil  # noqa: E402

from consortium import Arrays, FedAvg, ServerApp, ServerConfig  # noqa: E402
from consortium.simulation import run_simulation  # noqa: E402
from sim_consortium import FEATURES  # noqa: E402

MB = 1024 * 1024


class TreeSampler:
    """Peak summed RSS of this process's descendants (a local Ray's processes), sampled."""

    def __init__(self, every: float = 0.5) -> None:
        self.peak = 0
        self.raylet_peaks: dict[int, int] = {}  # pid -> peak RSS
        self._stop = threading.Event()
        self._every = every
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(self._every):
            procs = me.children(recursive=True)
            sizes = [(p, _rss(p)) for p in procs]
            self.peak = max(self.peak, sum(size for _, size in sizes))
            for proc, size in sizes:
                if _name(proc) == "raylet":
                    self.raylet_peaks[proc.pid] = max(self.raylet_peaks.get(proc.pid, 0), size)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _rss(proc: psutil.Process) -> int:
    try:
        return int(proc.memory_info().rss)
    except psutil.Error:
        return 0


def _name(proc: psutil.Process) -> str:
    try:
        return str(proc.name())
    except psutil.Error:
        return ""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", choices=["ray", "threads"], default="ray")
    parser.add_argument("--ray-address")
    parser.add_argument("--nodes-per-task", type=int, default=1, help="ray-nodes-per-task")
    args = parser.parse_args()
    initial = Arrays({"weight": np.zeros((1, FEATURES)), "bias": np.zeros(1)})
    server_app = ServerApp(
        lambda ctx: ServerConfig(
            FedAvg(initial_arrays=initial, fraction_evaluate=0.0, min_available_nodes=args.nodes),
            num_rounds=args.rounds,
            min_reply_fraction=1.0,
        )
    )
    sampler = TreeSampler()
    started = time.perf_counter()
    result = run_simulation(
        server_app,
        "sim_consortium:client_app",
        num_nodes=args.nodes,
        seed=args.seed,
        backend=args.backend,
        app_path=[str(HERE)],
        run_config={"ray-nodes-per-task": args.nodes_per_task},
        ray_address=args.ray_address,
    )
    finished = time.perf_counter()
    sampler.stop()
    rounds = [r.seconds for r in result.history.rounds]
    digest = hashlib.sha256(b"".join(a.tobytes() for a in result.arrays.values())).hexdigest()
    print(
        json.dumps(
            {
                "backend": args.backend,
                "nodes": args.nodes,
                "rounds": args.rounds,
                "nodes_per_task": args.nodes_per_task,
                "total_s": round(finished - started, 2),
                "startup_s": round(finished - started - sum(rounds), 2),
                "seconds_per_round": [round(s, 3) for s in rounds],
                "model_sha256": digest[:16],
                "driver_peak_rss_mb": round(
                    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
                ),
                "ray_processes_peak_rss_mb": round(sampler.peak / MB, 1),
                "raylet_peak_rss_mb": [round(v / MB, 1) for v in sampler.raylet_peaks.values()],
            }
        )
    )


if __name__ == "__main__":
    main()
