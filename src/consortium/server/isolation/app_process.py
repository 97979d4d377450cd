"""A run's app process: ``python -m consortium.server.isolation.app_process FD``.

Started by :class:`~consortium.server.isolation.host.AppProcess`. It confines
itself (:func:`consortium.sandbox.child.enter`) before it imports the app,
then loads and configures the app (answering ``prepared`` or ``failed``), runs
it over a :class:`RemoteGrid` and says how it ended. Everything it would
have done in the server's process (reach nodes, record rounds, report a
checkpoint) is a request to the server over the channel.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from consortium.apps.loader import load_object
from consortium.core.buffers import send_buffers_from
from consortium.core.errors import ConfigError, ConsortiumError
from consortium.sandbox.channel import Channel
from consortium.sandbox.child import enter
from consortium.server.app import ServerApp
from consortium.server.checkpoint import load_checkpoint
from consortium.server.context import CheckpointSettings, RunStopped
from consortium.server.host import prepare_program, run_server_app
from consortium.server.isolation.link import (
    MAX_FRAME,
    ForwardLogs,
    ParentLink,
    RemoteGrid,
    RemoteObserver,
)


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    # replies are folded where the server received them (its shared blocks), uncopied
    channel = enter(MAX_FRAME, in_place="read-only")
    if channel.lender is not None:  # the model the fold computes, in a block the server reads
        send_buffers_from(channel.lender.allocate)
    logging.getLogger("consortium").addHandler(ForwardLogs(channel))
    start = channel.recv()
    if start.kind != "start":
        channel.send("failed", {"error": f"expected 'start', got {start.kind!r}"})
        return 2
    h = start.header
    try:
        app = load_object(str(h["server"]), [str(h["app_dir"])])
        if not isinstance(app, ServerApp):
            raise ConfigError(f"{h['server']!r} is a {type(app).__name__}, not a ServerApp")
        program, num_rounds = prepare_program(app, dict(h["run_config"]), int(h["seed"]))
    except Exception as exc:
        channel.send("failed", {"error": _describe(exc)})
        return 1
    channel.send("prepared", {"num_rounds": num_rounds})
    return _run(channel, program, h)


def _run(channel: Channel, program: ServerApp, h: dict[str, object]) -> int:
    link = ParentLink(channel)
    link.start()
    checkpoint_dir = Path(str(h["checkpoint_dir"]))
    try:
        result = run_server_app(
            program,
            RemoteGrid(link),
            run_config=dict(h["run_config"]),  # type: ignore[call-overload]
            seed=int(h["seed"]),  # type: ignore[call-overload]
            run_id=str(h["run_id"]),
            run_dir=Path(str(h["run_dir"])),
            observers=[RemoteObserver(link)],
            stop=link.stop,
            checkpoints=CheckpointSettings(checkpoint_dir, on_written=link.checkpoint_written),
            resume=load_checkpoint(checkpoint_dir) if h["resume"] else None,
        )
    except RunStopped:
        link.finish("stopped", {})
        return 0
    except Exception as exc:  # the app's own error, or the server refusing what it sent
        logging.getLogger("consortium.server").exception("the run failed")
        link.finish("failed", {"error": _describe(exc)})
        return 1
    link.finish("finished", {"model_files": [p.name for p in result.model_files]})
    return 0


def _describe(exc: BaseException) -> str:
    """A ConsortiumError's message (it is written for users); else the type too."""
    return str(exc) if isinstance(exc, ConsortiumError) else f"{type(exc).__name__}: {exc}"


if __name__ == "__main__":
    raise SystemExit(main())
