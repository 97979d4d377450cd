"""A passive party's side of vertical LR: partial logits out, masked encrypted gradient out.

A passive party holds features but no labels. Each iteration it

1. (``vlr.forward``) removes its mask from last iteration's decrypted gradient,
   takes a Nesterov step on its own weights, and sends its partial logits
   ``u_k = X_k w_k`` for the training and test rows, masked pairwise with the
   other passive parties so that only their sum can be read
   (:mod:`.logistic_masks`);
2. (``vlr.gradient``) receives the label holder's encrypted residuals
   ``[[d_i]]``, computes ``[[sum_i x_ij d_i + r_j]]`` for each of its columns
   with a fresh uniform mask ``r_j`` it keeps, and sends those ciphertexts.

It learns nothing of the labels: the residuals arrive encrypted, and what comes
back decrypted is its own gradient plus its own mask.

Before its first partial logits leave, it checks every key the server relayed
against its owner's signature (:mod:`.signed_keys`): each other passive
party's mask key, and the label holder's Paillier key, each over the parties
this party was told at setup, and that the passive parties listed are exactly
the run's others. So the server can neither put its own keys in place of the
peers' (which would remove this party's masks) nor tell this party it is the
only passive one (which would leave its logits unmasked): the label holder
signed one list of parties, once. The keys are then pinned for the run.
"""

from __future__ import annotations

import numpy as np

from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import SecurityError, UpdateRejected
from consortium.core.identity import MASK_KEY, VLR_GRADIENTS, VLR_KEY, NodeIdentity
from consortium.core.message import Content, Message
from consortium.core.records import Config
from consortium.vertical.logistic_masks import UInt8Array, check_peers, encode, masks, new_key
from consortium.vertical.logistic_paillier import (
    FEATURE_BITS,
    MASK_SECURITY_BITS,
    RESIDUAL_BITS,
    PublicKey,
    mask_bits,
    pack,
    random_masks,
    to_fixed,
    unpack,
)
from consortium.vertical.logistic_party import (
    LocalView,
    expect_iteration,
    lookahead,
    nesterov_step,
    parties_of,
    save,
    saved_arrays,
    saved_config,
)
from consortium.vertical.logistic_protocol import (
    GRADIENT,
    GRADIENT_SIGNATURE,
    ITERATION,
    KEY,
    KEY_SIGNATURE,
    LABEL_HOLDER,
    MASK_BITS,
    PAYLOAD,
    PEER_NODES,
    PEER_SIGNATURES,
    PEERS,
    PLAIN,
    RESIDUALS,
    TRAINING,
    U_TEST,
    U_TRAIN,
    VerticalLRParams,
)
from consortium.vertical.signed_keys import check, digest, vouch

_MASKS = "masks"
_KEY = "key"
_MASK_SECRET = "mask_secret"
_MASK_PUBLIC = "mask_public"
_PEERS = "peers"


def forward(
    msg: Message,
    context: Context,
    view: LocalView,
    params: VerticalLRParams,
    identity: NodeIdentity,
) -> Message:
    """Apply last iteration's gradient (if any), then send this iteration's partial logits."""
    content = _content(msg)
    saved, state = saved_config(context), saved_arrays(context)
    t = expect_iteration(content.config, saved, advance=True)
    training = content.config.get(TRAINING, True)
    if not isinstance(training, bool) or (not training and t != params.iterations + 1):
        raise UpdateRejected(f"{TRAINING!r} must be true until the last pass")
    w = state.get("w", np.zeros(view.features))
    v = state.get("v", np.zeros(view.features))
    payload = content.arrays.get(PAYLOAD, Arrays())
    if t > 1:
        grad = _unmasked_gradient(payload, saved, state, view, t - 1)
        w, v = nesterov_step(w, v, grad + params.l2 * lookahead(w, v, params, True), params)
    elif PLAIN in payload:
        raise UpdateRejected("the first iteration carries no gradient")
    if _MASK_SECRET not in state:
        raise UpdateRejected("no mask key: the run's setup did not reach this party")
    secret, own = state[_MASK_SECRET], state[_MASK_PUBLIC]
    if _PEERS in state:  # checked and pinned at the first forward
        peers, me = check_peers(payload.get(PEERS), own)
        if not np.array_equal(state[_PEERS], peers):
            raise UpdateRejected("the passive parties' keys changed during the run")
        key = state[_KEY]
    else:
        peers, me, key = _signed_keys(msg, context, own, identity, params)
    kept = Arrays({"w": w, "v": v, _MASK_SECRET: secret, _MASK_PUBLIC: own, _PEERS: peers.copy(),
                   _KEY: key.copy()})  # fmt: skip
    save(context, kept, {ITERATION: t})
    point = lookahead(w, v, params, training)
    out = Arrays()
    for name, x in ((U_TRAIN, view.x_train), (U_TEST, view.x_test)):
        mask = masks(secret, peers, me, t, name, x.shape[0])
        out[name] = encode(x @ point) + mask  # uint64: modulo 2**64
    return msg.reply(Content(arrays={PAYLOAD: out}))


