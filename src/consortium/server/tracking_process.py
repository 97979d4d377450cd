"""A deployed run's MLflow tracking and plot, in a child process instead of the server's.

MLflow (with SQLAlchemy, pandas and pyarrow) and matplotlib cost the server
~150 MB of RSS once one run was tracked, kept for the server's lifetime:
measured with 200 long-polling nodes, the `consortium server` process peaked
at 495 MB with tracking and 345 MB without. :class:`TrackingProcess` is the
run's observer in the server: it turns each event into one JSON line (the
forms the app process already sends, :mod:`consortium.server.isolation.wire`)
and puts it on a bounded queue, which a thread writes to a child process
(``python -m consortium.server.tracking_process``, one per run) that runs the
real observers (:class:`~consortium.tracking.plot.PlotObserver`, then
:class:`~consortium.tracking.mlflow_tracker.MLflowObserver`, synchronously: the
child is the background). The round loop never waits for the child: a start
or a round that finds the queue full is dropped (logged once); the end waits,
as MLflow's own worker did, up to ``flush_timeout`` seconds for the child to
record it, so a finished run's MLflow record is complete when its status is.
What the child logs (warnings and errors only) lands in the server's log.
The child's memory is its own and goes when the run ends.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import IO, Any

from consortium.core.history import History, RoundRecord, RunInfo, round_to_json
from consortium.core.records import RecordLimits
from consortium.core.stack_dumps import dump_stacks_on_signal
from consortium.server.isolation.wire import round_from_json, run_info_from_json, run_info_to_json
from consortium.tracking.base import Observers, RunObserver

log = logging.getLogger("consortium.server")

#: events waiting for the child; a start or round beyond it is dropped, never waited for
EVENT_QUEUE = 64
#: seconds a run's end waits for the child to have recorded it (MLflowObserver's own bound)
FLUSH_TIMEOUT = 120.0
#: the child's command: this module, run by the server's own interpreter
CHILD_COMMAND = (sys.executable, "-m", "consortium.server.tracking_process")
#: modules ``import mlflow`` loads when they are installed, which logging a run never
#: uses: the child keeps them out (measured: 164 -> 90 MB of RSS after ``import mlflow``,
#: and ~0.4 s less to start). An MLflow that needs one of them to import gets it.
UNNEEDED_MODULES = ("pandas", "pyarrow", "scipy")


@dataclass(frozen=True, slots=True)
class ChildConfig:
    """What the child tracks and where (the first line it reads)."""

    #: MLflow's store (None: no MLflow, the plot only)
    tracking_uri: str | None
    artifact_location: str | None
    plot: bool
    #: the run folder's files logged as MLflow artifacts at the end
    artifacts: tuple[str, ...]


class TrackingProcess:
    """A run's observer that hands its events to a child process (see the module docstring).

    One instance per run; ``command`` is the child's command line (a test may
    give another).
    """

    def __init__(
        self,
        config: ChildConfig,
        *,
        command: Sequence[str] = CHILD_COMMAND,
        queue_size: int = EVENT_QUEUE,
        flush_timeout: float = FLUSH_TIMEOUT,
    ) -> None:
        if queue_size < 2:  # the config and the start always fit
            raise ValueError(f"queue_size must be at least 2, got {queue_size}")
        self.config = config
        self.command = tuple(command)
        self.flush_timeout = flush_timeout
        self._queue: queue.Queue[bytes | None] = queue.Queue(queue_size)
        self._thread: threading.Thread | None = None
        self._child: subprocess.Popen[bytes] | None = None
        self._run_id = ""
        #: events dropped because the queue was full (the child fell behind)
        self.dropped = 0
        #: the child's exit status once it ended (None: not started, or still running)
        self.returncode: int | None = None

    @property
    def pid(self) -> int | None:
        """The child's process id (None: not started)."""
        return self._child.pid if self._child is not None else None

    # -- RunObserver (on the run's thread) -------------------------------------------
    def on_run_start(self, info: RunInfo) -> None:
        if self._thread is not None:
            return  # one run per instance
        self._run_id = info.run_id
        try:
            child = subprocess.Popen(
                self.command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, close_fds=True,
            )  # fmt: skip
        except OSError as exc:
            log.warning("tracking of run %s: could not start its process (%s); the run "
                        "is not tracked", info.run_id, exc)  # fmt: skip
            return
        self._child = child
        first = {"event": "start", "run_id": info.run_id, "run_dir": info.run_dir,
                 "info": run_info_to_json(info)}  # fmt: skip
        self._queue.put_nowait(_line(asdict(self.config)))  # empty: cannot be full
        self._offer(first)
        self._thread = threading.Thread(
            target=self._pump, args=(child,), name=f"tracking-{info.run_id}", daemon=True
        )
        self._thread.start()

    def on_round_end(self, record: RoundRecord) -> None:
        if self._thread is not None:
            self._offer({"event": "round", "record": round_to_json(record)})

    def on_run_end(self, history: History, *, failed: bool) -> None:
        """Hand the end to the child and wait (``flush_timeout`` at most) for it to be
        recorded."""
        if self._thread is None:
            return
        end = {"event": "end", "failed": failed,
               "rounds": [round_to_json(r) for r in history.rounds]}  # fmt: skip
        deadline = time.monotonic() + self.flush_timeout
        with contextlib.suppress(queue.Full):  # close() stops a child that took nothing
            self._queue.put(_line(end), timeout=self.flush_timeout)
        self.close(max(0.0, deadline - time.monotonic()))

    def close(self, timeout: float | None = None) -> None:
        """Let the child finish (a run without an end is recorded as failed) within
        ``timeout`` seconds (``flush_timeout``), then stop it. Idempotent."""
        thread, child = self._thread, self._child
        if thread is None or child is None or not thread.is_alive():
            return
        timeout = self.flush_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            log.warning("tracking of run %s still busy %.0f s after the run ended: stopped",
                        self._run_id, timeout)  # fmt: skip
            child.kill()  # the writer's next write fails: it drains the queue and ends
            self._queue.put(None)
            thread.join(5.0)

    # -- plumbing ----------------------------------------------------------------------
    def _offer(self, event: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(_line(event))
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1:
                log.warning("tracking of run %s has fallen behind: %s event dropped (MLflow "
                            "and the plot miss it)", self._run_id, event["event"])  # fmt: skip

    def _pump(self, child: subprocess.Popen[bytes]) -> None:
        """The writer thread: feed the child the queue, then wait for it to end."""
        assert child.stdin is not None and child.stderr is not None
        relay = threading.Thread(target=self._relay, args=(child.stderr,), daemon=True,
                                 name=f"tracking-log-{self._run_id}")  # fmt: skip
        relay.start()
        broken = False
        for line in self._lines():
            if broken:
                continue
            try:
                child.stdin.write(line)
                child.stdin.flush()
            except OSError:  # BrokenPipeError: it ended (its own log says why)
                broken = True
        with contextlib.suppress(OSError):
            child.stdin.close()
        self.returncode = child.wait()  # bounded by close(), which kills it
        relay.join(5.0)
        if self.returncode != 0:
            log.warning("tracking of run %s: its process ended with status %s",
                        self._run_id, self.returncode)  # fmt: skip

    def _lines(self) -> Iterator[bytes]:
        while (line := self._queue.get()) is not None:
            yield line

    def _relay(self, stream: IO[bytes]) -> None:
        for raw in stream:
            text = raw.decode("utf-8", "replace").rstrip()
            if text:
                log.warning("tracking of run %s: %s", self._run_id, text)


def _line(event: dict[str, Any]) -> bytes:
    return (json.dumps(event, separators=(",", ":")) + "\n").encode()


# -- the child ---------------------------------------------------------------------------
def _without_unneeded_modules() -> None:
    """Import MLflow with :data:`UNNEEDED_MODULES` kept out (None in ``sys.modules``:
    an import of them raises ImportError, which MLflow treats as not installed); if it
    cannot do without them, let them in."""
    kept_out = [name for name in UNNEEDED_MODULES if name not in sys.modules]
    for name in kept_out:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        import mlflow.tracking  # noqa: F401
    except ImportError:
        for name in kept_out:
            del sys.modules[name]
        log.debug("MLflow needs %s to import: let in", ", ".join(kept_out))


def _observers(config: dict[str, Any]) -> Observers:
    observers: list[RunObserver] = []
    if config["plot"]:  # before MLflow, so metrics.png exists when MLflow collects artifacts
        from consortium.tracking.plot import PlotObserver

        observers.append(PlotObserver())
    if config["tracking_uri"] is not None:
        _without_unneeded_modules()
        from consortium.tracking.mlflow_tracker import MLflowObserver

        observers.append(
            MLflowObserver(
                config["tracking_uri"],
                artifact_location=config["artifact_location"],
                artifacts=tuple(config["artifacts"]),
                background=False,  # this process is the background
            )
        )
    return Observers(observers)


def serve(lines: Iterator[bytes]) -> int:
    """The child's loop over the server's lines: config, start, rounds, end. A server that
    goes away mid-run (no end line) leaves the run recorded as failed."""
    limits = RecordLimits()
    first = next(lines, None)
    if first is None:  # the server went away before the run started
        return 0
    observers = _observers(json.loads(first))
    rounds: list[RoundRecord] = []
    started = False
    for raw in lines:
        event = json.loads(raw)
        kind = event["event"]
        if kind == "start":
            info = run_info_from_json(event["info"], event["run_id"], event["run_dir"], limits)
            observers.on_run_start(info)
            started = True
        elif kind == "round" and started:
            record = round_from_json(event["record"], limits)
            rounds.append(record)
            observers.on_round_end(record)
        elif kind == "end" and started:
            ended = [round_from_json(r, limits) for r in event["rounds"]]
            observers.on_run_end(History(ended), failed=bool(event["failed"]))
            return 0
    if started:
        log.warning("the server went away before the run ended: recorded as failed")
        observers.on_run_end(History(rounds), failed=True)
    return 0


def main() -> int:
    # Ctrl-C in the server's terminal reaches this process too: the server ends the run
    # (and then this process, by closing its input), not the keyboard
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    dump_stacks_on_signal()  # kill -USR1 PID: every thread's stack in the server's log
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")  # fmt: skip
    return serve(iter(sys.stdin.buffer))


if __name__ == "__main__":
    sys.exit(main())
