"""The server's side of a run's app process: start it, carry out its requests, end it.

:meth:`AppProcess.start` spawns the sandboxed child, hands it the app and the
run config and waits until the app is loaded and configured (a bad app or
config fails the start request, as before isolation). :meth:`AppProcess.serve`
then carries out the child's Grid calls on the run's :class:`FleetGrid`,
records its rounds and checkpoints through the run's observers, and returns
how the run ended. The child is untrusted: a malformed frame, a message for
another run, a reused task id, a record over the limits or a checkpoint path
outside its directory ends the run with a clear error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from consortium.core.errors import ConfigError, ConsortiumError, WireFormatError
from consortium.core.history import History, RoundRecord
from consortium.core.message import Message
from consortium.core.records import Config, RecordLimits, UnacceptableRecord
from consortium.sandbox.channel import Buffer, ChannelClosed, ChannelError, Frame
from consortium.sandbox.confine import SandboxLimits, SandboxSpec
from consortium.sandbox.spawn import Sandboxed, spawn
from consortium.server.checkpoint import FAULT_PAUSE_ENV
from consortium.server.fleet_grid import FleetGrid
from consortium.server.fleet_state import RoundReplies
from consortium.server.isolation.app_log import AppLog
from consortium.server.isolation.reply_window import ReplyWindow
from consortium.server.isolation.wire import (
    decode_batch,
    encode_batch,
    round_from_json,
    run_info_from_json,
)
from consortium.tracking.base import Observers

log = logging.getLogger("consortium.server")

MODULE = "consortium.server.isolation.app_process"
#: how long loading and configuring an app may take (the StartRun call waits for it)
PREPARE_TIMEOUT = 120.0
#: how long an app may take to stop once its run is stopped, before it is killed
STOP_GRACE = 30.0
#: the most model files (the model and the app's exports) a run may leave
MAX_MODEL_FILES = 16
#: Grid calls one app process may have under way at once
MAX_CONCURRENT_CALLS = 8
OnCheckpoint = Callable[[int, Path], None]


class AppMisbehaved(ConsortiumError):
    """The app process sent something the server refuses; the run fails."""


@dataclass(frozen=True, slots=True)
class Isolation:
    """How the server confines app processes (``consortium server`` options)."""

    limits: SandboxLimits = field(default_factory=SandboxLimits)
    #: False only with --unconfined-apps (development): no Landlock
    confined: bool = True
    #: files and directories no app may read: the server's key, the CA, the state database
    secrets: tuple[Path, ...] = ()


@dataclass(slots=True)
class Ended:
    """How the app process ended: ``finished``, ``stopped`` or ``failed`` (with why)."""

    kind: str
    error: str | None = None
    #: the final model files the app wrote in its work folder (checked: plain files)
    model_files: list[Path] = field(default_factory=list)


class AppProcess:
    def __init__(self, child: Sandboxed, run_id: str, run_dir: Path, num_rounds: int):
        self.child = child
        self.run_id = run_id
        self.run_dir = run_dir
        self.checkpoint_dir = run_dir / "checkpoints"
        self.num_rounds = num_rounds
        self._task_ids: set[str] = set()
        self._calls = threading.BoundedSemaphore(MAX_CONCURRENT_CALLS)
        #: the app's ``send_and_receive`` calls whose replies are being forwarded
        self._windows: dict[int, ReplyWindow] = {}
        self._rounds: list[RoundRecord] = []
        self._killed_for_stop = False
        self._stop_requested = False
        self._stop_lock = threading.Lock()
        self._ended = threading.Event()
        self._app_log = AppLog(run_id)

    @classmethod
    def start(
        cls,
        *,
        run_id: str,
        app_dir: Path,
        server_ref: str,
        run_config: Config,
        seed: int,
        run_dir: Path,
        resume: bool,
        isolation: Isolation,
        max_frame: int,
    ) -> AppProcess:
        """Spawn the run's app process and wait until its app is configured."""
        workdir = run_dir / "work"
        checkpoint_dir = run_dir / "checkpoints"
        for d in (workdir, checkpoint_dir):
            d.mkdir(parents=True, exist_ok=True)
        spec = SandboxSpec(
            workdir=str(workdir),
            read_paths=(str(app_dir),),
            write_paths=(str(checkpoint_dir),),
            limits=isolation.limits,
            confined=isolation.confined,
        )
        fault = {FAULT_PAUSE_ENV: os.environ[FAULT_PAUSE_ENV]} \
            if FAULT_PAUSE_ENV in os.environ else {}  # fmt: skip
        child = spawn(MODULE, spec, log_path=run_dir / "app.log", max_payload=max_frame,
                      secrets=isolation.secrets, extra_env=fault, shared=True)  # fmt: skip
        try:
            child.channel.send("start", {
                "run_id": run_id, "app_dir": str(app_dir), "server": server_ref,
                "run_config": run_config, "seed": seed, "run_dir": str(workdir),
                "checkpoint_dir": str(checkpoint_dir), "resume": resume,
            })  # fmt: skip
            frame = child.channel.recv(timeout=PREPARE_TIMEOUT)
        except (ChannelError, TimeoutError) as exc:
            child.kill()
            raise ConfigError(f"the app could not be loaded: {exc}; "
                              f"{child.exit_description()}") from exc  # fmt: skip
        if frame.kind != "prepared":
            child.kill()
            raise ConfigError(str(frame.header.get("error", f"the app process said {frame.kind}")))
        rounds = frame.header.get("num_rounds")
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
            child.kill()
            raise ConfigError(f"the app process reported {rounds!r} rounds")
        return cls(child, run_id, run_dir, rounds)

    # -- serving the run ----------------------------------------------------------------
    def serve(
        self,
        grid: FleetGrid,
        observers: Observers,
        on_checkpoint: OnCheckpoint,
        limits: RecordLimits,
        history: History | None = None,
    ) -> Ended:
        """Carry out the app process's requests until it ends; returns how it ended.

        ``history`` is what a resumed run did before (its checkpoint's rounds).
        """
        self._rounds = list(history.rounds) if history is not None else []
        self._grid, self._observers = grid, observers
        self._on_checkpoint, self._limits = on_checkpoint, limits
        lender = self.child.channel.lender
        if lender is not None:
            grid.receive_replies_into(self.run_id, lender.allocate_for_upload)
        try:
            return self._loop()
        except (WireFormatError, UnacceptableRecord, AppMisbehaved) as exc:
            log.error("run %s: the app process sent what the server refuses: %s", self.run_id, exc)
            self.child.kill()
            return Ended("failed", f"the app process was stopped: {exc}")
        finally:
            grid.receive_replies_into(self.run_id, None)
            self._ended.set()
            for window in list(self._windows.values()):
                window.close()
            self.child.close()

    def request_stop(self) -> None:
        """Ask the app to stop (its context's ``stopping``); kill it if it has not ended
        :data:`STOP_GRACE` seconds later."""
        with self._stop_lock:
            if self._stop_requested:
                return
            self._stop_requested = True
        with contextlib.suppress(ChannelError):
            self.child.channel.send("stop")
        threading.Thread(target=self._kill_if_still_running, daemon=True,
                         name=f"run-{self.run_id}-stop").start()  # fmt: skip

    def _kill_if_still_running(self) -> None:
        if not self._ended.wait(STOP_GRACE):
            log.warning("run %s: the app did not stop within %g s: killed",
                        self.run_id, STOP_GRACE)  # fmt: skip
            self._killed_for_stop = True
            self.child.process.kill()

    def _loop(self) -> Ended:
        while True:
            try:
                frame = self.child.channel.recv()
            except ChannelError as exc:
                self.child.settle()
                if self._killed_for_stop:
                    return Ended("stopped")
                return Ended("failed", f"the app process ended unexpectedly ({exc}); "
                                       f"{self.child.exit_description()}")  # fmt: skip
            kind, h = frame.kind, frame.header
            if kind == "finished":
                return Ended(kind, model_files=self._model_files(h.get("model_files")))
            if kind == "stopped":
                return Ended(kind)
            if kind == "failed":
                return Ended("failed", str(h.get("error", "the app failed"))[:4096])
            if kind == "log":
                self._app_log.emit(h)
                continue
            rid = h.get("id")
            if isinstance(rid, bool) or not isinstance(rid, int):
                raise AppMisbehaved(f"a {kind!r} request without an id")
            if kind in ("consumed", "close"):
                window = self._windows.get(rid)  # a call already over: nothing to do
                if window is not None and kind == "consumed":
                    window.consumed()
                elif window is not None:
                    window.close()
            elif kind in ("wait_for_nodes", "send_and_receive", "pull"):
                self._in_thread(rid, kind, frame)
            else:
                self._answer(rid, kind, frame)
            # not kept while the next frame is awaited: a task batch's payload is the app's
            # model (where it lies, in shared memory), which the tasks hold until sent
            del frame

    def _in_thread(self, rid: int, kind: str, frame: Frame) -> None:
        """Calls that wait run in their own thread, so the app can stop or ask more."""
        if not self._calls.acquire(blocking=False):
            self._error(rid, f"more than {MAX_CONCURRENT_CALLS} Grid calls at once")
            return
        # the tasks, handed to the thread and dropped there once queued: the fleet holds
        # the model until each node has its copy, then nothing does (nor does the frame)
        tasks = [self._tasks(frame)] if kind == "send_and_receive" else []
        header = frame.header
        if kind == "send_and_receive":
            self._windows[rid] = ReplyWindow()

        def run() -> None:
            try:
                if kind == "wait_for_nodes":
                    nodes = self._grid.wait_for_nodes(
                        _int(header["count"]), _timeout(header["timeout"]) or 0.0
                    )
                    self._send("result", rid, {"nodes": nodes})
                elif kind == "pull":
                    got = self._grid.pull(_timeout(header.get("timeout")))
                    self._send_batch("result", rid, [got] if got is not None else [])
                else:
                    self._stream(rid, tasks.pop(), _timeout(header.get("timeout")))
            except ChannelClosed:
                pass  # the process is gone, or its channel broke: the loop sees it
            except Exception as exc:  # an answer refused before it left (ChannelError) too
                self._error(rid, f"{type(exc).__name__}: {exc}")
            finally:
                self._windows.pop(rid, None)
                self._calls.release()

        threading.Thread(target=run, daemon=True, name=f"run-{self.run_id}-{kind}").start()

    def _stream(self, rid: int, messages: list[Message], timeout: float | None) -> None:
        """Forward the replies as they come, a few ahead of what the app has consumed
        (``reply_window.REPLIES_AHEAD``): a reply the app is not ready for waits here,
        where the transfer budget counts it (and holds back further uploads), instead
        of piling up in the app process while it folds."""
        window = self._windows[rid]
        replies = self._grid.send_and_receive(messages, timeout=timeout, hold=window.hold)
        del messages  # queued: the fleet holds each task until it is sent
        try:
            while window.wait_for_room():
                reply = next(replies, None)  # its release goes to the window (window.hold)
                if reply is None or window.closed:
                    break
                window.sent()  # before it leaves: the app may say it consumed it at once
                # received into a block of the app's (fleet's reply_buffer), the reply's
                # arrays go as one range of it, which the app folds where it lies
                self._send_batch("reply", rid, [reply], skeletons_in_header=True)
                del reply
        finally:
            if isinstance(replies, RoundReplies):  # withdraw its tasks now, not at the deadline
                replies.close()
            window.release_all()
        self._send("end", rid, {})

    def _answer(self, rid: int, kind: str, frame: Frame) -> None:
        h = frame.header
        if kind == "node_ids":
            self._send("result", rid, {"nodes": self._grid.node_ids()})
        elif kind == "now":
            self._send("result", rid, {"now": self._grid.now()})
        elif kind == "push":
            self._grid.push(self._tasks(frame))
            self._send("result", rid, {})
        elif kind == "run_start":
            info = run_info_from_json(h.get("info"), self.run_id, str(self.run_dir), self._limits)
            self._observe(rid, lambda: self._observers.on_run_start(info))
        elif kind == "round":
            record = round_from_json(h.get("record"), self._limits)
            self._rounds.append(record)
            self._observe(rid, lambda: self._observers.on_round_end(record))
        elif kind == "run_end":
            failed = bool(h.get("failed"))
            history = History(list(self._rounds))
            self._observe(rid, lambda: self._observers.on_run_end(history, failed=failed))
        elif kind == "checkpoint":
            step, path = _int(h.get("step")), self._checkpoint_path(h.get("path"))
            self._observe(rid, lambda: self._on_checkpoint(step, path))
        else:
            raise AppMisbehaved(f"an unknown request {kind!r}")

    def _observe(self, rid: int, call: Callable[[], None]) -> None:
        try:
            call()
        except Exception as exc:  # a round that cannot be recorded fails the run there
            self._error(rid, str(exc) if isinstance(exc, ConsortiumError) else repr(exc))
            return
        self._send("result", rid, {})

    def _tasks(self, frame: Frame) -> list[Message]:
        messages = decode_batch(frame.header, frame.payload, self._limits)
        for msg in messages:
            meta = msg.metadata
            if meta.run_id != self.run_id:
                raise AppMisbehaved(f"a task for run {meta.run_id!r}, not {self.run_id!r}")
            if meta.message_id in self._task_ids or not meta.message_id:
                raise AppMisbehaved(f"task id {meta.message_id!r} was used before")
            if msg.error is not None:
                raise AppMisbehaved("a task cannot be an error message")
            self._task_ids.add(meta.message_id)
        return messages

    def _checkpoint_path(self, value: Any) -> Path:
        if not isinstance(value, str):
            raise AppMisbehaved("a checkpoint path that is not a string")
        path = Path(value)
        if path.parent.resolve() != self.checkpoint_dir.resolve() or not path.is_file() \
                or path.is_symlink():  # fmt: skip
            raise AppMisbehaved(f"checkpoint {value!r} is not a file in {self.checkpoint_dir}")
        return path

    def _model_files(self, names: Any) -> list[Path]:
        workdir = self.run_dir / "work"
        if not isinstance(names, list) or len(names) > MAX_MODEL_FILES:
            raise AppMisbehaved("the model files are not a short list")
        files = []
        for name in names:
            path = workdir / name if isinstance(name, str) else None
            if path is None or path.name != name or name in ("", ".", "..") \
                    or path.is_symlink() or not path.is_file():  # fmt: skip
                raise AppMisbehaved(f"model file {name!r} is not a file in {workdir}")
            files.append(path)
        return files

    # -- sending ------------------------------------------------------------------------
    def _send(self, kind: str, rid: int, header: dict[str, Any],
              payload: Buffer | list[Buffer] = b"") -> None:  # fmt: skip
        self.child.channel.send(kind, {**header, "id": rid}, payload)

    def _send_batch(self, kind: str, rid: int, messages: list[Message], *,
                    skeletons_in_header: bool = False) -> None:  # fmt: skip
        header, parts = encode_batch(messages, skeletons_in_header=skeletons_in_header) \
            if messages else ({}, [])  # fmt: skip
        self._send(kind, rid, header, parts)

    def _error(self, rid: int, error: str) -> None:
        with contextlib.suppress(ChannelError):
            self._send("error", rid, {"error": error})


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise AppMisbehaved(f"{value!r} is not a non-negative integer")
    return value


def _timeout(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e9:
        raise AppMisbehaved(f"timeout {value!r} is not a number of seconds")
    return float(value)