def setup(context: Context) -> UInt8Array:
    """Draw this run's pairwise-mask key (kept here); its public half for the peers."""
    secret, public = new_key()
    save(context, Arrays({_MASK_SECRET: secret, _MASK_PUBLIC: public}), {ITERATION: 0})
    return public


def _signed_keys(
    msg: Message, context: Context, own: UInt8Array, identity: NodeIdentity,
    params: VerticalLRParams,
) -> tuple[UInt8Array, int, UInt8Array]:  # fmt: skip
    """The peers' mask keys, this party's place among them and the label holder's key, as
    the first forward task relays them: each checked against its owner's signature over
    the parties this party was told at setup, and the passive parties exactly the others."""
    content = _content(msg)
    config, payload = content.config, content.arrays.get(PAYLOAD, Arrays())
    names, me_node, run_id = parties_of(context), context.node_id, msg.metadata.run_id
    holder = config.get(LABEL_HOLDER)
    if not isinstance(holder, str) or holder not in names or holder == me_node:
        raise UpdateRejected(f"{LABEL_HOLDER!r} must name another party of the run, got {holder!r}")
    passives = [n for n in names if n != holder]
    if config.get(PEER_NODES) != passives:
        raise SecurityError(
            f"{PEER_NODES!r} must be every passive party of the run, {passives}, got "
            f"{config.get(PEER_NODES)!r}: a party left out would leave this party's logits "
            "unmasked; refused"
        )
    peers, me = check_peers(payload.get(PEERS), own)
    if peers.shape[0] != len(passives) or passives[me] != me_node:
        raise UpdateRejected(f"{PEERS!r} must hold one key per party of {PEER_NODES!r}, in order")
    signatures = config.get(PEER_SIGNATURES)
    if not isinstance(signatures, list) or len(signatures) != len(passives):
        raise SecurityError(f"{PEER_SIGNATURES!r} must sign every passive party's key: refused")
    for i, (node, signature) in enumerate(zip(passives, signatures, strict=True)):
        if i != me:
            check(identity, signature, purpose=MASK_KEY, run_id=run_id, node_id=node,
                  parties=names, key=peers[i].tobytes())  # fmt: skip
    key = payload.get(KEY)
    if not isinstance(key, np.ndarray) or key.dtype != np.uint8 or key.ndim != 1:
        raise UpdateRejected(f"the first forward task needs the label holder's {KEY!r}")
    check(identity, config.get(KEY_SIGNATURE), purpose=VLR_KEY, run_id=run_id, node_id=holder,
          parties=names, key=key.tobytes())  # fmt: skip
    if PublicKey.from_wire(key).bits < params.key_bits:  # the run's key size, which it accepted
        raise UpdateRejected(f"the label holder's key is smaller than {params.key_bits} bits")
    return peers, me, key


