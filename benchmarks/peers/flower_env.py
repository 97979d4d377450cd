"""Helpers to run Flower (the peer we compare against) in isolation.

Flower is never a dependency of Consortium: it lives in its own virtualenv
(``.bench/flower-venv`` by default) and is only started as a subprocess by the
``--vs-flower`` benchmarks.  This module uses the standard library and psutil
only, so the benchmark driver can import it from the project's environment.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import psutil

FLWR_VERSION = "1.42.0"
_REQUIREMENTS = [f"flwr[simulation]=={FLWR_VERSION}", "numpy", "psutil"]
_POLL_S = 0.1


def _log(msg: str) -> None:
    print(f"[flower-env] {msg}", file=sys.stderr, flush=True)


def venv_python(path: Path) -> Path:
    """The interpreter of the virtualenv at ``path``."""
    if os.name == "nt":  # pragma: no cover - benchmarks run on Linux
        return path / "Scripts" / "python.exe"
    return path / "bin" / "python"


def _installed_flwr_version(python: Path) -> str | None:
    code = (
        "import importlib.metadata as m\n"
        "try:\n"
        "    import numpy, psutil, ray\n"
        "    print(m.version('flwr'))\n"
        "except Exception:\n"
        "    pass\n"
    )
    try:
        out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    version = out.stdout.strip()
    return version or None


def ensure_flower_venv(path: Path = Path(".bench/flower-venv")) -> Path:
    """Create the Flower virtualenv at ``path`` if needed.

    Returns the venv's *interpreter* (``path/bin/python``), which is what
    callers run ``flower_sim.py`` with.

    Idempotent: when ``flwr`` is already installed there at ``FLWR_VERSION``
    (together with Ray, numpy and psutil) nothing is installed.
    """
    path = Path(path)
    python = venv_python(path)
    if python.exists():
        found = _installed_flwr_version(python)
        if found == FLWR_VERSION:
            _log(f"flwr {found} already installed in {path}")
            return python
        _log(f"flwr in {path} is {found or 'missing'}; installing {FLWR_VERSION}")
    else:
        _log(f"creating virtualenv {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    _log("installing " + " ".join(_REQUIREMENTS) + " (this takes a minute)")
    env = dict(os.environ)
    env.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    # pip's output goes to stderr so stdout stays clean for callers.
    try:
        stdout: int | None = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # e.g. a captured stderr
        stdout = None
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", *_REQUIREMENTS],
        check=True,
        env=env,
        stdout=stdout,
    )
    found = _installed_flwr_version(python)
    if found != FLWR_VERSION:
        raise RuntimeError(f"flwr install in {path} failed (found {found!r})")
    _log(f"flwr {found} ready in {path}")
    return python


def flower_env(home: Path) -> dict[str, str]:
    """Environment for Flower and Ray processes: offline, loopback only.

    ``home`` becomes the private ``FLWR_HOME`` (created if missing); Ray's
    temporary directory is kept under it too, so nothing leaks into the
    user's ``~/.flwr`` or ``/tmp/ray`` sessions of other programs.
    """
    home = Path(home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    # Never let the project's virtualenv leak into the Flower one.
    for var in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "CONDA_PREFIX"):
        env.pop(var, None)
    env.update(
        {
            "FLWR_HOME": str(home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "RAY_USAGE_STATS_ENABLED": "0",
            # Without it Ray finds its node address by a UDP "connect" to a
            # public address and binds to the external interface.
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            # Quieter Ray logs (Flower already starts Ray without dashboard).
            "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
            "RAY_DEDUP_LOGS": "0",
            # Silences a FutureWarning; we never ask for GPUs.
            "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            # Short path: Ray's unix sockets must stay under 107 bytes.
            "RAY_TMPDIR": _short_ray_tmpdir(home),
            "NO_PROXY": "*",
            "no_proxy": "*",
        }
    )
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        env.pop(var, None)
    return env


def _short_ray_tmpdir(home: Path) -> str:
    """Ray's temp dir, short enough for its unix sockets (limit 107 bytes).

    Ray puts ``ray/session_<date>_<pid>/sockets/plasma_store`` (~67 bytes)
    under it; a long ``home`` falls back to a stable folder in the system temp
    dir named after ``home``.
    """
    candidate = home / "ray"
    if len(str(candidate)) > 40:
        digest = hashlib.sha256(str(home).encode()).hexdigest()[:10]
        candidate = Path(tempfile.gettempdir()) / f"flwr-ray-{digest}"
    candidate.mkdir(parents=True, exist_ok=True)
    return str(candidate)


@dataclasses.dataclass
class Measured:
    """Outcome of :func:`run_measured`.

    ``wall_s``: seconds from start to exit (on timeout: until the tree was
    killed); ``peak_rss_bytes``: highest summed RSS of the process tree seen
    by the 0.1 s poll; ``returncode``: None on timeout.
    """

    wall_s: float
    peak_rss_bytes: int
    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool = False
    #: user+system CPU seconds of the tree, from the last sample of each
    #: process (short-lived children may be under-counted by < 0.1 s each).
    #: Less sensitive than wall time to other load on the machine.
    cpu_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def _tree(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [proc, *proc.children(recursive=True)]
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return []


def _tree_rss(procs: list[psutil.Process], cpu: dict[int, float]) -> int:
    """Summed RSS of ``procs``; records each one's CPU seconds in ``cpu``."""
    total = 0
    for p in procs:
        try:
            with p.oneshot():
                total += p.memory_info().rss
                t = p.cpu_times()
            cpu[p.pid] = t.user + t.system
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            pass
    return total


