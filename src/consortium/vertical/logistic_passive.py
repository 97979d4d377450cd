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
"""

from __future__ import annotations

import numpy as np

from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import UpdateRejected
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
    save,
    saved_arrays,
    saved_config,
)
from consortium.vertical.logistic_protocol import (
    GRADIENT,
    ITERATION,
    KEY,
    MASK_BITS,
    PAYLOAD,
    PEERS,
    PLAIN,
    RESIDUALS,
    TRAINING,
    U_TEST,
    U_TRAIN,
    VerticalLRParams,
)

_MASKS = "masks"
_KEY = "key"
_MASK_SECRET = "mask_secret"
_MASK_PUBLIC = "mask_public"
_PEERS = "peers"


def forward(msg: Message, context: Context, view: LocalView, params: VerticalLRParams) -> Message:
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
    peers, me = check_peers(payload.get(PEERS), own)
    if _PEERS in state and not np.array_equal(state[_PEERS], peers):
        raise UpdateRejected("the passive parties' keys changed during the run")
    kept = Arrays({"w": w, "v": v, _MASK_SECRET: secret, _MASK_PUBLIC: own, _PEERS: peers.copy(),
                   **({_KEY: state[_KEY]} if _KEY in state else {})})  # fmt: skip
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


def gradient(msg: Message, context: Context, view: LocalView, params: VerticalLRParams) -> Message:
    """``[[X_k^T d + r]]`` from the label holder's ``[[d]]``; the masks ``r`` stay here."""
    content = _content(msg)
    saved, state = saved_config(context), saved_arrays(context)
    t = expect_iteration(content.config, saved, advance=False)
    if MASK_BITS in saved or t > params.iterations:
        raise UpdateRejected(f"iteration {t} has no gradient step left")
    payload = content.arrays.get(PAYLOAD, Arrays())
    if KEY not in payload or RESIDUALS not in payload:
        raise UpdateRejected(f"a gradient task needs {KEY!r} and {RESIDUALS!r}")
    key = PublicKey.from_wire(payload[KEY])
    if _KEY in state and not np.array_equal(state[_KEY], payload[KEY]):
        raise UpdateRejected("the label holder's public key changed during the run")
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
    kept = Arrays({**state, _KEY: payload[KEY].copy(), _MASKS: pack(masks, (bits + 7) // 8)})
    save(context, kept, {ITERATION: t, MASK_BITS: bits})
    out = Arrays({GRADIENT: pack(masked, key.ciphertext_bytes)})
    return msg.reply(Content(arrays={PAYLOAD: out}))


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