def gradient(
    msg: Message,
    context: Context,
    view: LocalView,
    params: VerticalLRParams,
    identity: NodeIdentity,
) -> Message:
    """``[[X_k^T d + r]]`` from the label holder's ``[[d]]``; the masks ``r`` stay here.

    The party signs a digest of exactly the ciphertexts it sends, for this iteration:
    the label holder decrypts only what a passive party signed, so a server cannot
    pass off ciphertexts of its own (``[[d_i]]``, re-randomised) for decryption."""
    content = _content(msg)
    saved, state = saved_config(context), saved_arrays(context)
    t = expect_iteration(content.config, saved, advance=False)
    if MASK_BITS in saved or t > params.iterations:
        raise UpdateRejected(f"iteration {t} has no gradient step left")
    payload = content.arrays.get(PAYLOAD, Arrays())
    if KEY not in payload or RESIDUALS not in payload:
        raise UpdateRejected(f"a gradient task needs {KEY!r} and {RESIDUALS!r}")
    key = PublicKey.from_wire(payload[KEY])
    if _KEY not in state or not np.array_equal(state[_KEY], payload[KEY]):
        raise UpdateRejected(
            "the label holder's public key changed during the run (not the one it signed)"
        )
    residuals = unpack(payload[RESIDUALS], count=view.train_rows, width=key.ciphertext_bytes,
                       below=key.nsquare, what=RESIDUALS)  # fmt: skip
    columns = [to_fixed(view.x_train[:, j], FEATURE_BITS) for j in range(view.features)]
    largest = max(abs(v) for column in columns for v in column)
    bits = mask_bits(view.train_rows, largest)
    if (1 << (bits + 1)) >= key.n // 2:
        raise UpdateRejected(f"a {key.bits}-bit key is too small for a {bits}-bit mask")
    masks = random_masks(view.features, bits)
    masked = [
        key.add_fresh(key.dot(residuals, col), r) for col, r in zip(columns, masks, strict=True)
    ]
    out = Arrays({GRADIENT: pack(masked, key.ciphertext_bytes)})
    signature = vouch(identity, purpose=VLR_GRADIENTS, run_id=msg.metadata.run_id,
                      node_id=context.node_id, parties=parties_of(context),
                      key=digest(out[GRADIENT].tobytes()), index=t)  # fmt: skip
    kept = Arrays({**state, _KEY: payload[KEY].copy(), _MASKS: pack(masks, (bits + 7) // 8)})
    save(context, kept, {ITERATION: t, MASK_BITS: bits})
    return msg.reply(
        Content(arrays={PAYLOAD: out}, configs={PAYLOAD: {GRADIENT_SIGNATURE: signature}})
    )


def _unmasked_gradient(
    payload: Arrays, saved: Config, state: Arrays, view: LocalView, t: int
) -> np.ndarray:
    """The mean gradient ``X^T d / rows`` of iteration ``t``, the party's mask removed."""
    bits = saved.get(MASK_BITS)
    if not isinstance(bits, int) or _MASKS not in state or PLAIN not in payload:
        raise UpdateRejected(f"iteration {t}'s gradient is missing (no masked gradient pending)")
    key = PublicKey.from_wire(state[_KEY])
    width = (bits + 7) // 8
    masks = unpack(state[_MASKS], count=view.features, width=width, below=1 << bits, what="masks")
    plain = unpack(payload[PLAIN], count=view.features, width=key.plaintext_bytes,
                   below=key.n, what=PLAIN)  # fmt: skip
    bound = 1 << (bits - MASK_SECURITY_BITS)  # the sum's own bound (see mask_bits)
    sums = []
    for value, mask in zip(plain, masks, strict=True):
        signed = value - key.n if value > key.n // 2 else value
        total = signed - mask
        if abs(total) > bound:  # not what the label holder could have decrypted honestly
            raise UpdateRejected(f"{PLAIN!r} does not unmask to a gradient in range")
        sums.append(total)
    scale = float(2 ** (RESIDUAL_BITS + FEATURE_BITS)) * view.train_rows
    return np.asarray([float(s) for s in sums], dtype=np.float64) / scale


def _content(msg: Message) -> Content:
    if msg.content is None:
        raise UpdateRejected("a vertical-LR task needs content")
    return msg.content
