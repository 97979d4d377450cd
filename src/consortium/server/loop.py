"""The default round loop: drive a strategy over a grid, round after round."""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from consortium.core.arrays import Arrays
from consortium.core.errors import ConsortiumError, RoundFailed, UpdateRejected
from consortium.core.grid import Grid
from consortium.core.history import History, NodeResult, Outcome, RoundRecord, RunInfo
from consortium.core.message import (
    CONFIG,
    EVALUATE,
    MODEL,
    QUERY,
    TIMING_RECORD,
    TRAIN,
    Content,
    Message,
)
from consortium.core.records import Config, Metrics
from consortium.core.rng import SERVER_KEY, derive_rng
from consortium.server.app import ServerConfig
from consortium.server.checkpoint import Checkpoint, checkpoint_path, prepare_checkpoint
from consortium.server.checkpoint_writer import CheckpointWriter
from consortium.server.global_model import GlobalModel
from consortium.server.model_io import save_model
from consortium.server.validate import check_finite, check_update, num_examples, reply_metrics
from consortium.strategy.base import EvaluateReply, Instruction, TrainReply
from consortium.tracking.base import Observers, RunObserver

log = logging.getLogger("consortium.server")


@dataclass(slots=True)
class RunResult:
    """What a finished run leaves behind."""

    run_id: str
    arrays: Arrays
    history: History
    initial_metrics: Metrics = field(default_factory=dict)
    run_dir: Path | None = None
    model_files: list[Path] = field(default_factory=list)


class RunStopped(ConsortiumError):
    """The coordinator stopped the run between rounds."""


