"""Collecting and validating replies: every reply is judged before it can touch a model.

A reply is OK (with its metrics and ``num_examples``), FAILED (the node
reported an error, with its traceback) or REJECTED (it fails validation: no
or bad ``num_examples``, an update with NaN/inf, a wrong name, shape or
dtype). Workflows turn a reply stream into a stream of validated updates here,
recording each node's outcome in the round's record.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Iterable, Iterator

from consortium.core.arrays import Arrays
from consortium.core.errors import RoundFailed, UpdateRejected
from consortium.core.history import (
    LOGGED_FAILURES,
    NodeResult,
    Outcome,
    RoundRecord,
    describe_failures,
)
from consortium.core.message import EVALUATE, MODEL, TIMING_RECORD, TRAIN, Message
from consortium.server.compression import COMPRESSION_RECORDS, decoded_model
from consortium.server.validate import check_finite, check_update, num_examples, reply_metrics
from consortium.strategy.base import EvaluateReply, TrainReply

log = logging.getLogger("consortium.server")

#: Arrays records of a reply that are not further records: the model and its compressed form.
_NOT_RECORDS = COMPRESSION_RECORDS | {MODEL}


def judge_reply(reply: Message, stage: str) -> NodeResult:
    """OK with the reply's metrics and ``num_examples``, or FAILED/REJECTED with the reason.

    An error reply is FAILED (with the node's traceback); a missing or invalid
    ``num_examples`` is REJECTED. The model itself is checked by the caller,
    which knows what it should look like.
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


def validated_update(
    template: Arrays, reply: Message, reference: Arrays | None = None
) -> tuple[Arrays, dict[str, Arrays]]:
    """The reply's model and further records, checked against ``template``.

    A compressed reply is decoded first (:mod:`consortium.server.compression`; a delta
    is added to ``reference``, the global model the task carried), so the model
    checked and returned is the decoded one. Raises :class:`UpdateRejected` for a
    missing model, a wrong layout, bad compressed records, or NaN/inf in the
    model or any other record.
    """
    assert reply.content is not None
    model = decoded_model(reply.content, template, reference)
    if model is None:
        model = reply.content.model
    arrays = reply.content.arrays
    # the common reply is the model alone: no further records to sort out
    only_model = len(arrays) == 1 and MODEL in arrays
    records = {} if only_model else {k: v for k, v in arrays.items() if k not in _NOT_RECORDS}
    check_update(template, model)
    for name, extra in records.items():
        check_finite(extra, what=f"record {name!r}")
    assert model is not None
    return model, records


def required_replies(sampled: int, min_replies: int, min_fraction: float) -> int:
    """How many valid replies a round of ``sampled`` nodes needs (never more than sampled)."""
    return min(max(min_replies, math.ceil(min_fraction * sampled)), sampled)


class ReplyCollector:
    """Judges one stage's replies for one round and records each node's outcome.

    ``sent_at`` (``time.perf_counter()`` when the tasks went out) times each
    reply; the transport's own split (train, upload, wait) is kept if present.
    """

    def __init__(self, run_id: str, rnd: int, record: RoundRecord, sent_at: float) -> None:
        self.run_id = run_id
        self.rnd = rnd
        self.record = record
        self.sent_at = sent_at
        #: per stage: failures warned of so far, and the outcomes of those past
        #: :data:`LOGGED_FAILURES` (logged at INFO), summed up by :meth:`missing`
        self._warned: Counter[str] = Counter()
        self._quiet: dict[str, Counter[str]] = {}

    def _level(self, stage: str, outcome: Outcome) -> int:
        """The level a failure of ``stage`` is logged at: WARNING for the stage's first
        :data:`LOGGED_FAILURES`, then INFO (a run's log file keeps them, the terminal does
        not show them), counted for :meth:`missing`."""
        if self._warned[stage] < LOGGED_FAILURES:
            self._warned[stage] += 1
            return logging.WARNING
        self._quiet.setdefault(stage, Counter())[outcome.value] += 1
        return logging.INFO

    def judge(self, stage: str, reply: Message) -> NodeResult:
        """Judge ``reply``, log a failure, time it and add it to the round's record.

        A failure is logged one by one (a failed node's with its traceback): as a
        warning for the stage's first :data:`LOGGED_FAILURES`, then at INFO, and
        :meth:`missing` sums those up in one warning."""
        result = judge_reply(reply, stage)
        outcome = result.outcome
        if outcome is Outcome.FAILED:
            log.log(
                self._level(stage, outcome), "run %s round %d: node %s failed to %s: %s\n%s",
                self.run_id, self.rnd, result.node_id, stage, result.reason, result.traceback,
            )  # fmt: skip
        elif outcome is Outcome.REJECTED:
            log.log(
                self._level(stage, outcome), "run %s round %d: reply from node %s rejected: %s",
                self.run_id, self.rnd, result.node_id, result.reason,
            )  # fmt: skip
        result.seconds = time.perf_counter() - self.sent_at  # task sent -> reply received
        timing = reply.content.metrics.get(TIMING_RECORD) if reply.content is not None else None
        if timing:  # most replies carry none: keep the result's own empty dict
            result.timing = dict(timing)
        self.record.nodes.append(result)
        return result

    def missing(self, stage: str, nodes: Iterable[str]) -> None:
        """Record the nodes that did not answer before the deadline; called once the
        stage's replies are in, it then sums up in one warning the failures logged at
        INFO only."""
        for node in sorted(nodes):
            self.record.nodes.append(
                NodeResult(node, stage, Outcome.TIMEOUT, reason="no reply before the deadline")
            )
            if stage == TRAIN:
                log.log(
                    self._level(stage, Outcome.TIMEOUT),
                    "run %s round %d: node %s did not reply in time", self.run_id, self.rnd, node,
                )  # fmt: skip
        quiet = self._quiet.pop(stage, None)
        if quiet:
            log.warning(
                "run %s round %d: %d more nodes' %s did not succeed (%s), logged one by one "
                "at INFO level only (a run's run.log has them)",
                self.run_id, self.rnd, quiet.total(), stage,
                ", ".join(f"{count} {outcome}" for outcome, count in sorted(quiet.items())),
            )  # fmt: skip

    def train_replies(
        self,
        template: Arrays,
        sampled: list[str],
        replies: Iterator[Message],
        need: int,
        reference: Arrays | None = None,
    ) -> Iterator[TrainReply]:
        """Validate training replies lazily, for a fold; raise RoundFailed at the end if
        fewer than ``need`` were valid. Each update is let go once the fold asks for the
        next one, so the server holds one reply at a time. ``reference`` is the global
        model the tasks carried, which compressed delta updates are decoded against."""
        pending = set(sampled)
        ok = 0
        for reply in replies:
            node = reply.metadata.src
            if node not in pending:
                log.warning(
                    "run %s round %d: ignoring unexpected reply from %s",
                    self.run_id,
                    self.rnd,
                    node,
                )
                continue
            pending.discard(node)
            result = self.judge(TRAIN, reply)
            if result.outcome is not Outcome.OK:
                continue
            try:
                model, records = validated_update(template, reply, reference)
            except UpdateRejected as exc:
                result.outcome, result.reason = Outcome.REJECTED, str(exc)
                log.log(
                    self._level(TRAIN, Outcome.REJECTED),
                    "run %s round %d: update from node %s rejected: %s",
                    self.run_id, self.rnd, node, exc,
                )  # fmt: skip
                continue
            ok += 1
            update = TrainReply(node, model, result.num_examples, result.metrics, records)
            del reply, model, records
            yield update
            del update  # folded: not kept alive while the next reply arrives
        self.missing(TRAIN, pending)
        if ok < need:
            raise RoundFailed(
                f"round {self.rnd}: only {ok} of {len(sampled)} nodes returned a valid update, "
                f"{need} required. Failures: {describe_failures(self.record.failures())}"
            )

    def evaluate_replies(
        self, nodes: list[str], replies: Iterator[Message]
    ) -> Iterator[EvaluateReply]:
        """The valid federated-evaluation replies of ``nodes``."""
        pending = set(nodes)
        for reply in replies:
            node = reply.metadata.src
            if node not in pending:
                continue
            pending.discard(node)
            result = self.judge(EVALUATE, reply)
            if result.outcome is Outcome.OK:
                yield EvaluateReply(node, result.num_examples, result.metrics)
        self.missing(EVALUATE, pending)
