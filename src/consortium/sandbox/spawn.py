"""The parent's side: start a sandboxed child and hold its channel.

The child is ``python -m <module> <fd>`` with an environment of only what
Python needs (no inherited secrets: no database URL, no key passphrase), its
standard output and error in a log file beside its work directory, and one
socket (``fd``) to its parent. Its first frame from the parent is the
:class:`~consortium.sandbox.confine.SandboxSpec`; it confines itself and answers
``ready`` before it imports any user code.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from consortium.core.errors import ConfigError
from consortium.sandbox.channel import SHARED_FLAG, Channel, ChannelError
from consortium.sandbox.confine import SandboxSpec, landlock_available, python_read_paths

log = logging.getLogger("consortium.sandbox")

#: the environment variables a child inherits (everything else is dropped): besides the
#: basics, the operator's thread limits for numeric libraries, without which every app
#: process starts a BLAS/OpenMP thread per core (four app processes on a shared machine
#: then spin against each other: one MLP epoch took 1.0-1.4 s instead of 0.1-0.2 s)
INHERITED_ENV = (
    "PATH", "LANG", "LC_ALL", "PYTHONPATH", "PYTHONHASHSEED", "TZ",
    "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
)  # fmt: skip
#: how long a child may take to start Python, confine itself and answer
START_TIMEOUT = 60.0
#: how long a child has to exit after its channel closes before it is killed
EXIT_GRACE = 5.0


class Sandboxed:
    """A running child: its process and its channel."""

    def __init__(self, process: subprocess.Popen[bytes], channel: Channel, log_path: Path):
        self.process = process
        self.channel = channel
        self.log_path = log_path

    def close(self, grace: float = EXIT_GRACE) -> int | None:
        """Close the channel and wait for the child to exit (killed after ``grace`` s)."""
        self.channel.close()
        try:
            return self.process.wait(grace)
        except subprocess.TimeoutExpired:
            log.warning("sandboxed child %d did not exit in %g s: killed", self.process.pid, grace)
            self.process.kill()
            return self.process.wait()

    def settle(self, timeout: float = EXIT_GRACE) -> None:
        """Give a child whose channel closed ``timeout`` seconds to exit (to say how it ended)."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        self.channel.close()

    def exit_description(self) -> str:
        """How the child ended, for an error message (with its log's last lines)."""
        code = self.process.poll()
        what = "is still running" if code is None else _describe_exit(code)
        tail = _tail(self.log_path)
        return f"the sandboxed process {what}" + (f"; its log ends:\n{tail}" if tail else "")


def spawn(
    module: str,
    spec: SandboxSpec,
    *,
    log_path: Path,
    max_payload: int,
    secrets: Iterable[Path] = (),
    extra_env: Mapping[str, str] | None = None,
    shared: bool = False,
) -> Sandboxed:
    """Start ``python -m module`` confined by ``spec``; returns once it is confined.

    ``secrets`` are files and directories the child must not read (the
    server's key, the CA directory, the state database): starting refuses if
    any lies inside a tree the child may read. ``extra_env`` adds variables the
    caller chose (never secrets) to the child's minimal environment. With
    ``shared``, large payloads cross as shared memory
    (:mod:`~consortium.sandbox.shared_blocks`): what the caller receives into
    ``child.channel.lender``'s blocks reaches the child without crossing the
    socket, and the child's large frames are read where it wrote them.
    """
    # the child starts in its workdir: a relative path would mean another folder there
    workdir = os.path.abspath(spec.workdir)
    read_paths = (*python_read_paths(), *(os.path.abspath(p) for p in spec.read_paths))
    write_paths = tuple(os.path.abspath(p) for p in spec.write_paths)
    _check_secrets(secrets, (*read_paths, workdir, *write_paths))
    if spec.confined and not landlock_available():
        raise ConfigError(
            "this kernel cannot confine apps (no Landlock, Linux 5.13+); an app would run "
            "beside the server's keys. Use a newer kernel, or --unconfined-apps on a "
            "development machine only"
        )
    spec = SandboxSpec(workdir, read_paths, write_paths, spec.limits, spec.confined)
    parent_end, child_end = socket.socketpair()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
    env.update(extra_env or {})
    env["HOME"] = spec.workdir
    env["TMPDIR"] = spec.workdir
    with open(log_path, "ab") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                module,
                str(child_end.fileno()),
                *([SHARED_FLAG] if shared else []),
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=spec.workdir,
            env=env,
            pass_fds=(child_end.fileno(),),
            start_new_session=True,  # a signal to the server's group does not reach it
        )
    child_end.close()
    channel = Channel(parent_end, max_payload=max_payload, peer="child" if shared else None)
    child = Sandboxed(process, channel, log_path)
    try:
        child.channel.send("spec", {"spec": spec.to_json()})
        frame = child.channel.recv(timeout=START_TIMEOUT)
    except (ChannelError, TimeoutError) as exc:
        child.kill()
        raise ConfigError(f"could not start a sandboxed {module}: {exc}; "
                          f"{child.exit_description()}") from exc  # fmt: skip
    if frame.kind != "ready":
        child.kill()
        raise ConfigError(f"a sandboxed {module} could not confine itself: "
                          f"{frame.header.get('error', frame.kind)}")  # fmt: skip
    return child


def _check_secrets(secrets: Iterable[Path], readable: Iterable[str]) -> None:
    trees = [Path(p).resolve() for p in readable]
    for secret in secrets:
        path = secret.resolve()
        for tree in trees:
            if path == tree or tree in path.parents:
                raise ConfigError(
                    f"{secret} lies in {tree}, which a sandboxed app may read: keep keys, "
                    "the CA and the state database outside the Python installation and "
                    "the run directories"
                )


def _describe_exit(code: int) -> str:
    if code < 0:
        import signal

        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
