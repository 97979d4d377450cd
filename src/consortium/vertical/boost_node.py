"""Vertical boosting on the node: the handlers :func:`register_vertical_boost` adds.

A party is whatever its data says: the one whose
:class:`~.logistic_party.PartyData` has labels is the label holder, the
others are passive. Each handler reads the node's own data and the aligned
ids afresh, bins its columns (deterministically, from its own training
rows), checks the task against the party's saved progress and answers with
what the protocol lets leave the silo (:mod:`.boost_active`,
:mod:`.boost_passive`). The label holder signs its Paillier key, each
tree's encrypted gradients and each level's row assignment with its node
identity (:mod:`.signed_keys`); a passive party checks them before it computes
a histogram under that key over those rows.
"""

from __future__ import annotations

from collections.abc import Callable

from consortium.client.app import ClientApp, Handler
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import UpdateRejected
from consortium.core.identity import VSB_KEY, NodeIdentity
from consortium.core.message import Content, Message
from consortium.core.records import Config
from consortium.vertical import boost_active as active
from consortium.vertical import boost_passive as passive
from consortium.vertical.boost_party import Bins, save_parties, saved
from consortium.vertical.boost_protocol import (
    ACTIVE,
    CANDIDATES,
    FEATURE_NAMES,
    KEY,
    KIND_ASSIGN,
    KIND_FINISH,
    KIND_GRADIENTS,
    KIND_HISTOGRAM,
    KIND_PARTITION,
    KIND_SETUP,
    KIND_SPLIT,
    MAX_CANDIDATES,
    PARTY_LIST,
    PASSIVE,
    PAYLOAD,
    ROLE,
    SIGNATURE,
    TEST_ROWS,
    TRAIN_ROWS,
    BoostParams,
)
from consortium.vertical.logistic_party import AlignedFn, DataFn, LocalView, local_view
from consortium.vertical.signed_keys import party_list, resolve, vouch

#: One protocol step on a party: the task, the context, its rows, the settings, its bins.
Step = Callable[[Message, Context, LocalView, BoostParams, Bins], Message]
#: A step that signs or checks a signature: it also takes the node identity.
Signed = Callable[[Message, Context, LocalView, BoostParams, Bins, NodeIdentity], Message]


def register_vertical_boost(
    app: ClientApp, data: DataFn, aligned: AlignedFn, identity: NodeIdentity | None = None
) -> None:
    """Add the vertical-boosting handlers (:data:`~.boost_protocol.VSB_KINDS`) to ``app``.

    ``data(context)`` gives the node's :class:`~.logistic_party.PartyData`;
    ``aligned(context)`` the shared ids in the common order (the PSI's ``aligned_rows``).
    The label holder signs with the node's identity when deployed, else with
    ``identity`` (default: the simulation's, :data:`~.signed_keys.SIMULATION_IDENTITY`).
    """

    def view(context: Context) -> tuple[LocalView, BoostParams, Bins]:
        params = BoostParams.from_config(context.run_config)
        local = local_view(data(context), list(aligned(context)), params.split_view)
        return local, params, Bins.of(local.x_train, local.x_test, params.bins)

    @app.handler(KIND_SETUP)
    def setup(msg: Message, context: Context) -> Message:
        local, params, bins = view(context)
        if saved(context)[1]:  # one setup per run: its key statement is signed once
            raise UpdateRejected("this party's setup ran already in this run")
        task = msg.content.config if msg.content is not None else {}
        parties = party_list(task, PARTY_LIST, context.node_id)
        arrays = Arrays()
        config: Config = {
            ROLE: local.role,
            FEATURE_NAMES: list(local.feature_names),
            TRAIN_ROWS: local.train_rows,
            TEST_ROWS: int(local.x_test.shape[0]),
        }
        if local.role == ACTIVE:
            key = arrays[KEY] = active.setup(context, local, params).public.to_wire()
            config[SIGNATURE] = vouch(resolve(identity), purpose=VSB_KEY,
                                      run_id=msg.metadata.run_id, node_id=context.node_id,
                                      parties=parties, key=key.tobytes())  # fmt: skip
        else:
            if len(bins.candidates) > MAX_CANDIDATES:
                raise UpdateRejected(f"more than {MAX_CANDIDATES} split candidates: fewer bins")
            passive.setup(context)
            config[CANDIDATES] = len(bins.candidates)
        save_parties(context, parties)
        return msg.reply(Content(arrays={PAYLOAD: arrays}, configs={PAYLOAD: config}))

    def on(role: str, step: Step) -> Handler:
        def handle(msg: Message, context: Context) -> Message:
            local, params, bins = view(context)
            if local.role != role:
                raise UpdateRejected(f"a {msg.metadata.kind!r} task is for the {role} party")
            return step(msg, context, local, params, bins)

        return handle

    def signing(step: Signed) -> Step:
        def run(msg: Message, context: Context, local: LocalView, params: BoostParams,
                bins: Bins) -> Message:  # fmt: skip
            return step(msg, context, local, params, bins, resolve(identity))

        return run

    app.handler(KIND_GRADIENTS)(on(ACTIVE, signing(active.gradients)))
    app.handler(KIND_SPLIT)(on(ACTIVE, signing(active.split)))
    app.handler(KIND_ASSIGN)(on(ACTIVE, signing(active.assign)))
    app.handler(KIND_HISTOGRAM)(on(PASSIVE, signing(passive.histogram)))
    app.handler(KIND_PARTITION)(on(PASSIVE, signing(passive.partition)))

    @app.handler(KIND_FINISH)
    def finish(msg: Message, context: Context) -> Message:
        local, _, _ = view(context)
        config: Config = {ROLE: local.role}
        arrays = Arrays()
        if local.role == ACTIVE:
            arrays = active.finish(context)
        else:
            config["vsb-splits"] = passive.splits_held(context)
        return msg.reply(Content(arrays={PAYLOAD: arrays}, configs={PAYLOAD: config}))
