"""SecAgg+ as a round-loop workflow: the server learns the sum of the updates, never one.

:class:`SecAggPlusWorkflow` is the synchronous round loop
(:class:`~consortium.server.workflow.rounds.RoundWorkflow`) with its train step
replaced by the SecAgg+ stages (see :mod:`consortium.privacy.secagg.protocol`): a
key setup (advertise keys) when the round's participants are not those of the
current key epoch, then the masked-input train task and the unmask task; so a
round of an unchanged federation costs two round trips, as plain FedAvg's train
task plus one.
The nodes need :func:`~consortium.privacy.secagg.secaggplus_mod` in their
ClientApp. The securely summed, example-weighted mean update becomes one
reply that the strategy aggregates as usual, so FedAvg and the server
optimisers (FedAdam, ...) work unchanged; strategies that need every update
(median, Krum) cannot, and are refused.

Each stage waits at most ``stage_timeout`` seconds (the train stage
``train_timeout``); a node that fails or misses a stage has dropped. The round
goes on while at least the reconstruction threshold of nodes is left, and
fails with :class:`~consortium.core.errors.RoundFailed` (its reason naming the
stage or the node whose secret could not be rebuilt) otherwise.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np

from consortium.core.arrays import Arrays
from consortium.core.errors import ConfigError, ConsortiumError, RoundFailed
from consortium.core.grid import Grid
from consortium.core.history import NodeResult, Outcome, RoundRecord
from consortium.core.message import CONFIG, MODEL, TRAIN, Content, Message
from consortium.core.records import Config
from consortium.privacy.secagg import KeyEpoch, SecAggParams, SecAggRound, model_digest
from consortium.privacy.secagg import protocol as p
from consortium.privacy.secagg.quantize import HEADER, Decoded
from consortium.server.config import ServerConfig
from consortium.server.context import ServerContext
from consortium.server.global_model import GlobalModel
from consortium.server.workflow.replies import ReplyCollector, required_replies
from consortium.server.workflow.rounds import RoundWorkflow
from consortium.server.workflow.tasks import online_nodes, task_message
from consortium.strategy.base import Instruction, TrainReply

__all__ = ["SECAGG_NODE", "SecAggPlusWorkflow"]

log = logging.getLogger("consortium.server")

#: The node id of the one reply the strategy gets: the secure aggregate.
SECAGG_NODE = "secagg+"
#: Train metrics the workflow adds: nodes whose masked input was summed, nodes that
#: dropped after sharing their keys, clipped coordinates in all, the graph's seed.
SURVIVORS_METRIC = "secagg.survivors"
DROPPED_METRIC = "secagg.dropped"
CLIPPED_METRIC = "secagg.clipped"
GRAPH_SEED_METRIC = "secagg.graph_seed"
#: 1 in a round that set up keys (the epoch's first), 0 in a round that reused them
KEY_SETUP_METRIC = "secagg.key_setup"
#: seconds each part of the round took (``secagg.seconds.<part>``: ``setup``, ``train``,
#: ``unmask`` from sending a stage's tasks to its last reply, ``sum`` the unmasking,
#: ``before-evaluate`` the round so far): where a round's time goes
SECONDS_METRIC = "secagg.seconds."
_PART = {p.ADVERTISE: "setup", TRAIN: "train", p.UNMASK: "unmask"}

_Take = Callable[[str, Message], None]


class SecAggPlusWorkflow(RoundWorkflow):
    """The round loop over SecAgg+ (see the module docstring)."""

    def __init__(self, config: ServerConfig, secagg: SecAggParams | None = None) -> None:
        super().__init__(config)
        if self.strategy.needs_all_updates:
            raise ConfigError(
                f"{type(self.strategy).__name__} needs every update, which SecAgg+ hides "
                "from the server: choose a strategy that aggregates a mean"
            )
        self.secagg = secagg if secagg is not None else SecAggParams()
        #: the current key epoch (None before the first round and after a restart)
        self.epoch: KeyEpoch | None = None

    def params(self, ctx: ServerContext) -> Config:
        own = {f"secagg.{k}": v for k, v in self.secagg.to_config().items()}
        return {**super().params(ctx), **own}

    def _round(self, grid: Grid, ctx: ServerContext, rnd: int, model: GlobalModel) -> Arrays:
        cfg, strategy, started = self.config, self.strategy, time.perf_counter()
        record = RoundRecord(round=rnd)
        nodes = online_nodes(grid, strategy.min_available_nodes, cfg.node_wait)
        current = model.arrays
        instructions = strategy.configure_train(rnd, current, nodes, ctx.rng(rnd, stream="train"))
        failed: dict[str, str] = {}
        epoch = self.epoch
        seconds: dict[str, float] = {}
        sa, total = self._secure_sum(grid, ctx, rnd, current, instructions, failed, seconds)
        aggregate = TrainReply(
            SECAGG_NODE, _apply(current, total.mean_update()), total.num_examples
        )
        new_arrays, metrics = strategy.aggregate_train(rnd, model.current(), [aggregate])
        for node in sorted(i.node_id for i in instructions):
            outcome = Outcome.OK if node in sa.masked else Outcome.FAILED
            record.nodes.append(NodeResult(node, TRAIN, outcome, reason=failed.get(node, "")))
        record.train_metrics = {
            **metrics,
            SURVIVORS_METRIC: len(sa.masked),
            DROPPED_METRIC: len(sa.dropped),
            CLIPPED_METRIC: total.clipped,
            GRAPH_SEED_METRIC: sa.view.graph_seed,
            KEY_SETUP_METRIC: int(sa.epoch is not epoch),
            **{SECONDS_METRIC + kind: round(s, 6) for kind, s in seconds.items()},
        }
        if total.clipped:
            log.warning(
                "SecAgg+ round %d: %d coordinates were clipped to +-%g (raise clip?)",
                rnd, total.clipped, self.secagg.clip,
            )  # fmt: skip
        collector = ReplyCollector(ctx.run_id, rnd, record, time.perf_counter())
        record.train_metrics[SECONDS_METRIC + "before-evaluate"] = round(
            time.perf_counter() - started, 6
        )
        self._end_round(grid, ctx, new_arrays, nodes, collector, started)
        return new_arrays

    def _secure_sum(
        self,
        grid: Grid,
        ctx: ServerContext,
        rnd: int,
        current: Arrays,
        instructions: list[Instruction],
        failed: dict[str, str],
        seconds: dict[str, float],
    ) -> tuple[SecAggRound, Decoded]:
        """The stages over the instructed nodes: the round's state and its decoded sum.

        ``failed`` gets the reason each dropped node dropped for, ``seconds`` each stage's
        duration.
        """
        _one_model(instructions)  # nodes check each other's model with MACs at the unmask
        participants = sorted(i.node_id for i in instructions)
        size = HEADER + sum(int(a.size) for a in current.values())
        self.secagg.check_capacity(len(participants), size)
        cfg = self.config
        need = required_replies(len(participants), cfg.min_replies, cfg.min_reply_fraction)
        timeout = self.secagg.stage_timeout

        def ask(kind: str, contents: dict[str, Content], timeout: float, take: _Take) -> None:
            began = time.perf_counter()
            self._stage(grid, ctx, rnd, kind, contents, timeout, take, failed)
            seconds[_PART[kind]] = time.perf_counter() - began

        epoch = self.epoch
        if epoch is None or epoch.members != participants:
            # key setup: a new epoch for these participants (the first round, or who takes
            # part changed); the graph's seed is public randomness, reported in the metrics
            self.epoch = None
            seed = int(ctx.rng(rnd, stream="secagg-graph").integers(2**53))
            epoch = KeyEpoch(ctx.run_id, rnd, participants, seed, self.secagg)
            record = {
                n: Content(configs={p.RECORD: epoch.advertise_record()}) for n in participants
            }
            ask(p.ADVERTISE, record, timeout, lambda n, r: epoch.take_advertisement(n, _record(r)))
            epoch.check_alive("advertise-keys", len(epoch.keys), rnd)
            self.epoch = epoch
        for node in set(participants) - set(epoch.members):
            failed.setdefault(node, "no keys in this key epoch")
        sa = SecAggRound(epoch, rnd, size)
        configs = {i.node_id: i.config for i in instructions}
        record = {
            n: Content(
                arrays={MODEL: current},
                configs={CONFIG: configs[n], p.RECORD: sa.masked_input_record(n)},
            )
            for n in sa.asked
        }
        ask(TRAIN, record, self.secagg.train_timeout,
            lambda n, r: sa.take_masked(n, _masked(r), _record(r)))  # fmt: skip
        epoch.check_alive("masked-input", len(sa.masked), rnd)
        if len(sa.masked) < need:
            raise RoundFailed(
                f"SecAgg+ round {rnd}: {len(sa.masked)} masked inputs arrived, the round "
                f"needs {need}; no sum is released"
            )
        record = {n: Content(configs={p.RECORD: sa.unmask_record(n)}) for n in sorted(sa.masked)}
        ask(p.UNMASK, record, timeout, lambda n, r: sa.take_unmask(n, _record(r)))
        began = time.perf_counter()
        total = sa.total()
        seconds["sum"] = time.perf_counter() - began
        return sa, total

    @staticmethod
    def _stage(
        grid: Grid,
        ctx: ServerContext,
        rnd: int,
        kind: str,
        contents: dict[str, Content],
        timeout: float,
        take: _Take,
        failed: dict[str, str],
    ) -> None:
        """Send one stage's tasks; feed each good reply to ``take``; note why others dropped."""
        messages = [
            task_message(ctx, node, rnd, kind, content, timeout)
            for node, content in contents.items()
        ]
        sent = {m.metadata.message_id: m.metadata.dst for m in messages}
        answered = set()
        for reply in grid.send_and_receive(messages, timeout=timeout):
            node = sent.get(reply.metadata.reply_to or "")
            if node is None or node in answered:
                continue
            answered.add(node)
            if reply.error is not None:
                failed[node] = f"{kind}: {reply.error.reason}"
                log.warning("SecAgg+ round %d: node %s dropped at %s: %s", rnd, node, kind,
                            reply.error.reason)  # fmt: skip
                continue
            try:
                take(node, reply)
            except ConsortiumError as exc:
                failed[node] = f"{kind}: {exc}"
                log.warning("SecAgg+ round %d: node %s's %s reply refused: %s", rnd, node, kind,
                            exc)  # fmt: skip
        for node in set(contents) - answered:
            failed[node] = f"{kind}: no reply within {timeout:g} s"


