"""Split learning on the node: the handlers :func:`register_split_learning` adds to a ClientApp.

A party is whatever its data says: the one with labels (the label holder)
runs its bottom and the top; the others run their bottom only. Each handler
rebuilds the party's rows (the shared ids sorted, split and standardised as
in vertical LR) and its layers from the node's kept state, checks the task
against the party's progress (ticks run in order, each once; every array a
peer sent has this tick's shape, float32, finite), and answers with what the
protocol lets leave the silo: cut-layer activations (passive parties) or
their gradients and the loss (the label holder). torch is imported only when
a handler runs, so an app that registers these handlers and never runs split
learning needs no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from consortium.client.app import ClientApp
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import UpdateRejected
from consortium.core.message import CONFIG, METRICS, Content, Message
from consortium.core.records import Config, Metrics
from consortium.vertical.logistic_party import AlignedFn, DataFn, LocalView, local_view
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
    NOISE_STREAM,
    PARTIES,
    PASSIVE,
    PAYLOAD,
    ROLE,
    TEST_ROWS,
    TICK,
    TRAIN_ROWS,
    Schedule,
    SplitParams,
    batch_rows,
    float32_array,
    tick_of,
)

#: the most parties a run may have (the top's input is ``cut`` values per party)
MAX_PARTIES = 64


@dataclass(frozen=True, eq=False)
class _Party:
    local: LocalView
    params: SplitParams
    schedule: Schedule
    parties: int  # 0 before setup


def register_split_learning(app: ClientApp, data: DataFn, aligned: AlignedFn) -> ClientApp:
    """Add the split-learning handlers (kinds :data:`~.split_protocol.SPLIT_KINDS`) to ``app``.

    ``data(context)`` gives the node's :class:`~.logistic_party.PartyData`;
    ``aligned(context)`` the ids every party shares (for instance the PSI's
    ``aligned_rows``; their order does not matter: each party sorts them).
    """

    def party(context: Context) -> _Party:
        params = SplitParams.from_config(context.run_config)
        local = local_view(data(context), sorted(aligned(context)), params.split_view)
        saved = context.state.configs.get(PAYLOAD, {})
        parties = saved.get(PARTIES, 0)
        assert isinstance(parties, int)
        return _Party(local, params, Schedule(local.train_rows, params.batch_size, params.epochs),
                      parties)  # fmt: skip

    @app.handler(KIND_SETUP)
    def setup(msg: Message, context: Context) -> Message:
        from consortium.vertical import split_model as sm

        me = party(context)
        parties = (msg.content.config if msg.content else {}).get(PARTIES)
        if isinstance(parties, bool) or not isinstance(parties, int):
            raise UpdateRejected(f"{PARTIES!r} must be an integer, got {parties!r}")
        if not 2 <= parties <= MAX_PARTIES:
            raise UpdateRejected(f"{PARTIES!r} must be in [2, {MAX_PARTIES}], got {parties}")
        top = parties if me.local.role == ACTIVE else None
        with sm.deterministic():
            model = sm.party_layers(
                me.local.features, top, me.params, sm.init_seed(context.seed, context.node_id)
            )
            _save(context, sm.to_state(model, {}), tick=0, parties=parties)
        config: Config = {
            ROLE: me.local.role,
            FEATURES: me.local.features,
            FEATURE_NAMES: list(me.local.feature_names),
            TRAIN_ROWS: me.local.train_rows,
            TEST_ROWS: int(me.local.x_test.shape[0]),
        }
        return msg.reply(config=config)

    def step(role: str, run: Callable[[Message, Context, _Party, int], Message]) -> None:
        def handle(msg: Message, context: Context) -> Message:
            me = party(context)
            if me.local.role != role:
                raise UpdateRejected(f"a {msg.metadata.kind!r} task is for the {role} party")
            if me.parties == 0:
                raise UpdateRejected("split learning is not set up on this party")
            saved = context.state.configs[PAYLOAD].get(TICK)
            assert isinstance(saved, int)
            tick = tick_of(msg.content.config if msg.content else {}, saved + 1, "the task")
            if tick > me.schedule.ticks:
                raise UpdateRejected(f"the run has {me.schedule.ticks} ticks, not {tick}")
            return run(msg, context, me, tick)

        app.handler(KIND_FORWARD if role == PASSIVE else KIND_TOP)(handle)

    step(PASSIVE, _forward)
    step(ACTIVE, _top)

    @app.handler(KIND_FINISH)
    def finish(msg: Message, context: Context) -> Message:
        me = party(context)
        saved = context.state.configs.get(PAYLOAD, {}).get(TICK)
        if me.parties == 0 or saved != me.schedule.ticks:
            raise UpdateRejected("the run is not finished on this party")
        out = Arrays()
        if me.params.reveal_model:  # the run config (which the node accepted) asks for it
            out = Arrays({k[2:]: v for k, v in _kept(context).items() if k.startswith("m.")})
        return msg.reply(Content(arrays={PAYLOAD: out}, configs={CONFIG: {ROLE: me.local.role}}))

    return app


def _kept(context: Context) -> Arrays:
    return context.state.arrays.get(PAYLOAD, Arrays())


def _save(context: Context, arrays: Arrays, *, tick: int, parties: int) -> None:
    """Replace the kept state (never edited in place: a refused task keeps the old one)."""
    context.state.arrays[PAYLOAD] = arrays
    context.state.configs[PAYLOAD] = {TICK: tick, PARTIES: parties}


def _arrays(msg: Message) -> Arrays:
    return msg.content.arrays.get(PAYLOAD, Arrays()) if msg.content else Arrays()


def _forward(msg: Message, context: Context, me: _Party, tick: int) -> Message:
    """A passive party's tick: the last batch's gradient into its bottom, then this tick's
    activations (a mini-batch, or every train and test row at an evaluation tick)."""
    import torch

    from consortium.vertical import split_model as sm

    params, schedule, x_train = me.params, me.schedule, me.local.x_train
    got = _arrays(msg)
    with sm.deterministic():
        model = sm.party_layers(me.local.features, None, params, 0)
        velocity = sm.from_state(model, _kept(context))
        if schedule.trains_before(tick):
            shape = (schedule.batch_size_at(tick - 1), params.cut)
            grad = float32_array(got.get(GRADIENT), shape, f"the {GRADIENT} of tick {tick - 1}")
            rows = batch_rows(context.seed, schedule, tick - 1)
            sm.backward(model.cut(sm.tensor(x_train[rows])), sm.tensor(grad))
            sm.sgd_step(model, velocity, params)
        elif GRADIENT in got:
            raise UpdateRejected(f"tick {tick} follows no training step: it takes no {GRADIENT}")
        x = (np.vstack([x_train, me.local.x_test]) if schedule.is_eval(tick)
             else x_train[batch_rows(context.seed, schedule, tick)])  # fmt: skip
        with torch.no_grad():
            sent = sm.numpy32(model.cut(sm.tensor(x)))
        _save(context, sm.to_state(model, velocity), tick=tick, parties=me.parties)
    if params.noise_std > 0:  # what leaves the silo is noisy; the bottom's graph is not
        noise = context.rng(tick, stream=NOISE_STREAM).normal(0.0, params.noise_std, sent.shape)
        sent = (sent + noise).astype(np.float32)
    return msg.reply(Content(arrays={PAYLOAD: Arrays({ACTIVATIONS: sent})},
                             configs={CONFIG: {TICK: tick}}))  # fmt: skip


def _top(msg: Message, context: Context, me: _Party, tick: int) -> Message:
    """The label holder's tick: its bottom and the top over every party's activations;
    a training tick steps its layers and sends back the passives' gradients, an
    evaluation tick sends the loss and accuracy on the train and held-out rows."""
    import torch

    from consortium.vertical import split_model as sm

    params, schedule, local = me.params, me.schedule, me.local
    assert local.y_train is not None and local.y_test is not None
    evaluating = schedule.is_eval(tick)
    rows = local.train_rows + int(local.x_test.shape[0])
    rows = rows if evaluating else schedule.batch_size_at(tick)
    shape = (me.parties - 1, rows, params.cut)
    acts = float32_array(_arrays(msg).get(ACTIVATIONS), shape, f"the {ACTIVATIONS} of tick {tick}")
    with sm.deterministic():
        model = sm.party_layers(local.features, me.parties, params, 0)
        velocity = sm.from_state(model, _kept(context))
        config: Config = {TICK: tick}
        if evaluating:
            with torch.no_grad():
                own = model.cut(sm.tensor(np.vstack([local.x_train, local.x_test])))
                logits = model.head([own, *sm.tensor(acts).unbind(0)])
            n = local.train_rows
            loss, acc = sm.metrics(logits[:n], sm.tensor(local.y_train))
            test_loss, test_acc = sm.metrics(logits[n:], sm.tensor(local.y_test))
            out: Metrics = {"loss": loss, "accuracy": acc, "test_loss": test_loss,
                            "test_accuracy": test_acc}  # fmt: skip
            reply = Content(configs={CONFIG: config}, metrics={METRICS: out})
        else:
            batch = batch_rows(context.seed, schedule, tick)
            theirs = [sm.tensor(a).requires_grad_() for a in acts]
            own = model.cut(sm.tensor(local.x_train[batch]))
            logits = model.head([own, *theirs])
            loss_t = sm.bce(logits, sm.tensor(local.y_train[batch]))
            sm.backward(loss_t)
            grads = np.stack([sm.gradient(a) for a in theirs])
            sm.sgd_step(model, velocity, params)
            reply = Content(arrays={PAYLOAD: Arrays({GRADIENTS: grads})},
                            configs={CONFIG: config},
                            metrics={METRICS: {"loss": float(loss_t.detach())}})  # fmt: skip
        _save(context, sm.to_state(model, velocity), tick=tick, parties=me.parties)
    return msg.reply(reply)
