"""Vertical LR on the node: the handlers :func:`register_vertical_lr` adds to a ClientApp.

A party is whatever its data says: the one whose :class:`PartyData` has
labels is the label holder (active party), the others are passive. Each
handler reads the node's own data and the aligned ids afresh (the PSI keeps
them in the node's state), checks the task against the party's saved
progress (iterations run in order, each step once), and answers with what
the protocol lets leave the silo (see :mod:`.logistic_active` and
:mod:`.logistic_passive`). At setup each party signs the key it owns with its
node identity (:mod:`.signed_keys`); a passive party checks every key it is
relayed against its owner's signature before it uses it. Each iteration a passive
party signs the masked gradient ciphertexts it sends, and the label holder
decrypts only ciphertexts so signed.
"""

from __future__ import annotations

from collections.abc import Callable

from consortium.client.app import ClientApp, Handler
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import UpdateRejected
from consortium.core.identity import MASK_KEY, VLR_KEY, NodeIdentity
from consortium.core.message import Content, Message
from consortium.core.records import Config
from consortium.vertical import logistic_active as active
from consortium.vertical import logistic_passive as passive
from consortium.vertical.logistic_party import (
    AlignedFn,
    DataFn,
    LocalView,
    Step,
    local_view,
    save_parties,
    saved_arrays,
    saved_config,
)
from consortium.vertical.logistic_protocol import (
    ACTIVE,
    BIAS,
    FEATURE_NAMES,
    FEATURES,
    ITERATION,
    KEY,
    KIND_DECRYPT,
    KIND_FINISH,
    KIND_FORWARD,
    KIND_GRADIENT,
    KIND_RESIDUAL,
    KIND_SETUP,
    PARTIES,
    PASSIVE,
    PAYLOAD,
    PEER_KEY,
    ROLE,
    SIGNATURE,
    TEST_ROWS,
    TRAIN_ROWS,
    WEIGHTS,
    VerticalLRParams,
)
from consortium.vertical.signed_keys import party_list, resolve, vouch

#: A step that signs or checks a signature: it also takes the node identity.
Signed = Callable[[Message, Context, LocalView, VerticalLRParams, NodeIdentity], Message]


def register_vertical_lr(
    app: ClientApp, data: DataFn, aligned: AlignedFn, identity: NodeIdentity | None = None
) -> None:
    """Add the vertical-LR handlers (kinds :data:`~.logistic_protocol.VLR_KINDS`) to ``app``.

    ``data(context)`` gives the node's :class:`~.logistic_party.PartyData`;
    ``aligned(context)`` the shared ids in the common order (for instance the
    PSI's ``aligned_rows``). The parties sign their keys with the node's
    identity when deployed, else with ``identity`` (default: the simulation's,
    :data:`~.signed_keys.SIMULATION_IDENTITY`).
    """

    def view(context: Context) -> tuple[LocalView, VerticalLRParams]:
        params = VerticalLRParams.from_config(context.run_config)
        return local_view(data(context), list(aligned(context)), params), params

    @app.handler(KIND_SETUP)
    def setup(msg: Message, context: Context) -> Message:
        local, params = view(context)
        if saved_config(context):  # one setup per run: its key statements are signed once
            raise UpdateRejected("this party's setup ran already in this run")
        task = msg.content.config if msg.content is not None else {}
        parties = party_list(task, PARTIES, context.node_id)
        reply_arrays = Arrays()
        if local.role == ACTIVE:
            key = reply_arrays[KEY] = active.setup_key(context, params).public.to_wire()
        else:
            key = reply_arrays[PEER_KEY] = passive.setup(context)
        save_parties(context, parties)
        signature = vouch(resolve(identity), purpose=VLR_KEY if local.role == ACTIVE else MASK_KEY,
                          run_id=msg.metadata.run_id, node_id=context.node_id, parties=parties,
                          key=key.tobytes())  # fmt: skip
        config: Config = {
            SIGNATURE: signature,
            ROLE: local.role,
            FEATURES: local.features,
            FEATURE_NAMES: list(local.feature_names),
            TRAIN_ROWS: local.train_rows,
            TEST_ROWS: int(local.x_test.shape[0]),
        }
        return msg.reply(Content(arrays={PAYLOAD: reply_arrays}, configs={PAYLOAD: config}))

    def on(role: str, step: Step) -> Handler:
        def handle(msg: Message, context: Context) -> Message:
            local, params = view(context)
            if local.role != role:
                raise UpdateRejected(f"a {msg.metadata.kind!r} task is for the {role} party")
            return step(msg, context, local, params)

        return handle

    def signing(step: Signed) -> Step:
        def run(msg: Message, context: Context, local: LocalView,
                params: VerticalLRParams) -> Message:  # fmt: skip
            return step(msg, context, local, params, resolve(identity))

        return run

    app.handler(KIND_FORWARD)(on(PASSIVE, signing(passive.forward)))
    app.handler(KIND_GRADIENT)(on(PASSIVE, signing(passive.gradient)))
    app.handler(KIND_RESIDUAL)(on(ACTIVE, active.residual))
    app.handler(KIND_DECRYPT)(on(ACTIVE, signing(active.decrypt)))

    @app.handler(KIND_FINISH)
    def finish(msg: Message, context: Context) -> Message:
        local, params = view(context)
        state, saved = saved_arrays(context), saved_config(context)
        if saved.get(ITERATION) != params.iterations + 1:
            raise UpdateRejected("the run is not finished on this party")
        out = Arrays()
        if params.reveal_model:  # the run config (which the node accepted) asks for it
            out[WEIGHTS] = state["w"]
            if local.role == ACTIVE:
                out[BIAS] = state["b"]
        config: Config = {ROLE: local.role, FEATURE_NAMES: list(local.feature_names)}
        return msg.reply(Content(arrays={PAYLOAD: out}, configs={PAYLOAD: config}))
