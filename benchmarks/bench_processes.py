"""Processes of a deployed benchmark: the ``consortium`` command, starting and stopping
processes, waiting for the server's port, and sampling the memory and CPU of process
trees (``benchmarks/transport.py``, ``fleet_load.py``)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

if TYPE_CHECKING:
    from consortium.transport.grpc_client import ControlClient

#: how often the sampler reads the process trees
SAMPLE_S = 0.05
#: seconds between two readings of a tree's PSS (``smaps_rollup`` walks every page table
#: of a process: read every 50 ms, a 100M-parameter server tree's cost 0.2-0.3 s of a
#: 2.6 s round, on the machine being measured)
PSS_EVERY_S = 0.5
#: seconds between two listings of a tree's processes (psutil lists a process's children
#: by reading the parent of every process in /proc: listing three trees every 50 ms took
#: more of the measured machine's CPU than reading their memory); a process started
#: meanwhile is sampled from the next listing on
TREE_EVERY_S = 0.5
#: the admin certificate the deployed benchmarks issue for their coordinator calls
ADMIN = "bench-admin"


def process_kind(process: psutil.Process) -> str:
    """What a child process runs: the module of ``python -m MODULE`` less its package
    prefix (``server.isolation.app_process``, ``server.tracking_process``), else its name."""
    command = process.cmdline()
    if "-m" in command[:-1]:
        return command[command.index("-m") + 1].removeprefix("consortium.")
    return process.name()


#: the part of a tree's PSS that is its processes' shared blocks, counted once
SHARED_BLOCKS = "shared blocks"


def private_pss(pid: int) -> int:
    """The process's PSS less its shared memory (``Pss_Shmem`` of ``smaps_rollup``)."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("Pss", "Pss_Shmem"):
                fields[key] = int(value.split()[0]) * 1024
    return fields.get("Pss", 0) - fields.get("Pss_Shmem", 0)


def shared_blocks(pid: int) -> dict[tuple[int, int], int]:
    """The memfds the process holds open (its own shared blocks: every block in a tree is
    held by its maker), by inode: the bytes each has in memory."""
    out: dict[tuple[int, int], int] = {}
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            path = f"/proc/{pid}/fd/{fd}"
            with contextlib.suppress(OSError):
                if os.readlink(path).startswith("/memfd:"):
                    info = os.stat(path)
                    out[(info.st_dev, info.st_ino)] = info.st_blocks * 512
    return out


