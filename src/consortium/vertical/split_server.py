"""Split learning as a program over the Grid: the server relays cut-layer values, checked.

:func:`run_split_learning` drives the parties through the schedule of
:mod:`.split_protocol`: setup, then per tick one round trip to every passive
party at once (last tick's gradient in, this tick's activations out) and one
to the label holder (every passive party's activations in, their gradients
and the loss out). The server sees activations, gradients and the label
holder's metrics, never rows, ids or labels. It checks every reply before
relaying it (the tick it answers, float32, the shape this tick needs, finite
values), so one party's garbage stops the run here with a message naming the
party instead of in another party's layers. Each epoch is one
:class:`RoundRecord`: loss and accuracy (train and held-out) and every
party's bytes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from consortium.core.arrays import Arrays
from consortium.core.errors import RoundFailed, UpdateRejected
from consortium.core.grid import Grid
from consortium.core.history import NodeResult, Outcome, RoundRecord
from consortium.core.message import CONFIG, Content
from consortium.core.records import Metrics
from consortium.vertical.logistic_server import RunContext
from consortium.vertical.relay import Party, Relay, SetupKeys, read_parties
from consortium.vertical.split_protocol import (
    ACTIVATIONS,
    ACTIVE,
    FEATURE_NAMES,
    FEATURES,
    GRADIENT,
    GRADIENTS,
    KIND_FINISH,
    KIND_FORWARD,
    KIND_SETUP,
    KIND_TOP,
    PARTIES,
    PASSIVE,
    PAYLOAD,
    ROLE,
    TEST_ROWS,
    TICK,
    TRAIN_ROWS,
    Schedule,
    SplitParams,
    float32_array,
    tick_of,
)

log = logging.getLogger("consortium.vertical")


@dataclass
class SplitResult:
    """What the server learnt: the parties, the last evaluation, and the layers if revealed."""

    active: Party
    passives: list[Party]
    metrics: Metrics
    #: node -> its layers' state_dict (``bottom.*``, and ``top.*`` on the label holder)
    weights: dict[str, Arrays] = field(default_factory=dict)
    bytes_exchanged: int = 0
    round_trips: int = 0


#: the keys of a split-learning setup reply
_SETUP_KEYS = SetupKeys(ROLE, FEATURE_NAMES, TRAIN_ROWS, TEST_ROWS, FEATURES, ACTIVE, PASSIVE)


def _answers_its_tick(kind: str, tick: int, content: Content) -> None:
    """A forward or top reply must say which tick it answers: the step it was asked."""
    if kind in (KIND_FORWARD, KIND_TOP):
        tick_of(content.config, tick, "the reply")


def run_split_learning(
    grid: Grid, context: RunContext, params: SplitParams, parties: Sequence[str]
) -> SplitResult:
    """Train split learning across ``parties`` (2-64 nodes, one label holder).

    The passive parties are taken in the order of their node ids. The server draws
    nothing random: the nodes draw the batch order and their layers from the run seed
    (the server needs only the batch sizes). Round ``e`` of the history is epoch ``e``.
    """
    relay = Relay(grid, context.run_id, params.timeout, protocol="split learning", unit="tick",
                  check=_answers_its_tick)  # fmt: skip
    active, passives, schedule, test_rows = _setup(relay, sorted(parties), params)
    relay.take_counts()
    metrics: Metrics = {}
    gradients: dict[str, np.ndarray] = {}
    losses: list[float] = []
    started = time.monotonic()
    for tick in range(1, schedule.ticks + 1):
        evaluating = schedule.is_eval(tick)
        rows = schedule.train_rows + test_rows if evaluating else schedule.batch_size_at(tick)
        tasks = {p.node: _content(tick, {GRADIENT: gradients[p.node]} if p.node in gradients
                                  else {}) for p in passives}  # fmt: skip
        replies = relay.step(KIND_FORWARD, tick, tasks)
        acts = np.stack([
            _checked(_payload(replies, p.node).get(ACTIVATIONS), (rows, params.cut), p.node,
                     ACTIVATIONS) for p in passives])  # fmt: skip
        reply = relay.step(KIND_TOP, tick, {active.node: _content(tick, {ACTIVATIONS: acts})})
        answer = reply[active.node]
        if evaluating:
            metrics = dict(answer.metric_values)
            sent, received = relay.take_counts()
            _report(context, schedule.epoch(tick), metrics, losses, sent, received,
                    time.monotonic() - started)  # fmt: skip
            gradients, losses, started = {}, [], time.monotonic()
            continue
        grads = _checked(_payload(reply, active.node).get(GRADIENTS),
                         (len(passives), rows, params.cut), active.node, GRADIENTS)  # fmt: skip
        loss = answer.metric_values.get("loss")
        if not isinstance(loss, float) or not np.isfinite(loss):
            raise RoundFailed(f"split learning: {active.node}'s loss at tick {tick} is {loss!r}")
        losses.append(loss)
        gradients = {p.node: grads[i] for i, p in enumerate(passives)}
    weights = _finish(relay, active, passives, params, schedule.ticks + 1)
    return SplitResult(active, passives, metrics, weights, relay.total, relay.round_trips)


def _setup(relay: Relay, nodes: list[str], params: SplitParams
           ) -> tuple[Party, list[Party], Schedule, int]:  # fmt: skip
    """Every party's role, features and rows; the schedule; the number of held-out rows."""
    if len(nodes) < 2 or len(set(nodes)) != len(nodes):
        raise RoundFailed(f"split learning needs at least 2 distinct parties, got {nodes}")
    replies = relay.step(KIND_SETUP, 0, {n: _content(0, {}, {PARTIES: len(nodes)}) for n in nodes})
    configs = {n: replies[n].config for n in nodes}
    active, passives, train, test = read_parties(
        configs, nodes, _SETUP_KEYS, protocol="split learning", min_train=1
    )
    log.info("split learning: label holder %s, passive %s, %d train and %d test rows",
             active.node, [p.node for p in passives], train, test)  # fmt: skip
    return active, passives, Schedule(train, params.batch_size, params.epochs), test


