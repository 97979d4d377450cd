"""A child that reports what its sandbox lets it do (``python -m consortium.sandbox.probe``).

Operators and tests use it to check a machine's confinement: spawned like an
app process, it answers a ``probe`` frame with, for each path asked about,
whether it could read it, plus the names of its environment variables, its
open-file limit, and whether it could write a file of ``write_bytes`` in its
working directory.
"""

from __future__ import annotations

import os
import resource

from consortium.sandbox.child import enter


def main() -> int:
    channel = enter(1 << 20)
    frame = channel.recv()
    reads: dict[str, str] = {}
    for path in frame.header.get("paths", []):
        try:
            with open(str(path), "rb") as fh:
                fh.read(1)
            reads[str(path)] = "read"
        except OSError as exc:
            reads[str(path)] = type(exc).__name__
    channel.send("probed", {
        "reads": reads,
        "env": sorted(os.environ),
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "write": _write(int(frame.header.get("write_bytes", 0))),
    })  # fmt: skip
    return 0


def _write(size: int) -> str:
    """``"wrote"``, or the error writing ``size`` bytes to a file in the work folder."""
    try:
        with open("probe-write.bin", "wb") as fh:
            for _ in range(size // (1 << 20)):
                fh.write(bytes(1 << 20))
            fh.write(bytes(size % (1 << 20)))
        return "wrote"
    except OSError as exc:
        return f"{type(exc).__name__}:{exc.errno}"
    finally:
        if os.path.exists("probe-write.bin"):
            os.remove("probe-write.bin")


if __name__ == "__main__":
    raise SystemExit(main())