def _drain(stream: IO[str], sink: list[str]) -> None:
    for line in iter(stream.readline, ""):
        sink.append(line)
    stream.close()


def kill_tree(
    root: psutil.Process,
    known: Mapping[int, psutil.Process] | None = None,
    grace: float = 3.0,
) -> None:
    """Terminate ``root``, its descendants and every process in ``known``.

    SIGTERM first, SIGKILL for whatever is still alive after ``grace`` s.
    """
    procs = {p.pid: p for p in _tree(root)}
    for pid, p in (known or {}).items():
        procs.setdefault(pid, p)
    alive = []
    for p in procs.values():
        try:
            if p.is_running():
                p.terminate()
                alive.append(p)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(alive, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=grace)


def run_measured(cmd: list[str], env: Mapping[str, str] | None, timeout: float) -> Measured:
    """Run ``cmd`` and measure wall time and the peak RSS of its process tree.

    The RSS of the process and all its descendants (Ray starts a raylet, a GCS
    server and one worker per actor) is summed every ~0.1 s; the peak of that
    sum is returned.  Wall time covers the whole process, start-up included.
    On timeout the whole tree is killed.  Descendants that outlive the root
    (Ray daemons re-parented to init) are killed too, so nothing is left over.
    """
    start = time.perf_counter()
    popen = subprocess.Popen(
        cmd,
        env=dict(env) if env is not None else None,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # own process group: easy to clean up
    )
    out: list[str] = []
    err: list[str] = []
    readers = [
        threading.Thread(target=_drain, args=(popen.stdout, out), daemon=True),
        threading.Thread(target=_drain, args=(popen.stderr, err), daemon=True),
    ]
    for t in readers:
        t.start()
    root = psutil.Process(popen.pid)
    seen: dict[int, psutil.Process] = {}
    cpu: dict[int, float] = {}
    peak = 0
    timed_out = False
    deadline = start + timeout
    rc: int | None = None
    while rc is None:
        procs = _tree(root)
        for p in procs:
            seen.setdefault(p.pid, p)
        # Also count processes seen earlier that were re-parented away.
        pids = {p.pid for p in procs}
        procs += [p for pid, p in seen.items() if pid not in pids and _alive(p)]
        peak = max(peak, _tree_rss(procs, cpu))
        if time.perf_counter() >= deadline:
            timed_out = True
            kill_tree(root, seen)
            rc = popen.wait()
            break
        # Sleeps one poll interval, but notices the exit at once.
        with contextlib.suppress(subprocess.TimeoutExpired):
            rc = popen.wait(timeout=_POLL_S)
    wall = time.perf_counter() - start
    # Leftovers (e.g. a Ray daemon whose parent died) must not outlive the run.
    leftovers = {pid: p for pid, p in seen.items() if _alive(p)}
    if leftovers:
        kill_tree(root, leftovers)
    _kill_session(popen.pid)
    for t in readers:
        t.join(timeout=5)
    return Measured(
        wall_s=wall,
        peak_rss_bytes=peak,
        returncode=None if timed_out else rc,
        stdout="".join(out),
        stderr="".join(err),
        timed_out=timed_out,
        cpu_s=sum(cpu.values()),
    )


def _kill_session(sid: int) -> None:
    """SIGKILL any process still in the session started for the command.

    Catches descendants that were born and re-parented between two polls.
    """
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid and p.pid != os.getpid():
                p.kill()
        except (psutil.Error, ProcessLookupError, PermissionError):
            pass


def _alive(p: psutil.Process) -> bool:
    try:
        return bool(p.is_running() and p.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _main() -> None:  # pragma: no cover - manual helper
    import argparse
    import json

    ap = argparse.ArgumentParser(description="Run flower_sim.py measured.")
    ap.add_argument("--venv", type=Path, default=Path(".bench/flower-venv"))
    ap.add_argument("--home", type=Path, default=Path(".bench/flwr-home"))
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=900.0)
    args = ap.parse_args()
    python = ensure_flower_venv(args.venv)
    script = Path(__file__).with_name("flower_sim.py")
    cmd = [
        str(python),
        str(script),
        "--nodes",
        str(args.nodes),
        "--rounds",
        str(args.rounds),
        "--seed",
        str(args.seed),
    ]
    m = run_measured(cmd, flower_env(args.home), args.timeout)
    result = None
    for line in reversed(m.stdout.splitlines()):
        if line.startswith("{"):
            result = json.loads(line)
            break
    print(
        json.dumps(
            {
                "wall_s": round(m.wall_s, 3),
                "peak_rss_bytes": m.peak_rss_bytes,
                "returncode": m.returncode,
                "timed_out": m.timed_out,
                "cpu_s": round(m.cpu_s, 2),
                "result": result,
            }
        )
    )
    if not m.ok:
        sys.stderr.write(m.stderr[-4000:])
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    _main()