def _finish(relay: Relay, active: Party, passives: list[Party], params: SplitParams, tick: int
            ) -> dict[str, Arrays]:  # fmt: skip
    replies = relay.step(KIND_FINISH, tick, {p.node: Content() for p in [active, *passives]})
    if not params.reveal_model:
        return {}
    out = {}
    for p in [active, *passives]:
        layers = _payload(replies, p.node)
        for name, value in layers.items():
            if not isinstance(value, np.ndarray) or value.dtype != np.float32:
                raise RoundFailed(f"split learning: {p.node}'s layer {name!r} is not float32")
            if not np.isfinite(value).all():
                raise RoundFailed(f"split learning: {p.node}'s layer {name!r} is not finite")
        out[p.node] = layers
    return out


def _report(context: RunContext, epoch: int, metrics: Metrics, losses: list[float],
            sent: dict[str, int], received: dict[str, int], seconds: float) -> None:  # fmt: skip
    train = {k: v for k, v in metrics.items() if not k.startswith("test_")}
    test = {k.removeprefix("test_"): v for k, v in metrics.items() if k.startswith("test_")}
    train["batch_loss"] = float(np.mean(losses)) if losses else float("nan")
    train["bytes"] = sum(sent.values()) + sum(received.values())
    nodes = [NodeResult(node, "train", Outcome.OK, {"bytes_sent": received[node],
                        "bytes_received": sent[node]}) for node in sorted(sent)]  # fmt: skip
    context.report(RoundRecord(epoch, train_metrics=train, evaluate_metrics=test, nodes=nodes,
                               seconds=seconds))  # fmt: skip


def _content(tick: int, arrays: dict[str, np.ndarray], extra: dict[str, int] | None = None
             ) -> Content:  # fmt: skip
    return Content(
        arrays={PAYLOAD: Arrays(arrays)}, configs={CONFIG: {TICK: tick, **(extra or {})}}
    )


def _checked(value: object, shape: tuple[int, ...], node: str, name: str) -> np.ndarray:
    """A party's cut-layer array, or the run stops here naming the party and the field."""
    try:
        return float32_array(value, shape, f"{node}'s {name}")
    except UpdateRejected as exc:
        raise RoundFailed(f"split learning: {exc}") from exc


def _payload(replies: dict[str, Content], node: str) -> Arrays:
    return replies[node].arrays.get(PAYLOAD, Arrays())
