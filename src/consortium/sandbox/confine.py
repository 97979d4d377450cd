"""What a sandboxed child may do: resource limits and a Landlock ruleset (Linux).

The child applies :func:`confine` to itself before it imports a byte of the
user's code. Landlock (Linux 5.13+, unprivileged) denies every file it was not
granted, including the parent's keys, the CA directory, the state database and
``/proc/<parent>/mem``; with a kernel new enough it also denies TCP and UDP
(ABI 4/10) and signals or abstract sockets outside the sandbox (ABI 6).
"""

from __future__ import annotations

import os
import resource
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from consortium.core.errors import ConfigError, ConsortiumError

#: system libraries a Python child loads (extension modules dlopen them lazily)
SYSTEM_READ_PATHS = ("/usr", "/lib", "/lib64", "/bin", "/etc/ld.so.cache", "/etc/localtime")
#: devices any program expects
DEVICES_READ_WRITE = ("/dev/null", "/dev/zero")
DEVICES_READ = ("/dev/urandom", "/dev/random")
#: the CPU's description (read-only, no secret): numerical libraries choose their kernels
#: from it; without it torch's cpuinfo fails and ATen falls back to scalar kernels, which
#: sum in another order than the unconfined simulation (1-2 ulp apart after 18 steps)
CPU_READ_PATHS = ("/proc/cpuinfo", "/sys/devices/system/cpu")


class SandboxUnavailable(ConsortiumError):
    """The kernel cannot confine a child (no Landlock): refuse rather than run unconfined."""


@dataclass(frozen=True, slots=True)
class SandboxLimits:
    """Per-child resource limits (``None``: the operating system's own)."""

    #: address space in bytes (RLIMIT_AS); a child past it gets MemoryError
    memory_bytes: int | None = 16 * 1024**3
    #: CPU seconds (RLIMIT_CPU); past it the child is killed
    cpu_seconds: int | None = None
    #: open file descriptors (RLIMIT_NOFILE)
    open_files: int = 256
    #: the largest file it may write (RLIMIT_FSIZE; a write past it fails with EFBIG);
    #: None: ``memory_bytes`` -- a checkpoint or model no bigger than the child could
    #: hold, so the parent reading one back (``--resume``, a download) is bounded too
    file_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.memory_bytes is not None and self.memory_bytes <= 0:
            raise ConfigError("sandbox memory-bytes must be positive")
        if self.file_bytes is not None and self.file_bytes <= 0:
            raise ConfigError("sandbox file-bytes must be positive")
        if self.cpu_seconds is not None and self.cpu_seconds <= 0:
            raise ConfigError("sandbox cpu-seconds must be positive")
        if self.open_files < 16:
            raise ConfigError("sandbox open-files must be at least 16")


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    """Where a child may read and write, and its limits."""

    #: its working directory (read-write)
    workdir: str
    #: further trees it may read (the app's code, a node's data)
    read_paths: tuple[str, ...] = ()
    #: further trees it may write (a run's checkpoints)
    write_paths: tuple[str, ...] = ()
    limits: SandboxLimits = field(default_factory=SandboxLimits)
    #: False only with a loudly warned development flag: limits, but no Landlock
    confined: bool = True

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SandboxSpec:
        return cls(
            workdir=str(data["workdir"]),
            read_paths=tuple(str(p) for p in data["read_paths"]),
            write_paths=tuple(str(p) for p in data["write_paths"]),
            limits=SandboxLimits(**data["limits"]),
            confined=bool(data["confined"]),
        )


def python_read_paths() -> list[str]:
    """The trees this interpreter imports from (the child runs the same one).

    The prefixes and every import path, but not the working directory (``python -m``
    and test runners put it on ``sys.path``): that is where an operator's keys and
    data may be.
    """
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    here = os.path.realpath(os.getcwd())
    roots.update(
        p for p in sys.path
        if p and os.path.isabs(p) and os.path.isdir(p) and os.path.realpath(p) != here
    )  # fmt: skip
    return sorted(roots)


def landlock_available() -> bool:
    if sys.platform != "linux":
        return False
    import landlockpy

    return landlockpy.supported()


def confine(spec: SandboxSpec) -> None:
    """Apply ``spec`` to this process: limits, then (when ``spec.confined``) Landlock.

    Call it from the child's main thread before any other thread starts:
    Landlock confines the calling thread and the threads and processes it
    starts afterwards.
    """
    _apply_limits(spec.limits)
    os.chdir(spec.workdir)
    if not spec.confined:
        return
    if not landlock_available():
        raise SandboxUnavailable(
            "this kernel has no Landlock (Linux 5.13+ with landlock in the LSM list): "
            "an app cannot be kept from the server's keys"
        )
    from landlockpy import AccessFS, Ruleset, Scope

    read = AccessFS.READ_FILE | AccessFS.READ_DIR | AccessFS.EXECUTE
    file_read = AccessFS.READ_FILE | AccessFS.EXECUTE  # a rule on a file grants no dir rights
    device = AccessFS.READ_FILE | AccessFS.WRITE_FILE
    write = (
        AccessFS.WRITE_FILE | AccessFS.REMOVE_DIR | AccessFS.REMOVE_FILE | AccessFS.MAKE_DIR
        | AccessFS.MAKE_REG | AccessFS.MAKE_SOCK | AccessFS.MAKE_FIFO | AccessFS.MAKE_SYM
        | AccessFS.REFER | AccessFS.TRUNCATE
    )  # fmt: skip
    # every filesystem and network right this kernel knows is handled: denied unless granted
    with Ruleset(scoped=Scope.ABSTRACT_UNIX_SOCKET | Scope.SIGNAL) as ruleset:
        for path in (*SYSTEM_READ_PATHS, *CPU_READ_PATHS, *DEVICES_READ, *spec.read_paths):
            if os.path.exists(path):
                ruleset.allow_path(path, read if os.path.isdir(path) else file_read)
        for path in DEVICES_READ_WRITE:
            if os.path.exists(path):
                ruleset.allow_path(path, device)
        for path in (spec.workdir, *spec.write_paths):
            ruleset.allow_path(path, write | read)  # directories the parent created
        ruleset.restrict()


def _apply_limits(limits: SandboxLimits) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file holding the app's memory
    _lower(resource.RLIMIT_NOFILE, limits.open_files)
    if limits.memory_bytes is not None:
        _lower(resource.RLIMIT_AS, limits.memory_bytes)
    if limits.cpu_seconds is not None:
        _lower(resource.RLIMIT_CPU, limits.cpu_seconds)
    file_bytes = limits.file_bytes if limits.file_bytes is not None else limits.memory_bytes
    if file_bytes is not None:  # CPython ignores SIGXFSZ: an oversized write raises OSError
        _lower(resource.RLIMIT_FSIZE, file_bytes)


def _lower(which: int, value: int) -> None:
    _soft, hard = resource.getrlimit(which)
    new_hard = value if hard == resource.RLIM_INFINITY else min(hard, value)
    resource.setrlimit(which, (min(value, new_hard), new_hard))