class Sampler:
    """Samples the RSS and CPU of named process trees every ``SAMPLE_S`` seconds, and their
    PSS every ``PSS_EVERY_S``; keeps the peaks.

    A tree's PSS is each process's PSS less its shared memory, plus the shared blocks
    its processes hold, each counted once. Summing the processes' own PSS instead
    counts a block twice for a moment whenever one process maps it between the reads
    of two processes (seen: +190 MB for one 381 MB block).
    """

    def __init__(self) -> None:
        self.groups: dict[str, psutil.Process] = {}
        self._rss_only: set[str] = set()
        self._pss_at = -PSS_EVERY_S
        self._listed_at = -TREE_EVERY_S
        #: group -> its processes at the last listing, the root first
        self._trees: dict[str, list[psutil.Process]] = {}
        self.peak: dict[str, int] = {}
        self.peak_pss: dict[str, int] = {}
        #: group -> its PSS at that peak, by process (see process_kind)
        self.peak_pss_parts: dict[str, dict[str, int]] = {}
        self.peak_total = 0
        #: (time.time(), group -> (CPU s of its process, CPU s of its child processes))
        self.cpu: list[tuple[float, dict[str, tuple[float, float]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def add(self, name: str, pid: int, *, pss: bool = True) -> None:
        """Sample the tree of ``pid`` as ``name``; ``pss=False``: its RSS and CPU only (reading
        a process's PSS walks its page tables: a 1 GB process read every 50 ms costs a
        sixth of a core, which slowed the very rounds being measured)."""
        self.groups[name] = psutil.Process(pid)
        if not pss:
            self._rss_only.add(name)
        self.peak.setdefault(name, 0)
        self.peak_pss.setdefault(name, 0)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        now = time.monotonic()
        with_pss = now - self._pss_at >= PSS_EVERY_S
        if with_pss:
            self._pss_at = now
        relist = now - self._listed_at >= TREE_EVERY_S
        if relist:
            self._listed_at = now
        total = 0
        cpu: dict[str, tuple[float, float]] = {}
        for name, root in list(self.groups.items()):
            rss = 0
            own = kids = 0.0
            parts: dict[str, int] = {}
            blocks: dict[tuple[int, int], int] = {}
            if relist or name not in self._trees:
                with contextlib.suppress(psutil.Error):
                    self._trees[name] = [root, *root.children(recursive=True)]
            with contextlib.suppress(psutil.Error):
                for p in self._trees.get(name, [root]):
                    with contextlib.suppress(psutil.Error, OSError), p.oneshot():
                        rss += p.memory_info().rss
                        if with_pss and name not in self._rss_only:
                            kind = "itself" if p.pid == root.pid else process_kind(p)
                            parts[kind] = parts.get(kind, 0) + private_pss(p.pid)
                            blocks.update(shared_blocks(p.pid))
                        t = p.cpu_times()
                        if p.pid == root.pid:
                            own += t.user + t.system
                        else:
                            kids += t.user + t.system
            if blocks:
                parts[SHARED_BLOCKS] = sum(blocks.values())
            pss = sum(parts.values())
            self.peak[name] = max(self.peak[name], rss)
            if pss > self.peak_pss[name]:
                self.peak_pss[name] = pss
                self.peak_pss_parts[name] = parts
            total += rss
            cpu[name] = (own, kids)
        self.peak_total = max(self.peak_total, total)
        self.cpu.append((time.time(), cpu))

    def cpu_between(self, start: float, end: float) -> dict[str, tuple[float, float]]:
        """CPU seconds (the process itself, its child processes) each group used between
        the samples nearest ``start`` and ``end`` (wall-clock times)."""
        if not self.cpu:
            return {}
        a = min(self.cpu, key=lambda s: abs(s[0] - start))[1]
        b = min(self.cpu, key=lambda s: abs(s[0] - end))[1]
        return {
            name: (b[name][0] - a.get(name, (0.0, 0.0))[0], b[name][1] - a.get(name, (0.0, 0.0))[1])
            for name in b
        }

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self.sample()


def consortium_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("consortium")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "consortium.cli.main"]


def spawn(
    cmd: list[str], log: Path, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with open(log, "wb") as fh:
        return subprocess.Popen(
            cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )


def stop(procs: list[subprocess.Popen[bytes]], grace: float = 10.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def spy(py_spy: str, pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling ``pid`` (without pausing it) into a collapsed-stacks file."""
    cmd = [py_spy, "record", "--pid", str(pid), "--rate", "50", "--nonblocking",
           "--format", "raw", "--output", str(out)]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def admin_client(pki: Path, address: str) -> ControlClient:
    """The benchmark admin's connection to the server at ``address`` (credentials under
    ``pki``, as ``transport.make_pki`` issued them)."""
    from consortium.transport.grpc_client import ClientTls, ControlClient

    creds = pki / "credentials" / ADMIN
    tls = ClientTls(
        key=(creds / f"{ADMIN}.key").read_bytes(),
        certificate=(creds / f"{ADMIN}.crt").read_bytes(),
        ca=(creds / "ca.crt").read_bytes(),
    )
    return ControlClient(address, tls=tls)


def wait_run(
    pki: Path,
    address: str,
    run_id: str,
    timeout: float,
    procs: Sequence[subprocess.Popen[bytes]] = (),
) -> dict[str, Any] | None:
    """Poll the run until it ends, or one of ``procs`` exits: its summary (with per-round
    records); None at the timeout."""
    client = admin_client(pki, address)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            info: dict[str, Any] = client.show_run(run_id)
            if info["status"] not in ("pending", "running"):
                return info
            if any(p.poll() is not None for p in procs):
                return dict(client.show_run(run_id))
            time.sleep(0.2)
    finally:
        client.close()
    return None


def wait_port(port_file: Path, server: subprocess.Popen[bytes], timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_file.exists() and port_file.read_text().strip():
            return int(port_file.read_text())
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode}")
        time.sleep(0.05)
    raise RuntimeError("the server did not write its port file")


def dump_stacks(pid: int) -> None:
    """Ask process ``pid`` and its children for their threads' stacks (``kill -USR1``,
    ``core/stack_dumps.py``: a server's and a node's go to their stderr, an app
    process's to its ``app.log``)."""
    from consortium.core.stack_dumps import STACK_DUMP_SIGNAL

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):  # it ended meanwhile
            proc.send_signal(STACK_DUMP_SIGNAL)


def stack_summary(text: str) -> str:
    """The threads' stacks that faulthandler wrote into ``text`` (see :func:`dump_stacks`),
    each stack once with the number of threads in it: a server's hundred gRPC workers
    waiting alike take a few lines."""
    stacks: dict[tuple[str, ...], int] = {}
    frames: list[str] | None = None
    for line in [*text.splitlines(), ""]:
        if frames is not None and line.startswith("  File "):
            frames.append(line.strip())
            continue
        if frames is not None:  # the thread's stack ends here
            stacks[tuple(frames)] = stacks.get(tuple(frames), 0) + 1
            frames = None
        if line.startswith(("Thread 0x", "Current thread 0x")):
            frames = []
    return "\n".join(f"{count} thread(s), most recent call first:\n  " + "\n  ".join(frames)
                     for frames, count in stacks.items())  # fmt: skip
