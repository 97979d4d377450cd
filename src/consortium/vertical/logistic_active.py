"""The label holder's side of vertical LR: residuals out encrypted, masked gradients decrypted.

The label holder ("active party") holds the labels, some features and the
intercept, and the Paillier key pair (drawn at setup, kept in the node's state,
never sent but for the public modulus). Each iteration it

1. (``vlr.residual``) adds the passive parties' partial logits to its own,
   computes loss and accuracy (train and held-out), the residuals
   ``d = sigmoid(u) - y``, takes its own Nesterov step in the clear, and sends
   ``[[d]]`` under its key;
2. (``vlr.decrypt``) decrypts the passive parties' masked gradients — once per
   iteration, at most :data:`MAX_DECRYPTIONS` values, and only ciphertexts each
   passive party signed for this iteration (:mod:`.signed_keys`, purpose
   ``vlr.gradients``) — and sends them back. Unsigned, the step would be a
   decryption oracle: a server could pass ``[[d_i]]`` (re-randomised) for a passive
   party's gradient and read the residuals, hence the labels.

It learns the sum of the passive parties' logits (each one's, with one
passive party: there is no one to mask it with) and masked numbers; never
their features, weights or gradients.
"""

from __future__ import annotations

import numpy as np

from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import SecurityError, UpdateRejected
from consortium.core.identity import VLR_GRADIENTS, NodeIdentity
from consortium.core.message import Content, Message
from consortium.core.records import Metrics
from consortium.ml.metrics import log_loss
from consortium.vertical.logistic_masks import decode_sum
from consortium.vertical.logistic_paillier import RESIDUAL_BITS, KeyPair, pack, to_fixed, unpack
from consortium.vertical.logistic_party import (
    LocalView,
    expect_iteration,
    lookahead,
    nesterov_step,
    parties_of,
    save,
    saved_arrays,
    saved_config,
    sigmoid,
)
from consortium.vertical.logistic_protocol import (
    COUNTS,
    GRADIENT,
    GRADIENT_SIGNATURES,
    ITERATION,
    PAYLOAD,
    PLAIN,
    RESIDUALS,
    TRAINING,
    U_TEST,
    U_TRAIN,
    VerticalLRParams,
    uint64_matrix,
)
from consortium.vertical.signed_keys import check, digest

#: Most passive parties a run may have (the protocol is tested with 1 and 2).
MAX_PASSIVES = 8
#: Most ciphertexts the label holder decrypts per iteration: every passive column, no more.
MAX_DECRYPTIONS = 1024
_DECRYPTED = "decrypted"


def setup_key(context: Context, params: VerticalLRParams) -> KeyPair:
    """Draw the run's key pair and keep it (with zero weights) in the node's state."""
    key = KeyPair.generate(params.key_bits)
    save(context, Arrays(key.to_state()), {ITERATION: 0, _DECRYPTED: 0})
    return key


def residual(msg: Message, context: Context, view: LocalView, params: VerticalLRParams) -> Message:
    """Logits, metrics, the label holder's own step and ``[[sigmoid(u) - y]]``."""
    assert view.y_train is not None and view.y_test is not None
    content = _content(msg)
    saved, state = saved_config(context), saved_arrays(context)
    t = expect_iteration(content.config, saved, advance=True)
    if "key_p" not in state:
        raise UpdateRejected("no key: the run's setup did not reach this party")
    training = content.config.get(TRAINING, True)
    if not isinstance(training, bool) or training != (t <= params.iterations):
        raise UpdateRejected(f"{TRAINING!r} must be true for iterations 1-{params.iterations} only")
    payload = content.arrays.get(PAYLOAD, Arrays())
    partial_train, partial_test = payload.get(U_TRAIN), payload.get(U_TEST)
    passives = (
        partial_train.shape[0]
        if isinstance(partial_train, np.ndarray) and partial_train.ndim == 2
        else 0
    )
    if not 1 <= passives <= MAX_PASSIVES:
        raise UpdateRejected(f"{U_TRAIN!r} must hold 1-{MAX_PASSIVES} passive parties' logits")
    # the passive parties' masks cancel in the sum: only the sum can be read
    others_train = decode_sum(uint64_matrix(partial_train, (passives, view.train_rows), U_TRAIN))
    test_shape = (passives, view.x_test.shape[0])
    others_test = decode_sum(uint64_matrix(partial_test, test_shape, U_TEST))

    w = state.get("w", np.zeros(view.features))
    v = state.get("v", np.zeros(view.features))
    b, vb = state.get("b", np.zeros(1)), state.get("vb", np.zeros(1))
    wl, bl = lookahead(w, v, params, training), lookahead(b, vb, params, training)
    p_train = sigmoid(view.x_train @ wl + bl[0] + others_train)
    p_test = sigmoid(view.x_test @ wl + bl[0] + others_test)
    metrics: Metrics = {
        "loss": log_loss(view.y_train, p_train),
        "accuracy": float(((p_train >= 0.5) == view.y_train).mean()),
        "num_examples": view.train_rows,
    }
    if view.y_test.shape[0]:
        metrics["test_loss"] = log_loss(view.y_test, p_test)
        metrics["test_accuracy"] = float(((p_test >= 0.5) == view.y_test).mean())
    out = Arrays()
    if training:
        d = p_train - view.y_train
        grad_w = view.x_train.T @ d / view.train_rows + params.l2 * wl
        w, v = nesterov_step(w, v, grad_w, params)
        b, vb = nesterov_step(b, vb, np.asarray([d.mean()]), params)
        key = KeyPair.from_state(state["key_p"], state["key_q"])
        ciphertexts = key.encrypt(to_fixed(d, RESIDUAL_BITS))
        out[RESIDUALS] = pack(ciphertexts, key.public.ciphertext_bytes)
    kept = Arrays(
        {"key_p": state["key_p"], "key_q": state["key_q"], "w": w, "v": v, "b": b, "vb": vb}
    )
    save(context, kept, {ITERATION: t, _DECRYPTED: saved.get(_DECRYPTED, 0)})
    return msg.reply(Content(arrays={PAYLOAD: out}, metrics={"metrics": metrics}))


