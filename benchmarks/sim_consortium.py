"""Consortium side of the simulation benchmark (run in its own process by simulation.py).

Workload "logreg-20", identical to benchmarks/peers/flower_sim.py: node i holds
100 rows of 20 features drawn from default_rng([seed, i]); labels from a
shared true weight vector plus noise; each round every node runs one epoch of
minibatch SGD (batch 32, lr 0.1) on a logistic regression; FedAvg over all
nodes; 5 rounds; no tracking (Flower has none).

The result splits the run's wall time in two: the nodes' own compute (the
handler's body: building the node's data and training on it, timed inside the
handler) and everything else, the framework's cost (tasks, contexts, RNG
derivation, replies, validation, aggregation, the round loop), also given per
node-task. ``run_cpu_s`` is the process's CPU time over the run: close to
``run_s`` when the machine was quiet for this process.

``--backend processes`` runs the nodes in worker processes (``--workers``,
default one per CPU), in batches. The nodes' compute then happens in the
workers: each worker writes its handler time, task count and CPU time to a
file when it exits (``NODE_CLOCK_DIR``), and the result gives the whole tree's
CPU (driver + workers + the forkserver), the node compute summed across
workers, and the framework's CPU per task, (tree CPU − node compute) / tasks.
Memory: a thread samples the driver and its descendants every ``--sample-ms``
and reports the peak of their summed RSS and of their summed PSS (PSS splits
shared pages between the processes sharing them: the tree's real footprint);
the sampler's own CPU is left out of the driver's.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import multiprocessing.util
import os
import resource
import tempfile
import threading
import time
from pathlib import Path

T0 = time.perf_counter()

import numpy as np  # noqa: E402
import psutil  # noqa: E402

from consortium import Arrays, ClientApp, Context, FedAvg, Message, ServerApp, ServerConfig  # noqa: E402
from consortium.ml import logistic  # noqa: E402
from consortium.simulation import run_simulation  # noqa: E402
from consortium.simulation.grid import resolve_backend  # noqa: E402

FEATURES, ROWS, BATCH, LR = 20, 100, 32, 0.1
#: where worker processes write their NodeClock when they exit (set by main)
NODE_CLOCK_DIR = "SIM_CONSORTIUM_NODE_CLOCK_DIR"
HERE = Path(__file__).resolve().parent


@functools.cache
def true_weights(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=FEATURES)


def node_data(seed: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, index])
    x = rng.standard_normal((ROWS, FEATURES), dtype=np.float32)
    noise = rng.standard_normal(ROWS)
    y = (x @ true_weights(seed) + 0.5 * noise > 0).astype(np.float64)
    return x, y


client_app = ClientApp()


class NodeClock:
    """Seconds spent in the nodes' own work, and how many node tasks ran, in this process.
    The default backend runs the tasks one after another in this thread, so the sum is
    the share of the run's wall time they took; worker processes report theirs on exit."""

    seconds = 0.0
    cpu = 0.0  # the same work's CPU time (this thread's), for the processes split
    tasks = 0


def _report_clock(folder: str) -> None:
    """(In a worker process, as it exits.) Its node time, tasks and whole CPU time."""
    record = {
        "node_s": NodeClock.seconds,
        "node_cpu_s": NodeClock.cpu,
        "tasks": NodeClock.tasks,
        "cpu_s": time.process_time(),
    }
    (Path(folder) / f"{os.getpid()}.json").write_text(json.dumps(record))


if __name__ == "sim_consortium" and os.environ.get(NODE_CLOCK_DIR):
    # imported by a worker process of the processes backend: report when it exits
    # (multiprocessing runs these finalizers when a pool worker ends normally)
    multiprocessing.util.Finalize(
        None, _report_clock, (os.environ[NODE_CLOCK_DIR],), exitpriority=10
    )


@client_app.train()
def train(msg: Message, ctx: Context) -> Message:
    assert msg.content is not None and msg.content.model is not None
    rng = ctx.rng(msg.metadata.round)  # the framework's per-task derivation
    started, cpu_started = time.perf_counter(), time.thread_time()
    x, y = node_data(ctx.seed, int(ctx.node_config["partition-id"]))  # built lazily, then dropped
    result = logistic.train(msg.content.model, x, y, rng=rng, lr=LR, batch_size=BATCH, epochs=1)
    NodeClock.seconds += time.perf_counter() - started
    NodeClock.cpu += time.thread_time() - cpu_started
    NodeClock.tasks += 1
    return msg.reply(arrays=result.params, metrics={"num_examples": ROWS, "loss": result.loss})


null_app = ClientApp()


@null_app.train()
def train_nothing(msg: Message, ctx: Context) -> Message:
    """``--null-node``: the node sends back a copy of the model it got, computing nothing,
    so the run is all framework (the same derivation, reply, validation and fold)."""
    assert msg.content is not None and msg.content.model is not None
    ctx.rng(msg.metadata.round)
    NodeClock.tasks += 1
    return msg.reply(arrays=msg.content.model.copy(), metrics={"num_examples": ROWS, "loss": 0.5})


