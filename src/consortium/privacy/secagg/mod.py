"""``secaggplus_mod``: the node mod that takes part in SecAgg+ rounds.

Put it in a ClientApp's mods (``ClientApp(client_fn, mods=[secaggplus_mod(sign,
verify)])``); the server runs :class:`~consortium.server.workflow.secagg.SecAggPlusWorkflow`.
The mod answers the protocol's own tasks itself and wraps the train task:
the app's train handler runs as usual, and the mod replaces its reply by the
masked vector, so neither the model nor the metrics of this node reach the
server in the clear.
"""

from __future__ import annotations

from consortium.client.app import Handler, Mod
from consortium.core.context import Context
from consortium.core.errors import SecurityError
from consortium.core.message import TRAIN, Content, Message
from consortium.core.records import Config
from consortium.privacy.secagg import protocol as p
from consortium.privacy.secagg.crypto import Sign, Verify
from consortium.privacy.secagg.masking import masked_input
from consortium.privacy.secagg.node import KEYED, MASKED, REVEALED, advertise, check_round, unmask

__all__ = ["secaggplus_mod"]


def secaggplus_mod(sign: Sign, verify: Verify, *, allow_plain_train: bool = False) -> Mod:
    """A mod running this node's side of SecAgg+ (see the module docstring).

    ``sign(node_id, message)`` signs with the node's identity key;
    ``verify(node_id, message, signature)`` checks a peer's signature with a
    key from a source the node trusts (never one the server relays): see
    :class:`~consortium.privacy.secagg.crypto.Ed25519Keyring`. A train task
    that is not part of a SecAgg+ round is refused, because its reply would
    carry this node's update in the clear, unless ``allow_plain_train``.
    Evaluate and query tasks pass through.
    """

    def secaggplus_mod(message: Message, context: Context, call_next: Handler) -> Message:
        kind = message.metadata.kind
        content = message.content
        in_round = content is not None and p.RECORD in content.configs
        if kind not in (p.ADVERTISE, p.UNMASK) and not (kind == TRAIN and in_round):
            if kind == TRAIN and not allow_plain_train:
                raise SecurityError(
                    "this node aggregates securely only: a plain train task would send its "
                    "update in the clear (use SecAggPlusWorkflow, or allow_plain_train=True)"
                )
            return call_next(message, context)
        if not in_round:
            raise SecurityError(f"SecAgg+ {kind!r} task without its {p.RECORD!r} record")
        state = context.state.configs.get(p.RECORD)
        node = context.node_id
        reply_record: Config
        if kind == p.ADVERTISE:
            reply_record, new_state = advertise(message, node, sign)
        elif kind == p.UNMASK:
            state = check_round(message, state, (MASKED,))
            reply_record, new_state = unmask(message, node, state)
        else:
            state = check_round(message, state, (KEYED, MASKED, REVEALED))
            reply, new_state = masked_input(message, context, state, call_next, verify)
            context.state.configs[p.RECORD] = new_state
            return reply
        context.state.configs[p.RECORD] = new_state
        return message.reply(Content(configs={p.RECORD: reply_record}))

    return secaggplus_mod