class RoundLoop:
    """Runs ``config.num_rounds`` rounds of ``config.strategy`` over ``grid``."""

    def __init__(
        self,
        config: ServerConfig,
        grid: Grid,
        *,
        seed: int = 0,
        run_id: str | None = None,
        run_dir: Path | None = None,
        params: Config | None = None,
        observers: Sequence[RunObserver] = (),
        stop: threading.Event | None = None,
        checkpoint_dir: Path | None = None,
        resume: Checkpoint | None = None,
        on_checkpoint: Callable[[int, Path], None] | None = None,
    ) -> None:
        self.config = config
        self.stop = stop
        self.checkpoint_dir = checkpoint_dir
        self.resume = resume
        self._writer = CheckpointWriter(
            on_checkpoint,
            background=config.checkpoint_in_background,
            budget=getattr(grid, "transfer_budget", None),
        )
        self.strategy = config.strategy
        self.grid = grid
        self.seed = seed
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.run_dir = run_dir
        # the strategy's own settings are namespaced so an app's run config (which may
        # have its own "strategy" key) never hides them
        settings = {
            ("strategy.name" if key == "strategy" else f"strategy.{key}"): value
            for key, value in self.strategy.settings().items()
        }
        self.params: Config = {
            "num_rounds": config.num_rounds,
            "seed": seed,
            **settings,
            **(params or {}),
        }
        self.observers = Observers(observers)
        self.history = History()
        self._sent_at = time.perf_counter()

    # -- the run ----------------------------------------------------------------
    def run(self) -> RunResult:
        info = RunInfo(
            run_id=self.run_id,
            num_rounds=self.config.num_rounds,
            node_ids=self.grid.node_ids(),
            params=self.params,
            run_dir=str(self.run_dir) if self.run_dir else None,
        )
        self.observers.on_run_start(info)
        try:
            if self.resume is not None:
                model = GlobalModel(self._restore(self.resume))
                model.on_disk(self.resume.path, lambda: None)
                first, initial = self.resume.round + 1, {}
            else:
                model, first = GlobalModel(self._initial_arrays()), 1
                initial = self.strategy.evaluate(0, model.arrays) or {}
                self._checkpoint(0, model)  # so round 1 can let go of it too
            for rnd in range(first, self.config.num_rounds + 1):
                if self.stop is not None and self.stop.is_set():
                    raise RunStopped(f"run {self.run_id} stopped before round {rnd}")
                model = GlobalModel(self._round_with_retries(rnd, model))
                self._checkpoint(rnd, model)
            self._writer.wait()
            arrays = model.arrays
            files = self._save(arrays)
        except BaseException:
            self._finish_writes()
            self.observers.on_run_end(self.history, failed=True)
            raise
        self.observers.on_run_end(self.history, failed=False)
        return RunResult(self.run_id, arrays, self.history, initial, self.run_dir, files)

    def _round_with_retries(self, rnd: int, model: GlobalModel) -> Arrays:
        """Run round ``rnd``; if too few nodes replied, retry it as configured, then fail."""
        attempts = self.config.round_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                return self._round(rnd, model)
            except RoundFailed as exc:
                if attempt == attempts:
                    raise
                log.warning(
                    "run %s round %d failed (attempt %d of %d), retrying: %s",
                    self.run_id, rnd, attempt, attempts, exc,
                )  # fmt: skip
        raise AssertionError("unreachable")

    def _restore(self, ckpt: Checkpoint) -> Arrays:
        """Continue after ``ckpt``: its model, strategy state and history."""
        self.strategy.load_state_dict(ckpt.strategy_state)
        self.history = ckpt.history
        log.info("run %s resumes after round %d (%s)", self.run_id, ckpt.round, ckpt.path)
        return ckpt.arrays

    def _checkpoint(self, rnd: int, model: GlobalModel) -> None:
        """Checkpoint after round ``rnd`` (every ``checkpoint_every`` rounds, and the last;
        round 0 is the initial model)."""
        if self.checkpoint_dir is None:
            return
        every = self.config.checkpoint_every
        if not every or (rnd % every and rnd != self.config.num_rounds):
            return
        prepared = prepare_checkpoint(
            self.checkpoint_dir,
            rnd,
            model.arrays,
            self.strategy.state_dict(),
            self.history,
            seed=self.seed,
            run_id=self.run_id,
            keep=2,
        )
        self._writer.submit(prepared)
        model.on_disk(checkpoint_path(self.checkpoint_dir, rnd), self._writer.wait)

    def _finish_writes(self) -> None:
        """The run is failing: let a checkpoint in flight land (it is valid), report errors."""
        try:
            self._writer.wait()
        except Exception as exc:
            log.error("run %s: checkpoint write failed: %s", self.run_id, exc)

    def _initial_arrays(self) -> Arrays:
        arrays = self.strategy.initialize(derive_rng(self.seed, 0, SERVER_KEY, stream="init"))
        if arrays is not None:
            return arrays
        nodes = sorted(self.grid.node_ids())
        if not nodes:
            raise RoundFailed("no node is available to provide initial parameters")
        msg = self._message(nodes[0], 0, QUERY, Content.of(Arrays(), {}))
        for reply in self.grid.send_and_receive([msg], timeout=self.config.round_timeout):
            if reply.error is not None:
                raise RoundFailed(
                    f"node {reply.metadata.src} could not provide initial parameters: "
                    f"{reply.error.reason}\n{reply.error.traceback}"
                )
            assert reply.content is not None
            if reply.content.model is not None:
                log.info("initial parameters from node %s", reply.metadata.src)
                return reply.content.model
        raise RoundFailed(f"node {nodes[0]} sent no initial parameters")

    def _round(self, rnd: int, model: GlobalModel) -> Arrays:
        started = time.perf_counter()
        record = RoundRecord(round=rnd)
        nodes = self._available_nodes()
        rng = derive_rng(self.seed, rnd, SERVER_KEY, stream="train")
        instructions = self.strategy.configure_train(rnd, model.arrays, nodes, rng)
        if not instructions:
            raise RoundFailed(f"round {rnd}: the strategy selected no node to train")
        sampled = [i.node_id for i in instructions]
        replies = self._exchange(rnd, TRAIN, instructions)
        del instructions
        # the transport holds the model until every node has its copy; if it is also
        # in a checkpoint, nothing else needs it in memory during the fold
        model.release()
        stream = self._train_replies(rnd, model.skeleton(), sampled, replies, record)
        new_arrays, record.train_metrics = self.strategy.aggregate_train(
            rnd, model.current(), stream
        )
        every = self.config.evaluate_every
        if every and rnd % every == 0:
            rng = derive_rng(self.seed, rnd, SERVER_KEY, stream="evaluate")
            eval_instr = self.strategy.configure_evaluate(rnd, new_arrays, nodes, rng)
            if eval_instr:
                replies = self._exchange(rnd, EVALUATE, eval_instr)
                record.evaluate_metrics = self.strategy.aggregate_evaluate(
                    rnd, self._evaluate_replies(rnd, eval_instr, replies, record)
                )
        record.central_metrics = self.strategy.evaluate(rnd, new_arrays) or {}
        record.seconds = time.perf_counter() - started
        self.history.rounds.append(record)
        self.observers.on_round_end(record)
        return new_arrays

    def _available_nodes(self) -> list[str]:
        """The grid's nodes; a deployment grid first waits (bounded) for enough of them."""
        wait = getattr(self.grid, "wait_for_nodes", None)
        need = int(getattr(self.strategy, "min_available_nodes", 1) or 1)
        if wait is not None and self.config.node_wait > 0:
            nodes: list[str] = wait(need, self.config.node_wait)
            return nodes
        return self.grid.node_ids()

    # -- messaging ----------------------------------------------------------------
    def _message(self, node: str, rnd: int, kind: str, content: Content) -> Message:
        timeout = self.config.round_timeout
        deadline = time.time() + timeout if timeout else None
        return Message.create(
            run_id=self.run_id, dst=node, round=rnd, kind=kind, content=content, deadline=deadline
        )

    def _exchange(self, rnd: int, kind: str, instructions: list[Instruction]) -> Iterator[Message]:
        self._sent_at = time.perf_counter()
        messages = [
            self._message(
                i.node_id,
                rnd,
                kind,
                Content(arrays={MODEL: i.arrays, **i.records}, configs={CONFIG: i.config}),
            )
            for i in instructions
        ]
        return self.grid.send_and_receive(messages, timeout=self.config.round_timeout)

    def _required(self, sampled: int) -> int:
        need = max(self.config.min_replies, math.ceil(self.config.min_reply_fraction * sampled))
        return min(need, sampled)

    def _train_replies(
        self,
        rnd: int,
        template: Arrays,
        sampled: list[str],
        replies: Iterator[Message],
        record: RoundRecord,
    ) -> Iterator[TrainReply]:
        """Validate replies lazily; raise RoundFailed at the end if too few were good."""
        pending = set(sampled)
        ok = 0
        for reply in replies:
            node = reply.metadata.src
            if node not in pending:
                log.warning(
                    "run %s round %d: ignoring unexpected reply from %s", self.run_id, rnd, node
                )
                continue
            pending.discard(node)
            result = self._judge(rnd, TRAIN, reply)
            record.nodes.append(result)
            if result.outcome is not Outcome.OK:
                continue
            assert reply.content is not None
            records = {k: v for k, v in reply.content.arrays.items() if k != MODEL}
            try:
                check_update(template, reply.content.model)
                for name, extra in records.items():
                    check_finite(extra, what=f"record {name!r}")
            except UpdateRejected as exc:
                result.outcome, result.reason = Outcome.REJECTED, str(exc)
                log.warning(
                    "run %s round %d: update from node %s rejected: %s", self.run_id, rnd, node, exc
                )
                continue
            ok += 1
            assert reply.content is not None and reply.content.model is not None
            update = TrainReply(
                node, reply.content.model, result.num_examples, result.metrics, records
            )
            del reply, records
            yield update
            del update  # folded: not kept alive while the next reply arrives
        for node in sorted(pending):
            record.nodes.append(
                NodeResult(node, TRAIN, Outcome.TIMEOUT, reason="no reply before the deadline")
            )
            log.warning("run %s round %d: node %s did not reply in time", self.run_id, rnd, node)
        need = self._required(len(sampled))
        if ok < need:
            raise RoundFailed(
                f"round {rnd}: only {ok} of {len(sampled)} nodes returned a valid update, "
                f"{need} required. Failures: "
                + "; ".join(
                    f"{n.node_id}: {n.outcome.value} ({n.reason})" for n in record.failures()
                )
            )

    def _evaluate_replies(
        self,
        rnd: int,
        instructions: list[Instruction],
        replies: Iterator[Message],
        record: RoundRecord,
    ) -> Iterator[EvaluateReply]:
        pending = {i.node_id for i in instructions}
        for reply in replies:
            node = reply.metadata.src
            if node not in pending:
                continue
            pending.discard(node)
            result = self._judge(rnd, EVALUATE, reply)
            record.nodes.append(result)
            if result.outcome is Outcome.OK:
                yield EvaluateReply(node, result.num_examples, result.metrics)
        for node in sorted(pending):
            record.nodes.append(
                NodeResult(node, EVALUATE, Outcome.TIMEOUT, reason="no reply before the deadline")
            )

    def _judge(self, rnd: int, stage: str, reply: Message) -> NodeResult:
        """A NodeResult for a reply: OK, or FAILED with the node's reason and traceback."""
        result = self._judge_reply(rnd, stage, reply)
        result.seconds = time.perf_counter() - self._sent_at  # task sent -> reply received
        if reply.content is not None:
            result.timing = dict(reply.content.metrics.get(TIMING_RECORD, {}))
        return result

    def _judge_reply(self, rnd: int, stage: str, reply: Message) -> NodeResult:
        node = reply.metadata.src
        if reply.error is not None:
            err = reply.error
            log.warning(
                "run %s round %d: node %s failed to %s: %s\n%s",
                self.run_id,
                rnd,
                node,
                stage,
                err.reason,
                err.traceback,
            )
            return NodeResult(
                node, stage, Outcome.FAILED, reason=err.reason, traceback=err.traceback
            )
        metrics = reply_metrics(reply)
        try:
            n = num_examples(metrics)
        except UpdateRejected as exc:
            log.warning(
                "run %s round %d: reply from node %s rejected: %s", self.run_id, rnd, node, exc
            )
            return NodeResult(node, stage, Outcome.REJECTED, metrics=metrics, reason=str(exc))
        return NodeResult(node, stage, Outcome.OK, metrics=metrics, num_examples=n)

    def _save(self, arrays: Arrays) -> list[Path]:
        if self.run_dir is None:
            return []
        files = [save_model(arrays, self.run_dir / "model.npz")]
        if self.config.exporter is not None:
            files += self.config.exporter(arrays, self.run_dir)
        return files