class TreeSampler(threading.Thread):
    """Samples this process and its descendants every ``period`` s: the peaks of their
    summed RSS and summed PSS, and each descendant's last CPU time seen."""

    def __init__(self, period: float) -> None:
        super().__init__(daemon=True)
        self.period = period
        self.peak_rss = self.peak_pss = 0
        self.child_cpu: dict[int, float] = {}
        self.own_cpu = 0.0  # this thread's CPU time: not the run's
        self._done = threading.Event()

    def run(self) -> None:
        root = psutil.Process()
        procs = [root]
        for tick in itertools.count():
            if tick < 20 or tick % 10 == 0:  # listing them scans /proc: each time only at first
                procs = [root, *root.children(recursive=True)]
            rss = pss = 0
            for p in procs:
                try:
                    mem = p.memory_full_info()
                    if p.pid != root.pid:
                        cpu = p.cpu_times()
                        self.child_cpu[p.pid] = cpu.user + cpu.system
                except psutil.Error:  # it ended meanwhile
                    continue
                rss, pss = rss + mem.rss, pss + mem.pss
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self.own_cpu = time.thread_time()
            if self._done.wait(self.period):
                return

    def stop(self) -> None:
        self._done.set()
        self.join()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--backend",
        choices=["auto", "threads", "processes"],
        default="auto",
        help="default: auto, the library's default (processes from 1000 nodes on 2+ CPUs)",
    )
    parser.add_argument(
        "--workers", type=int, help="threads or processes (default: 1 thread, 1 process per CPU)"
    )
    parser.add_argument("--nodes-per-batch", type=int, help="processes: node tasks per call")
    parser.add_argument(
        "--sample-ms", type=float, default=50.0, help="memory sampling period (0: none)"
    )
    parser.add_argument(
        "--null-node", action="store_true", help="nodes compute nothing: time the framework alone"
    )
    args = parser.parse_args()
    initial = Arrays({"weight": np.zeros((1, FEATURES)), "bias": np.zeros(1)})
    server_app = ServerApp(
        lambda ctx: ServerConfig(
            FedAvg(initial_arrays=initial, fraction_evaluate=0.0, min_available_nodes=args.nodes),
            num_rounds=args.rounds,
            min_reply_fraction=1.0,
        )
    )
    app = "null_app" if args.null_node else "client_app"
    # the reference (which auto needs to pick processes) only where it will be used: run
    # in this thread, the app loaded by reference would be a second copy of this module,
    # counting its nodes' time in a NodeClock of its own
    processes = resolve_backend(args.backend, f"sim_consortium:{app}", args.nodes) == "processes"
    clock_dir = tempfile.TemporaryDirectory(prefix="sim-clock-")
    os.environ[NODE_CLOCK_DIR] = clock_dir.name  # the workers inherit it
    sampler = TreeSampler(args.sample_ms / 1000) if args.sample_ms > 0 else None
    if sampler is not None:
        sampler.start()
    started, cpu_started = time.perf_counter(), time.process_time()
    result = run_simulation(
        server_app,
        f"sim_consortium:{app}" if processes else globals()[app],
        num_nodes=args.nodes,
        seed=args.seed,
        backend=args.backend,
        workers=args.workers,
        nodes_per_batch=args.nodes_per_batch,
        app_path=[str(HERE)],
    )  # (returns after the workers have exited and written their clocks)
    finished, cpu_finished = time.perf_counter(), time.process_time()
    if sampler is not None:
        sampler.stop()
    driver_cpu_s = cpu_finished - cpu_started - (sampler.own_cpu if sampler else 0.0)
    run_s, node_s, tasks = finished - started, NodeClock.seconds, NodeClock.tasks
    node_cpu_s, workers_cpu_s = NodeClock.cpu, 0.0
    reported = set()  # the workers' pids (their files' names)
    for file in Path(clock_dir.name).glob("*.json"):
        report = json.loads(file.read_text())
        node_s, tasks = node_s + report["node_s"], tasks + report["tasks"]
        node_cpu_s += report["node_cpu_s"]
        workers_cpu_s += report["cpu_s"]
        reported.add(int(file.stem))
    clock_dir.cleanup()
    others_cpu_s = sum(
        cpu for pid, cpu in (sampler.child_cpu.items() if sampler else ()) if pid not in reported
    )
    tree_cpu_s = driver_cpu_s + workers_cpu_s + others_cpu_s
    # one thread: node time is a share of the wall time; parallel threads overlap it
    split = processes or (args.workers or 1) == 1
    framework_s = tree_cpu_s - node_cpu_s if processes else run_s - node_s
    accuracy = None
    if args.nodes <= 1000 and not args.null_node:
        data = [node_data(args.seed, i) for i in range(args.nodes)]
        x = np.concatenate([d[0] for d in data])
        y = np.concatenate([d[1] for d in data])
        accuracy = float(logistic.evaluate(result.arrays, x, y)["accuracy"])
    print(
        json.dumps(
            {
                "nodes": args.nodes,
                "rounds": args.rounds,
                "import_s": started - T0,
                "backend": "processes" if processes else "threads",
                "workers": args.workers,
                "run_s": run_s,
                # this process (the driver) alone, the sampler thread left out
                "run_cpu_s": driver_cpu_s,
                # driver + worker processes (their whole life) + the forkserver
                "tree_cpu_s": tree_cpu_s,
                "workers_cpu_s": workers_cpu_s,
                "node_tasks": tasks,
                # the handler's own work, summed over the tasks: wall time, and CPU time
                "node_compute_s": node_s if split else None,
                "node_cpu_s": node_cpu_s,
                # one thread: the wall time the nodes did not take; processes: the tree's
                # CPU time that was not the nodes' own
                "framework_s": framework_s if split else None,
                "framework_us_per_task": framework_s / tasks * 1e6 if split else None,
                "seconds_per_round": [r.seconds for r in result.history.rounds],
                "final_accuracy": accuracy,
                "self_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "tree_peak_rss_bytes": sampler.peak_rss if sampler else None,
                "tree_peak_pss_bytes": sampler.peak_pss if sampler else None,
            }
        )
    )


if __name__ == "__main__":
    main()
