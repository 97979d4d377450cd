"""Run the transport workload on Flower 1.42's deployment runtime, on loopback.

Run with the Flower virtualenv's interpreter and the environment of
``flower_env.flower_env`` (offline, private ``FLWR_HOME``)::

    .bench/flower-venv/bin/python benchmarks/peers/flower_transport/driver.py \
        --params 10000000 --nodes 2 --rounds 3

It starts ``flower-superlink`` and N ``flower-supernode`` processes (insecure:
no TLS, Flower's own quick-start setting), registers the SuperLink as a
connection in ``$FLWR_HOME/config.toml``, submits this folder's app with
``flwr run --stream`` and waits for it. While it runs, the RSS of the
SuperLink's process tree (it starts the ServerApp process) and of each
SuperNode's tree (they start one ClientApp process per message) is sampled
every 50 ms. The last line on stdout is one JSON object::

    {"seconds_per_round": [...], "server_peak_rss_bytes": ..,
     "total_peak_rss_bytes": .., "error": ""}
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
SAMPLE_S = 0.05


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"flower-superlink exited with {proc.returncode}")
        with socket.socket() as s, contextlib.suppress(OSError):
            s.settimeout(0.2)
            s.connect(("127.0.0.1", port))
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


class Sampler(threading.Thread):
    """Peak summed RSS of the server tree and of all trees together."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.roots: list[tuple[str, psutil.Process]] = []
        self.server_peak = 0
        self.total_peak = 0
        self.halt = threading.Event()

    def add(self, group: str, pid: int) -> None:
        self.roots.append((group, psutil.Process(pid)))

    def sample(self) -> None:
        server = total = 0
        for group, root in list(self.roots):
            with contextlib.suppress(psutil.Error):
                for p in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        rss = p.memory_info().rss
                        total += rss
                        if group == "server":
                            server += rss
        self.server_peak = max(self.server_peak, server)
        self.total_peak = max(self.total_peak, total)

    def run(self) -> None:
        while not self.halt.wait(SAMPLE_S):
            self.sample()


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(p.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    child.terminate()
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + 10
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=int, required=True)
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--num-arrays", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=1800.0)
    args = ap.parse_args()

    # Flower starts its helpers (flower-superexec, flwr-serverapp, ...) by name
    os.environ["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    home = Path(os.environ.get("FLWR_HOME") or tempfile.mkdtemp(prefix="flwr-home-"))
    home.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=home))
    out_file = work / "rounds.json"
    port = free_port()
    (home / "config.toml").write_text(
        f'[superlink.bench]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    procs: list[subprocess.Popen[bytes]] = []
    sampler = Sampler()
    result: dict[str, object] = {"seconds_per_round": [], "error": ""}
    logs = []
    try:
        log = open(work / "superlink.log", "wb")  # noqa: SIM115 - closed with the process
        logs.append(log)
        superlink = subprocess.Popen(
            [str(BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1",
             "--port", str(port), "--disable-runtime-dependency-installation"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=work,
        )  # fmt: skip
        procs.append(superlink)
        sampler.add("server", superlink.pid)
        wait_listening(port, superlink, 120)
        for i in range(args.nodes):
            log = open(work / f"supernode{i}.log", "wb")  # noqa: SIM115
            logs.append(log)
            node = subprocess.Popen(
                [str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}",
                 "--host", "127.0.0.1", "--port", str(free_port()),
                 "--node-config", f"partition-id={i} num-partitions={args.nodes}"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=work,
            )  # fmt: skip
            procs.append(node)
            sampler.add("node", node.pid)
        sampler.start()
        overrides = (
            f"params={args.params} num-arrays={args.num_arrays} num-rounds={args.rounds} "
            f'min-nodes={args.nodes} out-file="{out_file}"'
        )
        run = subprocess.run(
            [str(BIN / "flwr"), "run", str(HERE), "bench", "--stream", "--run-config", overrides],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            timeout=args.timeout, cwd=work,
        )  # fmt: skip
        (work / "flwr-run.log").write_bytes(run.stdout)
        deadline = time.monotonic() + 60  # the ServerApp writes the file as it ends
        while not out_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        if out_file.exists():
            result.update(json.loads(out_file.read_text()))
        else:
            tail = run.stdout.decode(errors="replace").strip().splitlines()[-8:]
            result["error"] = f"flwr run exit {run.returncode}, no result: " + " | ".join(tail)
    except (subprocess.TimeoutExpired, RuntimeError) as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        sampler.halt.set()
        if sampler.is_alive():
            sampler.join()
        stop_all(procs)
        for log in logs:
            log.close()
    result["server_peak_rss_bytes"] = sampler.server_peak
    result["total_peak_rss_bytes"] = sampler.total_peak
    result["work_dir"] = str(work)
    print(json.dumps(result))
    return 0 if not result["error"] else 1


if __name__ == "__main__":
    sys.exit(main())
