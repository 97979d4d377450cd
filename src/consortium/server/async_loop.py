"""The asynchronous loop: keep nodes busy, fold replies as they finish, step when told.

:class:`AsyncLoop` drives an :class:`~consortium.strategy.fedbuff.AsyncStrategy`
(FedBuff, Nguyen et al. 2022) over an :class:`~consortium.core.grid.AsyncGrid`:

1. while fewer than ``strategy.concurrency`` tasks are in flight, ask the
   strategy for a task for one idle node and submit it, tagged with the
   model version it starts from;
2. wait on the grid clock for the next reply (or the earliest task deadline);
3. validate the reply exactly as the synchronous :class:`RoundLoop` does
   (error replies, ``num_examples``, NaN/inf, names, shapes, dtypes: the
   checks of :mod:`consortium.server.validate`), compute its staleness and
   fold it;
4. whenever the strategy is ready, apply a server step: the new version is
   handed to the next idle nodes at once.

Each server step is one :class:`RoundRecord` (``round`` = the new version)
listing the arrivals and failures since the previous step;
``train_metrics["clock"]`` is the grid clock when the step was applied and
``seconds`` the clock time the step took. The loop never reads a clock of its
own: timeouts and the stop time are on the grid's clock, so simulated time
and wall-clock time drive the same code. The server keeps each model version
that an in-flight task started from (at most ``concurrency + 1`` versions) to
compute ``Δ = y - x_version``.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from consortium.core.arrays import Arrays
from consortium.core.errors import ConfigError, RoundFailed, StrategyError, UpdateRejected
from consortium.core.grid import AsyncGrid
from consortium.core.history import History, NodeResult, Outcome, RoundRecord, RunInfo
from consortium.core.message import CONFIG, MODEL, QUERY, TRAIN, Content, Message
from consortium.core.records import Config
from consortium.core.rng import SERVER_KEY, derive_rng
from consortium.server.app import ModelExporter
from consortium.server.loop import RunResult
from consortium.server.model_io import save_model
from consortium.server.validate import check_finite, check_update, num_examples, reply_metrics
from consortium.strategy.fedbuff import AsyncStrategy, AsyncUpdate
from consortium.tracking.base import Observers, RunObserver

log = logging.getLogger("consortium.server")


@dataclass(slots=True)
class AsyncServerConfig:
    """How :class:`AsyncLoop` drives an asynchronous strategy.

    The run ends after ``num_steps`` server steps, when the grid clock passes
    ``max_clock`` seconds, or when ``stop_when(record)`` is true after a step.
    A task not answered ``task_timeout`` seconds (grid clock) after it was
    submitted counts as a timeout and frees its slot; its late reply is
    ignored. The run fails with :class:`RoundFailed` when
    ``max_failures_per_step`` tasks failed, were rejected or timed out since
    the last step. Central evaluation (``strategy.evaluate``) runs every
    ``evaluate_every`` steps; there is no federated evaluation stage.
    """

    strategy: AsyncStrategy
    num_steps: int = 10
    task_timeout: float | None = None
    evaluate_every: int = 1
    max_failures_per_step: int = 100
    max_clock: float | None = None
    stop_when: Callable[[RoundRecord], bool] | None = None
    exporter: ModelExporter | None = None

    def __post_init__(self) -> None:
        if self.num_steps < 0:
            raise ConfigError(f"num_steps must be >= 0, got {self.num_steps}")
        if self.task_timeout is not None and self.task_timeout <= 0:
            raise ConfigError(f"task_timeout must be > 0 seconds, got {self.task_timeout}")
        if self.evaluate_every < 0:
            raise ConfigError(f"evaluate_every must be >= 0, got {self.evaluate_every}")
        if self.max_failures_per_step < 1:
            raise ConfigError(
                f"max_failures_per_step must be >= 1, got {self.max_failures_per_step}"
            )
        if self.max_clock is not None and self.max_clock <= 0:
            raise ConfigError(f"max_clock must be > 0 seconds, got {self.max_clock}")


@dataclass(frozen=True, slots=True)
class _Task:
    node: str
    version: int
    started: float
    deadline: float | None


class AsyncLoop:
    """Runs ``config.strategy`` asynchronously over ``grid`` until a stop condition."""

    def __init__(
        self,
        config: AsyncServerConfig,
        grid: AsyncGrid,
        *,
        seed: int = 0,
        run_id: str | None = None,
        run_dir: Path | None = None,
        params: Config | None = None,
        observers: Sequence[RunObserver] = (),
    ) -> None:
        self.config = config
        self.strategy = config.strategy
        self.grid = grid
        self.seed = seed
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.run_dir = run_dir
        self.params: Config = {
            "num_steps": config.num_steps,
            "seed": seed,
            **self.strategy.settings(),
            **(params or {}),
        }
        self.observers = Observers(observers)
        self.history = History()
        self.version = 0
        self._tasks: dict[str, _Task] = {}  # message id -> task in flight
        self._models: dict[int, Arrays] = {}  # versions still needed
        self._refs: Counter[int] = Counter()
        self._task_count = 0

    # -- the run ----------------------------------------------------------------------
    def run(self) -> RunResult:
        info = RunInfo(
            run_id=self.run_id,
            num_rounds=self.config.num_steps,
            node_ids=self.grid.node_ids(),
            params=self.params,
            run_dir=str(self.run_dir) if self.run_dir else None,
        )
        self.observers.on_run_start(info)
        try:
            arrays = self._initial_arrays()
            initial = self.strategy.evaluate(0, arrays) or {}
            arrays = self._drive(arrays)
            files = self._save(arrays)
        except BaseException:
            self.observers.on_run_end(self.history, failed=True)
            raise
        self.observers.on_run_end(self.history, failed=False)
        return RunResult(self.run_id, arrays, self.history, initial, self.run_dir, files)

    def _drive(self, arrays: Arrays) -> Arrays:
        cfg = self.config
        self._models = {0: arrays}
        record = RoundRecord(round=1)
        step_started = self.grid.now()
        while self.version < cfg.num_steps:
            if cfg.max_clock is not None and self.grid.now() >= cfg.max_clock:
                log.info("run %s: clock passed max_clock=%s", self.run_id, cfg.max_clock)
                break
            self._fill(arrays)
            if not self._tasks:
                raise RoundFailed(
                    f"step {self.version + 1}: no task could be started "
                    f"({len(self.grid.node_ids())} nodes available)"
                )
            wait = self._wait()
            reply = self.grid.next_reply(wait)
            if reply is None and wait is None:
                raise RoundFailed(
                    f"step {self.version + 1}: the grid has nothing in flight but "
                    f"{len(self._tasks)} task(s) were never answered"
                )
            if reply is not None:
                self._receive(reply, record)
            self._expire(record)
            failures = record.failures()
            if len(failures) >= cfg.max_failures_per_step:
                shown = "; ".join(
                    f"{n.node_id}: {n.outcome.value} ({n.reason})" for n in failures[:10]
                )
                more = f"; and {len(failures) - 10} more" if len(failures) > 10 else ""
                raise RoundFailed(
                    f"step {self.version + 1}: {len(failures)} tasks failed since the last step. "
                    f"Failures: {shown}{more}"
                )
            if self.strategy.ready():
                arrays = self._step(arrays, record, step_started)
                if cfg.stop_when is not None and cfg.stop_when(record):
                    break
                record = RoundRecord(round=self.version + 1)
                step_started = self.grid.now()
        return arrays

    def _step(self, arrays: Arrays, record: RoundRecord, started: float) -> Arrays:
        new, metrics = self.strategy.step(self.version, arrays)
        old = self.version
        self.version += 1
        self._models[self.version] = new
        if self._refs[old] == 0:
            self._models.pop(old, None)
        now = self.grid.now()
        record.round = self.version
        record.train_metrics = {**metrics, "clock": now}
        every = self.config.evaluate_every
        if every and self.version % every == 0:
            record.central_metrics = self.strategy.evaluate(self.version, new) or {}
        record.seconds = now - started
        self.history.rounds.append(record)
        self.observers.on_round_end(record)
        return new

    # -- tasks ------------------------------------------------------------------------
    def _fill(self, arrays: Arrays) -> None:
        nodes = self.grid.node_ids()
        limit = min(self.strategy.concurrency, len(nodes))
        while len(self._tasks) < limit:
            busy = {t.node for t in self._tasks.values()}
            idle = [n for n in nodes if n not in busy]
            self._task_count += 1
            rng = derive_rng(self.seed, self._task_count, SERVER_KEY, stream="async-train")
            instr = self.strategy.configure_task(self.version, arrays, idle, rng)
            if instr is None:
                return
            if instr.node_id not in idle:
                raise StrategyError(
                    f"{type(self.strategy).__name__} chose node {instr.node_id!r}, "
                    "which is not idle"
                )
            content = Content(arrays={MODEL: instr.arrays, **instr.records})
            content.configs[CONFIG] = instr.config
            msg = self._message(instr.node_id, self._task_count, TRAIN, content)
            now = self.grid.now()
            timeout = self.config.task_timeout
            self.grid.submit(msg)
            self._tasks[msg.metadata.message_id] = _Task(
                instr.node_id, self.version, now, None if timeout is None else now + timeout
            )
            self._refs[self.version] += 1

    def _wait(self) -> float | None:
        """How long to wait for a reply: until the earliest deadline or ``max_clock``."""
        ends = [t.deadline for t in self._tasks.values() if t.deadline is not None]
        if self.config.max_clock is not None:
            ends.append(self.config.max_clock)
        if not ends:
            return None
        return max(0.0, min(ends) - self.grid.now())

    def _release(self, version: int) -> None:
        self._refs[version] -= 1
        if self._refs[version] <= 0:
            del self._refs[version]
            if version != self.version:
                self._models.pop(version, None)

    def _expire(self, record: RoundRecord) -> None:
        now = self.grid.now()
        for mid, task in list(self._tasks.items()):
            if task.deadline is not None and task.deadline <= now:
                del self._tasks[mid]
                self._release(task.version)
                record.nodes.append(
                    NodeResult(
                        task.node,
                        TRAIN,
                        Outcome.TIMEOUT,
                        reason=f"no reply within task_timeout={self.config.task_timeout}s",
                        seconds=now - task.started,
                    )
                )
                log.warning("run %s: node %s did not reply in time", self.run_id, task.node)

    def _receive(self, reply: Message, record: RoundRecord) -> None:
        task = self._tasks.pop(reply.metadata.reply_to or "", None)
        if task is None:
            log.warning(
                "run %s: ignoring late or unexpected reply from %s", self.run_id, reply.metadata.src
            )
            return
        base = self._models[task.version]
        result = judge_reply(reply, TRAIN)
        result.node_id = task.node
        result.seconds = self.grid.now() - task.started
        record.nodes.append(result)
        try:
            if result.outcome is Outcome.OK:
                assert reply.content is not None
                records = {k: v for k, v in reply.content.arrays.items() if k != MODEL}
                check_update(base, reply.content.model)
                for name, extra in records.items():
                    check_finite(extra, what=f"record {name!r}")
                assert reply.content.model is not None
                self.strategy.fold(
                    AsyncUpdate(
                        task.node,
                        reply.content.model,
                        base,
                        task.version,
                        self.version - task.version,
                        result.num_examples,
                        result.metrics,
                        records,
                    )
                )
        except UpdateRejected as exc:
            result.outcome, result.reason = Outcome.REJECTED, str(exc)
        finally:
            self._release(task.version)
        if result.outcome is not Outcome.OK:
            log.warning(
                "run %s: update from node %s %s: %s\n%s",
                self.run_id,
                task.node,
                result.outcome.value,
                result.reason,
                result.traceback,
            )

    # -- messaging --------------------------------------------------------------------
    def _message(self, node: str, number: int, kind: str, content: Content) -> Message:
        # deadlines live on the grid clock, which a node cannot read: none in the metadata
        return Message.create(
            run_id=self.run_id, dst=node, round=number, kind=kind, content=content
        )

    def _initial_arrays(self) -> Arrays:
        arrays = self.strategy.initialize(derive_rng(self.seed, 0, SERVER_KEY, stream="init"))
        if arrays is not None:
            return arrays
        nodes = sorted(self.grid.node_ids())
        if not nodes:
            raise RoundFailed("no node is available to provide initial parameters")
        msg = self._message(nodes[0], 0, QUERY, Content.of(Arrays(), {}))
        self.grid.submit(msg)
        while True:
            reply = self.grid.next_reply(self.config.task_timeout)
            if reply is None:
                raise RoundFailed(f"node {nodes[0]} sent no initial parameters in time")
            if reply.metadata.reply_to != msg.metadata.message_id:
                continue
            if reply.error is not None:
                raise RoundFailed(
                    f"node {nodes[0]} could not provide initial parameters: "
                    f"{reply.error.reason}\n{reply.error.traceback}"
                )
            assert reply.content is not None
            if reply.content.model is None:
                raise RoundFailed(f"node {nodes[0]} sent no initial parameters")
            return reply.content.model

    def _save(self, arrays: Arrays) -> list[Path]:
        if self.run_dir is None:
            return []
        files = [save_model(arrays, self.run_dir / "model.npz")]
        if self.config.exporter is not None:
            files += self.config.exporter(arrays, self.run_dir)
        return files


def judge_reply(reply: Message, stage: str) -> NodeResult:
    """OK with the reply's metrics and ``num_examples``, or FAILED/REJECTED with the reason.

    The same rules as the synchronous loop: an error reply is FAILED (with the
    node's traceback); a missing or invalid ``num_examples`` is REJECTED.
    """
    node = reply.metadata.src
    if reply.error is not None:
        err = reply.error
        return NodeResult(node, stage, Outcome.FAILED, reason=err.reason, traceback=err.traceback)
    metrics = reply_metrics(reply)
    try:
        n = num_examples(metrics)
    except UpdateRejected as exc:
        return NodeResult(node, stage, Outcome.REJECTED, metrics=metrics, reason=str(exc))
    return NodeResult(node, stage, Outcome.OK, metrics=metrics, num_examples=n)