def _record(reply: Message) -> Config:
    """The SecAgg+ record of a reply (empty if it has none: the stage then refuses it)."""
    assert reply.content is not None
    return reply.content.configs.get(p.RECORD, {})


def _masked(reply: Message) -> Arrays | None:
    assert reply.content is not None
    return reply.content.arrays.get(p.MASKED)


def _one_model(instructions: list[Instruction]) -> str:
    """The hash of the one model every instruction carries (SecAgg+ sums updates of one model)."""
    if not instructions:
        raise RoundFailed("the strategy selected no node to train")
    digests = {id(i.arrays): i.arrays for i in instructions}
    hashes = {model_digest(a) for a in digests.values()}
    if len(hashes) != 1 or any(i.records for i in instructions):
        raise ConfigError(
            "SecAgg+ needs every node to train the same model with no further records; "
            "this strategy sends different ones"
        )
    return hashes.pop()


def _apply(current: Arrays, mean: np.ndarray) -> Arrays:
    """``current`` moved by the flat ``mean`` update, each array keeping its dtype."""
    out, start = Arrays(), 0
    for name, value in current.items():
        end = start + int(value.size)
        step = mean[start:end].reshape(value.shape)
        out[name] = (np.asarray(value, np.float64) + step).astype(value.dtype)
        start = end
    return out
