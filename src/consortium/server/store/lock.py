"""One server per state directory: an exclusive lock on ``WORKDIR/server.lock``.

The lock is an ``flock`` held for the process's lifetime, so the operating
system releases it however the process ends (``kill -9`` included); the file
itself stays and holds the pid of the server that last took it, for messages.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from consortium.core.errors import StateStoreError

LOCK_FILE = "server.lock"


class StateDirLock:
    """An exclusive lock on a server's state directory, held until :meth:`release`."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_FILE
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StateStoreError(
                f"another consortium server (pid {holder}) is using the state directory "
                f"{state_dir} (it holds {self.path}): stop it, or give this one another --workdir"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd: int | None = fd

    def release(self) -> None:
        """Let another server use the directory (the process's end does it too)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
