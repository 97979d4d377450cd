"""The synchronous round loop as a workflow: what ``ServerApp(server_fn=...)`` runs.

Each round: wait for the strategy's ``min_available_nodes``, let the strategy
sample and configure nodes, send the tasks, fold the validated replies as
they stream in, run federated and central evaluation, report the round and
checkpoint it. A round counts when at least ``max(min_replies,
ceil(min_reply_fraction × sampled))`` valid updates arrived; otherwise it is
retried ``round_retries`` times, then the run fails with ``RoundFailed``.

Resuming after a crash: the checkpoint holds the model and the strategy's
state after round r; every random choice derives from (seed, round), so the
rounds after r are the ones an uninterrupted run would have had.
"""

from __future__ import annotations

import logging
import time

from consortium.core.arrays import Arrays
from consortium.core.errors import RoundFailed, StopTraining
from consortium.core.grid import Grid
from consortium.core.history import RoundRecord
from consortium.core.message import EVALUATE, TRAIN
from consortium.core.protocol import PARAM_NUM_ROUNDS, PARAM_SEED
from consortium.core.records import Config
from consortium.server.compression import compress_tasks
from consortium.server.config import ServerConfig, strategy_params
from consortium.server.context import ServerContext
from consortium.server.global_model import GlobalModel
from consortium.server.workflow.replies import ReplyCollector, required_replies
from consortium.server.workflow.tasks import online_nodes, query_initial_model, task_messages

log = logging.getLogger("consortium.server")


