"""The asynchronous workflow (FedBuff): keep nodes busy, fold arrivals, step when ready.

Over the grid's push/pull: up to ``strategy.concurrency`` tasks are in flight,
each on an idle node; every reply that finishes is validated and folded with
its staleness (server steps since the model it started from); whenever the
strategy is ready it takes a step, which becomes the next model version and
one record in the history. Each record lists the updates folded into that
step in arrival order, with their staleness, base version and task number:
the run's update sequence.

Checkpoints (deployment) are taken after every ``checkpoint_every`` steps:
the model, the strategy's state, the version and the task counter. Tasks in
flight at a crash are not in the checkpoint: after ``--resume`` their late
replies are refused as unknown and the resumed run hands out new tasks, so
the final model is exactly the fold of the recorded update sequence — no
update counted twice, none missing from the record.
"""

from __future__ import annotations

import logging
from typing import Any

from consortium.core.arrays import Arrays
from consortium.core.errors import RoundFailed, StrategyError, UpdateRejected
from consortium.core.grid import Grid
from consortium.core.history import NodeResult, Outcome, RoundRecord, describe_failures
from consortium.core.message import TRAIN, Message
from consortium.core.protocol import (
    FEDBUFF_UPDATE_BASE_VERSION,
    FEDBUFF_UPDATE_STALENESS,
    FEDBUFF_UPDATE_TASK,
    PARAM_NUM_STEPS,
    PARAM_SEED,
)
from consortium.core.records import Config
from consortium.server.config import AsyncServerConfig, strategy_params
from consortium.server.context import ServerContext
from consortium.server.workflow.inflight import InFlight, Task
from consortium.server.workflow.replies import judge_reply, validated_update
from consortium.server.workflow.tasks import (
    instruction_content,
    online_nodes,
    query_initial_model,
    task_message,
)
from consortium.strategy.fedbuff import AsyncUpdate

log = logging.getLogger("consortium.server")