def decrypt(
    msg: Message,
    context: Context,
    view: LocalView,
    params: VerticalLRParams,
    identity: NodeIdentity,
) -> Message:
    """The passive parties' masked gradients, decrypted: once per iteration, counted, and
    only each passive party's own, as it signed them for this iteration."""
    content = _content(msg)
    saved, state = saved_config(context), saved_arrays(context)
    t = expect_iteration(content.config, saved, advance=False)
    if saved.get(_DECRYPTED) != t - 1 or t > params.iterations:
        raise UpdateRejected(f"iteration {t}'s gradients were decrypted already (or none are due)")
    counts = content.config.get(COUNTS)
    if (
        not isinstance(counts, list)
        or not 1 <= len(counts) <= MAX_PASSIVES
        or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in counts)
        or sum(counts) > MAX_DECRYPTIONS  # type: ignore[arg-type]
    ):
        raise UpdateRejected(f"{COUNTS!r} must list 1-{MAX_PASSIVES} positive counts")
    total = sum(counts)  # type: ignore[arg-type]
    key = KeyPair.from_state(state["key_p"], state["key_q"])
    payload = content.arrays.get(PAYLOAD, Arrays())
    if GRADIENT not in payload:
        raise UpdateRejected(f"a decrypt task needs {GRADIENT!r}")
    ciphertexts = unpack(payload[GRADIENT], count=total, width=key.public.ciphertext_bytes,
                         below=key.public.nsquare, what=GRADIENT)  # fmt: skip
    _check_signed(msg, context, payload[GRADIENT], counts, t, identity)  # type: ignore[arg-type]
    plain = [m % key.public.n for m in key.decrypt(ciphertexts)]
    save(context, Arrays(dict(state)), {**saved, _DECRYPTED: t})
    out = Arrays({PLAIN: pack(plain, key.public.plaintext_bytes)})
    return msg.reply(Content(arrays={PAYLOAD: out}))


def _check_signed(msg: Message, context: Context, stacked: np.ndarray, counts: list[int],
                  t: int, identity: NodeIdentity) -> None:  # fmt: skip
    """Refuse unless each passive party of the run (in the order this party was told at
    setup) signed its slice of ``stacked`` for iteration ``t``: the ciphertexts came
    from that party's gradient step, not the server."""
    parties = parties_of(context)
    passives = [n for n in parties if n != context.node_id]
    signatures = _content(msg).config.get(GRADIENT_SIGNATURES)
    if len(counts) != len(passives):
        raise SecurityError(
            f"{COUNTS!r} must count every passive party of the run, {passives}: refused"
        )
    if not isinstance(signatures, list) or len(signatures) != len(passives):
        raise SecurityError(
            f"{GRADIENT_SIGNATURES!r} must hold a signature of every passive party of the "
            f"run, {passives}: refused"
        )
    edges = np.cumsum([0, *counts])
    for i, (node, signature) in enumerate(zip(passives, signatures, strict=True)):
        sent = digest(stacked[edges[i] : edges[i + 1]].tobytes())
        check(identity, signature, purpose=VLR_GRADIENTS, run_id=msg.metadata.run_id,
              node_id=node, parties=parties, key=sent, index=t)  # fmt: skip


def _content(msg: Message) -> Content:
    if msg.content is None:
        raise UpdateRejected("a vertical-LR task needs content")
    return msg.content