class RoundWorkflow:
    """Runs ``config.num_rounds`` rounds of ``config.strategy`` (see the module docstring)."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.strategy = config.strategy

    def __call__(self, grid: Grid, ctx: ServerContext) -> None:
        cfg = self.config
        online_nodes(grid, self.strategy.min_available_nodes, cfg.node_wait)
        ctx.start_run(grid.node_ids(), cfg.num_rounds, self.params(ctx))
        if ctx.restored is not None:
            self.strategy.load_state_dict(ctx.restored.state)
            model = GlobalModel(ctx.restored.arrays)
            model.on_disk(ctx.restored.path, lambda: None)
            first = ctx.restored.round + 1
            log.info("run %s resumes after round %d", ctx.run_id, ctx.restored.round)
        else:
            arrays = self.strategy.initialize(ctx.rng(0, stream="init"))
            if arrays is None:
                arrays = query_initial_model(grid, ctx, cfg.round_timeout)
            model, first = GlobalModel(arrays), 1
            del arrays  # the model is ``model``'s to let go of (a local would hold it all run)
            ctx.initial_metrics = self.strategy.evaluate(0, model.arrays) or {}
            self._checkpoint(ctx, 0, model)  # so round 1 can let go of it too
        for rnd in range(first, cfg.num_rounds + 1):
            ctx.check_stop(rnd)
            try:
                model = GlobalModel(self._round_with_retries(grid, ctx, rnd, model))
            except StopTraining as exc:  # the strategy ends the run before this round
                log.warning("run %s finishes before round %d: %s", ctx.run_id, rnd, exc)
                break
            self._checkpoint(ctx, rnd, model)
        ctx.finish(model.arrays, cfg.exporter)

    def params(self, ctx: ServerContext) -> Config:
        """The run's hyperparameters, the strategy's among them."""
        return {
            PARAM_NUM_ROUNDS: self.config.num_rounds,
            PARAM_SEED: ctx.seed,
            **strategy_params(self.strategy.settings()),
        }

    def _checkpoint(self, ctx: ServerContext, rnd: int, model: GlobalModel) -> None:
        """Checkpoint after round ``rnd``: every ``checkpoint_every`` rounds and the last
        (round 0 is the initial model)."""
        every = self.config.checkpoint_every
        if not every or (rnd % every and rnd != self.config.num_rounds):
            return
        path = ctx.save_checkpoint(
            rnd,
            model.arrays,
            self.strategy.state_dict(),
            background=self.config.checkpoint_in_background,
        )
        if path is not None:
            model.on_disk(path, ctx.wait_checkpoints)

    def _round_with_retries(
        self, grid: Grid, ctx: ServerContext, rnd: int, model: GlobalModel
    ) -> Arrays:
        """Run round ``rnd``; if too few nodes replied, retry it as configured, then fail."""
        attempts = self.config.round_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                return self._round(grid, ctx, rnd, model)
            except RoundFailed as exc:
                if attempt == attempts:
                    raise
                log.warning(
                    "run %s round %d failed (attempt %d of %d), retrying: %s",
                    ctx.run_id, rnd, attempt, attempts, exc,
                )  # fmt: skip
        raise AssertionError("unreachable")

    def _round(self, grid: Grid, ctx: ServerContext, rnd: int, model: GlobalModel) -> Arrays:
        cfg, strategy = self.config, self.strategy
        started = time.perf_counter()
        record = RoundRecord(round=rnd)
        nodes = online_nodes(grid, strategy.min_available_nodes, cfg.node_wait)
        instructions = strategy.configure_train(
            rnd, model.arrays, nodes, ctx.rng(rnd, stream="train")
        )
        if not instructions:
            raise RoundFailed(f"round {rnd}: the strategy selected no node to train")
        sampled = [i.node_id for i in instructions]
        collector = ReplyCollector(ctx.run_id, rnd, record, time.perf_counter())
        messages = task_messages(ctx, rnd, TRAIN, instructions, cfg.round_timeout)
        del instructions
        # compression-downlink in the run config: the model travels compressed
        messages = compress_tasks(messages, ctx.run_config, ctx.rng(rnd, stream="compression"))
        replies = grid.send_and_receive(messages, timeout=cfg.round_timeout)
        del messages
        # the transport holds the model until every node has its copy; if it is also
        # in a checkpoint, nothing else needs it in memory during the fold
        model.release()
        need = required_replies(len(sampled), cfg.min_replies, cfg.min_reply_fraction)
        # one view of the model for the fold and for decoding compressed deltas: read back
        # from the checkpoint only if either looks at it
        current = model.current()
        stream = collector.train_replies(model.skeleton(), sampled, replies, need, current)
        new_arrays, record.train_metrics = strategy.aggregate_train(rnd, current, stream)
        self._end_round(grid, ctx, new_arrays, nodes, collector, started)
        return new_arrays

    def _end_round(
        self,
        grid: Grid,
        ctx: ServerContext,
        arrays: Arrays,
        nodes: list[str],
        collector: ReplyCollector,
        started: float,
    ) -> None:
        """After the round's aggregate: its federated evaluation (when due) and central
        evaluation, then the round's record to the observers."""
        record, rnd = collector.record, collector.record.round
        every = self.config.evaluate_every
        if every and rnd % every == 0:
            self._evaluate(grid, ctx, rnd, arrays, nodes, collector)
        record.central_metrics = self.strategy.evaluate(rnd, arrays) or {}
        record.seconds = time.perf_counter() - started
        ctx.report(record)

    def _evaluate(
        self,
        grid: Grid,
        ctx: ServerContext,
        rnd: int,
        arrays: Arrays,
        nodes: list[str],
        collector: ReplyCollector,
    ) -> None:
        """Federated evaluation of ``arrays`` on the nodes the strategy picks."""
        instructions = self.strategy.configure_evaluate(
            rnd, arrays, nodes, ctx.rng(rnd, stream="evaluate")
        )
        if not instructions:
            return
        collector.sent_at = time.perf_counter()
        messages = task_messages(ctx, rnd, EVALUATE, instructions, self.config.round_timeout)
        replies = grid.send_and_receive(messages, timeout=self.config.round_timeout)
        evaluated = collector.evaluate_replies([i.node_id for i in instructions], replies)
        collector.record.evaluate_metrics = self.strategy.aggregate_evaluate(rnd, evaluated)