class FedBuffWorkflow:
    """Runs ``config.strategy`` asynchronously over the grid (see the module docstring)."""

    def __init__(self, config: AsyncServerConfig) -> None:
        self.config = config
        self.strategy = config.strategy
        self.version = 0
        self._task_count = 0
        self._flight = InFlight(0, Arrays())

    def params(self, ctx: ServerContext) -> Config:
        """The run's hyperparameters, the strategy's among them."""
        return {
            PARAM_NUM_STEPS: self.config.num_steps,
            PARAM_SEED: ctx.seed,
            **strategy_params(self.strategy.settings()),
        }

    # -- the run ----------------------------------------------------------------------
    def __call__(self, grid: Grid, ctx: ServerContext) -> None:
        cfg = self.config
        ctx.start_run(grid.node_ids(), cfg.num_steps, self.params(ctx))
        online_nodes(grid, self.strategy.min_available_nodes, cfg.node_wait)
        ctx.finish(self._drive(grid, ctx), cfg.exporter)

    def _first_model(self, grid: Grid, ctx: ServerContext) -> Arrays:
        """The model the run starts from: the restored checkpoint's, or a new one (its
        metrics recorded and checkpointed as version 0). Called by the step loop itself:
        a local of the caller would hold it for the whole run."""
        if ctx.restored is not None:
            return self._restore(ctx)
        initial = self.strategy.initialize(ctx.rng(0, stream="init"))
        arrays = (
            initial if initial is not None
            else query_initial_model(grid, ctx, self.config.task_timeout)
        )  # fmt: skip
        ctx.initial_metrics = self.strategy.evaluate(0, arrays) or {}
        self._checkpoint(ctx, arrays, force=True)
        return arrays

    def _restore(self, ctx: ServerContext) -> Arrays:
        assert ctx.restored is not None
        state = ctx.restored.state
        self.strategy.load_state_dict(state["strategy"])
        self.version = int(state["version"])
        self._task_count = int(state["tasks"])
        log.info(
            "run %s resumes at version %d (%d tasks handed out before)",
            ctx.run_id, self.version, self._task_count,
        )  # fmt: skip
        return ctx.restored.arrays

    def _checkpoint(self, ctx: ServerContext, arrays: Arrays, *, force: bool = False) -> None:
        every = self.config.checkpoint_every
        due = every and (self.version % every == 0 or self.version == self.config.num_steps)
        if not (force or due):
            return
        state: dict[str, Any] = {
            "strategy": self.strategy.state_dict(),
            "version": self.version,
            "tasks": self._task_count,
        }
        ctx.save_checkpoint(self.version, arrays, state)

    def _drive(self, grid: Grid, ctx: ServerContext) -> Arrays:
        """Run the steps from the first model; the final model."""
        cfg = self.config
        arrays = self._first_model(grid, ctx)
        self._flight = InFlight(self.version, arrays)
        record = RoundRecord(round=self.version + 1)
        step_started = grid.now()
        while self.version < cfg.num_steps:
            if cfg.max_clock is not None and grid.now() >= cfg.max_clock:
                log.info("run %s: clock passed max_clock=%s", ctx.run_id, cfg.max_clock)
                break
            ctx.check_stop(self.version + 1)
            self._fill(grid, ctx, arrays)
            if not self._flight:
                raise RoundFailed(
                    f"step {self.version + 1}: no task could be started "
                    f"({len(grid.node_ids())} nodes available)"
                )
            wait = self._wait(grid)
            reply = grid.pull(wait)
            if reply is None and wait is None:
                raise RoundFailed(
                    f"step {self.version + 1}: the grid has nothing in flight but "
                    f"{len(self._flight)} task(s) were never answered"
                )
            if reply is not None:
                self._receive(grid, ctx, reply, record)
            self._expire(grid, ctx, record)
            self._check_failures(record)
            if self.strategy.ready():
                arrays = self._step(grid, ctx, arrays, record, step_started)
                self._checkpoint(ctx, arrays)
                if cfg.stop_when is not None and cfg.stop_when(record):
                    break
                record = RoundRecord(round=self.version + 1)
                step_started = grid.now()
        return arrays

    def _check_failures(self, record: RoundRecord) -> None:
        failures = record.failures()
        if len(failures) < self.config.max_failures_per_step:
            return
        raise RoundFailed(
            f"step {self.version + 1}: {len(failures)} tasks failed since the last step. "
            f"Failures: {describe_failures(failures)}"
        )

    def _step(
        self, grid: Grid, ctx: ServerContext, arrays: Arrays, record: RoundRecord, started: float
    ) -> Arrays:
        new, metrics = self.strategy.step(self.version, arrays)
        self._flight.advance(new)
        self.version = self._flight.version
        now = grid.now()
        record.round = self.version
        record.train_metrics = {**metrics, "clock": now}
        every = self.config.evaluate_every
        if every and self.version % every == 0:
            record.central_metrics = self.strategy.evaluate(self.version, new) or {}
        record.seconds = now - started
        ctx.report(record)
        return new

    # -- tasks ------------------------------------------------------------------------
    def _fill(self, grid: Grid, ctx: ServerContext, arrays: Arrays) -> None:
        nodes = grid.node_ids()
        limit = min(self.strategy.concurrency, len(nodes))
        while len(self._flight) < limit:
            busy = self._flight.busy()
            idle = [n for n in nodes if n not in busy]
            self._task_count += 1
            rng = ctx.rng(self._task_count, stream="async-train")
            instr = self.strategy.configure_task(self.version, arrays, idle, rng)
            if instr is None:
                return
            if instr.node_id not in idle:
                raise StrategyError(
                    f"{type(self.strategy).__name__} chose node {instr.node_id!r}, "
                    "which is not idle"
                )
            # deadlines live on the grid clock, which a node cannot read: none in the message
            msg = task_message(
                ctx, instr.node_id, self._task_count, TRAIN, instruction_content(instr), None
            )
            now = grid.now()
            timeout = self.config.task_timeout
            grid.push([msg])
            deadline = None if timeout is None else now + timeout
            task = Task(instr.node_id, self._task_count, self.version, now, deadline)
            self._flight.start(msg.metadata.message_id, task)

    def _wait(self, grid: Grid) -> float | None:
        """How long to wait for a reply: until the earliest deadline or ``max_clock``."""
        ends = [self._flight.next_deadline(), self.config.max_clock]
        known = [e for e in ends if e is not None]
        return max(0.0, min(known) - grid.now()) if known else None

    def _expire(self, grid: Grid, ctx: ServerContext, record: RoundRecord) -> None:
        now = grid.now()
        for task in self._flight.expire(now):
            record.nodes.append(
                NodeResult(
                    task.node,
                    TRAIN,
                    Outcome.TIMEOUT,
                    reason=f"no reply within task_timeout={self.config.task_timeout}s",
                    seconds=now - task.started,
                )
            )
            log.warning("run %s: node %s did not reply in time", ctx.run_id, task.node)

    def _receive(self, grid: Grid, ctx: ServerContext, reply: Message, record: RoundRecord) -> None:
        task = self._flight.finish(reply.metadata.reply_to or "")
        if task is None:
            log.warning(
                "run %s: ignoring late or unexpected reply from %s", ctx.run_id, reply.metadata.src
            )
            return
        base = self._flight.model(task.version)
        result = judge_reply(reply, TRAIN)
        result.node_id = task.node
        result.seconds = grid.now() - task.started
        record.nodes.append(result)
        staleness = self.version - task.version
        try:
            if result.outcome is Outcome.OK:
                model, records = validated_update(base, reply, base)
                self.strategy.fold(
                    AsyncUpdate(
                        task.node,
                        model,
                        base,
                        task.version,
                        staleness,
                        result.num_examples,
                        result.metrics,
                        records,
                    )
                )
                # the update sequence, recorded (a copy: the strategy keeps the reply's metrics)
                result.metrics = {
                    **result.metrics,
                    FEDBUFF_UPDATE_STALENESS: staleness,
                    FEDBUFF_UPDATE_BASE_VERSION: task.version,
                    FEDBUFF_UPDATE_TASK: task.number,
                }
        except UpdateRejected as exc:
            result.outcome, result.reason = Outcome.REJECTED, str(exc)
        finally:
            self._flight.release(task)
        if result.outcome is not Outcome.OK:
            log.warning(
                "run %s: update from node %s %s: %s\n%s",
                ctx.run_id, task.node, result.outcome.value, result.reason, result.traceback,
            )  # fmt: skip
