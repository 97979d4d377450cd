"""The label holder's side of vertical boosting: gradients out encrypted, splits chosen here.

The label holder ("active party") holds the labels, the Paillier key pair, the
model's scores of every row and each tree's shape and leaf weights. Per tree it

1. (``vsb.gradients``) reports the metrics of the model so far and sends
   ``[[g_i]], [[h_i]]`` — the logistic loss's gradient ``p - y`` and hessian
   ``p (1 - p)`` of every training row, fixed point, under its key — with its
   signature over their digest (the passive parties check it, and its key's);
2. (``vsb.assign``, levels 1 to depth - 1) applies the last level's partitions
   (its own and those the passive parties returned, each checked against its
   owner's signature, purpose ``vsb.partition``) and signs the new level's
   row-to-node assignment (:mod:`.signed_keys`, purpose ``vsb.assignments``, index
   ``tree * 64 + level``; level 0's, every row in the root, is signed with the
   gradients). A passive party computes histograms and partitions only over an
   assignment so signed: a server that changed it would learn on which side of a
   split rows of its choosing fall;
3. (``vsb.split``, once per level) applies the last level's partitions if no
   ``vsb.assign`` did (the last level), decrypts the passive parties'
   candidate sums for the open nodes, adds its own (in the clear), and picks
   each node's best split by XGBoost's gain, or makes it a leaf.

Of a passive party's split it learns only "party k, candidate c" (the
candidates arrive in a secret order per node) and the rows that go left.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import SecurityError, UpdateRejected
from consortium.core.identity import VSB_ASSIGNMENTS, VSB_GRADIENTS, VSB_PARTITION, NodeIdentity
from consortium.core.message import Content, Message
from consortium.core.records import Config, Metrics
from consortium.ml.metrics import log_loss
from consortium.vertical.boost_party import (
    Bins,
    assignment_digest,
    children,
    ciphertext_pairs,
    gains,
    leaf_value,
    left_sums,
    parties_of,
    partition_digest,
    save,
    saved,
    step_of,
)
from consortium.vertical.boost_protocol import (
    ASSIGN,
    ASSIGN_SIGNATURE,
    ASSIGN_TEST,
    COUNTS,
    DECISIONS,
    GRAD,
    GRAD_SIGNATURE,
    HIST,
    LABEL_HOLDER,
    LEAF,
    LEFT,
    LEFT_TEST,
    LEVEL,
    MAX_CANDIDATES,
    MAX_PASSIVES,
    OWNERS,
    PARTITION_SIGNATURES,
    PAYLOAD,
    TRAINING,
    TREE,
    BoostParams,
    config_int,
    mask_array,
)
from consortium.vertical.logistic_paillier import RESIDUAL_BITS, KeyPair, pack, to_fixed
from consortium.vertical.logistic_party import LocalView, sigmoid
from consortium.vertical.signed_keys import check, digest, level_index, vouch

_KEYS = ("key_p", "key_q")
_NONE = -2  # an owner slot of a node that does not exist


def setup(context: Context, view: LocalView, params: BoostParams) -> KeyPair:
    """Draw the run's key pair; start every score at the log-odds of the training labels."""
    assert view.y_train is not None
    key = KeyPair.generate(params.key_bits)
    rate = float(np.clip(view.y_train.mean(), 1e-6, 1 - 1e-6))
    base = np.log(rate / (1 - rate))
    nodes = 2 ** (params.depth + 1) - 1
    state = Arrays({
        **key.to_state(),
        "f_train": np.full(view.train_rows, base),
        "f_test": np.full(view.x_test.shape[0], base),
        "owner": np.full((params.trees, nodes), _NONE, dtype=np.int64),
        "cand": np.full((params.trees, nodes), -1, dtype=np.int64),
        "value": np.zeros((params.trees, nodes)),
    })  # fmt: skip
    save(context, state, {"tree": 0, "level": 0, "phase": "setup"})
    return key


def gradients(msg: Message, context: Context, view: LocalView, params: BoostParams,
              bins: Bins, identity: NodeIdentity) -> Message:  # fmt: skip
    """Metrics of the model with ``tree - 1`` trees; ``[[g]], [[h]]`` for tree ``tree``."""
    assert view.y_train is not None and view.y_test is not None
    config = _config(msg)
    state, progress = saved(context)
    tree, _, phase = step_of(progress)
    t = config_int(config, TREE, 1, params.trees + 1)
    if t != tree + 1 or phase not in ("setup", "done"):
        raise UpdateRejected(f"{TREE!r} {t} is out of order: tree {tree} is at step {phase!r}")
    training = config.get(TRAINING, True)
    if not isinstance(training, bool) or training != (t <= params.trees):
        raise UpdateRejected(f"{TRAINING!r} must be true for trees 1-{params.trees} only")
    p_train, p_test = sigmoid(state["f_train"]), sigmoid(state["f_test"])
    metrics: Metrics = {
        "loss": log_loss(view.y_train, p_train),
        "accuracy": float(((p_train >= 0.5) == view.y_train).mean()),
        "num_examples": view.train_rows,
    }
    if view.y_test.shape[0]:
        metrics["test_loss"] = log_loss(view.y_test, p_test)
        metrics["test_accuracy"] = float(((p_test >= 0.5) == view.y_test).mean())
    out, signed = Arrays(), Config()
    kept = Arrays(dict(state))
    if training:
        g, h = p_train - view.y_train, p_train * (1 - p_train)
        key = KeyPair.from_state(state["key_p"], state["key_q"])
        fixed = to_fixed(np.stack([g, h], axis=1).reshape(-1), RESIDUAL_BITS)
        width = key.public.ciphertext_bytes
        out[GRAD] = pack(key.encrypt(fixed), width).reshape(view.train_rows, 2, width)
        signed[GRAD_SIGNATURE] = vouch(identity, purpose=VSB_GRADIENTS, run_id=msg.metadata.run_id,
                                       node_id=context.node_id, parties=parties_of(context),
                                       key=digest(out[GRAD].tobytes()), index=t)  # fmt: skip
        root = np.zeros(view.train_rows, dtype=np.int64)
        root_test = np.zeros(view.x_test.shape[0], dtype=np.int64)
        signed[ASSIGN_SIGNATURE] = _vouch_assignment(msg, context, identity, t, 0, root,
                                                     root_test)  # fmt: skip
        kept.update({"g": g, "h": h, "assign": root, "assign_test": root_test})
        _pending(kept, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), view)
    save(
        context, kept, {**progress, "tree": t, "level": -1, "phase": "grad" if training else "end"}
    )
    return msg.reply(
        Content(arrays={PAYLOAD: out}, configs={PAYLOAD: signed}, metrics={"metrics": metrics})
    )


def split(msg: Message, context: Context, view: LocalView, params: BoostParams,
          bins: Bins, identity: NodeIdentity) -> Message:  # fmt: skip
    """Apply the last level's partitions, then decide every open node of ``level``."""
    config, payload = _config(msg), _payload(msg)
    state, progress = saved(context)
    tree, level, phase = step_of(progress)
    t = config_int(config, TREE, 1, params.trees)
    lv = config_int(config, LEVEL, 0, params.depth)
    assigned = lv == level and phase == "assign"  # vsb.assign applied the partitions
    if t != tree or not (assigned or (lv == level + 1 and phase in ("grad", "split"))):
        raise UpdateRejected(
            f"split of tree {t} level {lv} is out of order: tree {tree} is at step {phase!r}"
        )
    signed = _Signed(msg, context, identity, t, level)
    assign, assign_test = _apply_partitions(state, payload, view, signed)
    g, h = state["g"], state["h"]
    key = KeyPair.from_state(state["key_p"], state["key_q"])
    slots = 2**lv
    passive, counts = _passive_sums(key, payload, config, progress, slots, lv < params.depth)
    gfix = np.abs(np.asarray(to_fixed(g, RESIDUAL_BITS), dtype=object))
    hfix = np.asarray(to_fixed(h, RESIDUAL_BITS), dtype=object)
    own = bins.candidates
    f_train, f_test = state["f_train"].copy(), state["f_test"].copy()
    owner, cand, value = state["owner"].copy(), state["cand"].copy(), state["value"].copy()
    decisions = np.full((slots, 2), -1, dtype=np.int64)
    split_nodes, split_owner, own_left, own_left_test = [], [], [], []
    for j in range(slots):
        rows = assign == j
        if not rows.any():
            continue
        gj, hj = float(g[rows].sum()), float(h[rows].sum())
        best, choice = 0.0, None
        if lv < params.depth and own:
            gain = gains(gj, hj, left_sums(g, rows, bins), left_sums(h, rows, bins), params)
            k = int(np.argmax(gain))
            if gain[k] > best:
                best, choice = float(gain[k]), (LABEL_HOLDER, k)
        for party, sums in enumerate(passive, start=1):
            gl, hl = sums[j]
            _check_sums(gl, hl, int(gfix[rows].sum()), int(hfix[rows].sum()), party)
            scale = float(2**RESIDUAL_BITS)
            gain = gains(gj, hj, gl.astype(np.float64) / scale, hl.astype(np.float64) / scale,
                         params)  # fmt: skip
            k = int(np.argmax(gain)) if gain.size else -1
            if k >= 0 and gain[k] > best:
                best, choice = float(gain[k]), (party, k)
        node = 2**lv - 1 + j
        if choice is None:
            w = leaf_value(gj, hj, params)
            owner[t - 1, node], value[t - 1, node] = LEAF, w
            f_train[rows] += w
            f_test[assign_test == j] += w
            continue
        who, k = choice
        owner[t - 1, node], cand[t - 1, node] = who, k
        split_nodes.append(j)
        split_owner.append(who)
        if who == LABEL_HOLDER:
            column, edge = own[k]
            own_left.append(bins.goes_left(column, edge) & rows)
            own_left_test.append(bins.goes_left(column, edge, test=True) & (assign_test == j))
        decisions[j] = (who, k if who != LABEL_HOLDER else -1)
    kept = Arrays({**state, "f_train": f_train, "f_test": f_test, "owner": owner, "cand": cand,
                   "value": value, "assign": assign, "assign_test": assign_test})  # fmt: skip
    _pending(kept, np.asarray(split_nodes, np.int64), np.asarray(split_owner, np.int64), view)
    mine = [i for i, who in enumerate(split_owner) if who == LABEL_HOLDER]
    for i, left, left_test in zip(mine, own_left, own_left_test, strict=True):
        kept["left"][i], kept["left_test"][i] = left, left_test
    phase = "split" if split_nodes else "done"
    save(context, kept, {**progress, "level": lv, "phase": phase, **counts})
    out = Arrays({DECISIONS: decisions})
    out[LEFT] = np.asarray(own_left, dtype=np.uint8).reshape(len(mine), view.train_rows)
    out[LEFT_TEST] = np.asarray(own_left_test, dtype=np.uint8).reshape(
        len(mine), view.x_test.shape[0]
    )
    return msg.reply(Content(arrays={PAYLOAD: out}))


def assign(msg: Message, context: Context, view: LocalView, params: BoostParams,
           bins: Bins, identity: NodeIdentity) -> Message:  # fmt: skip
    """Apply the last level's partitions; the new level's assignment, signed."""
    config, payload = _config(msg), _payload(msg)
    state, progress = saved(context)
    tree, level, phase = step_of(progress)
    t = config_int(config, TREE, 1, params.trees)
    lv = config_int(config, LEVEL, 1, params.depth - 1)  # a level passive parties build on
    if t != tree or lv != level + 1 or phase != "split":
        raise UpdateRejected(
            f"assign of tree {t} level {lv} is out of order: tree {tree} is at step {phase!r}"
        )
    rows, rows_test = _apply_partitions(state, payload, view, _Signed(msg, context, identity,
                                                                      t, level))  # fmt: skip
    signature = _vouch_assignment(msg, context, identity, t, lv, rows, rows_test)
    kept = Arrays({**state, "assign": rows, "assign_test": rows_test})
    _pending(kept, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), view)
    save(context, kept, {**progress, "level": lv, "phase": "assign"})
    out = Arrays({ASSIGN: rows, ASSIGN_TEST: rows_test})
    return msg.reply(
        Content(arrays={PAYLOAD: out}, configs={PAYLOAD: {ASSIGN_SIGNATURE: signature}})
    )


def _vouch_assignment(msg: Message, context: Context, identity: NodeIdentity, tree: int,
                      level: int, rows: np.ndarray, rows_test: np.ndarray) -> str:  # fmt: skip
    """The label holder's signature over level ``level`` of tree ``tree``'s assignment."""
    return vouch(identity, purpose=VSB_ASSIGNMENTS, run_id=msg.metadata.run_id,
                 node_id=context.node_id, parties=parties_of(context),
                 key=assignment_digest(rows, rows_test),
                 index=level_index(tree, level))  # fmt: skip


def finish(context: Context) -> Arrays:
    """What the server may know of the model: the owner of every split (not its threshold)."""
    state, progress = saved(context)
    if step_of(progress)[2] != "end":
        raise UpdateRejected("the run is not finished on this party")
    owner = state["owner"]
    internal = owner[:, : owner.shape[1] // 2]
    return Arrays({OWNERS: np.where(internal >= LABEL_HOLDER, internal, -1)})


@dataclass(frozen=True)
class _Signed:
    """What checking the last level's partitions needs: the task, the party, the level."""

    msg: Message
    context: Context
    identity: NodeIdentity
    tree: int
    level: int  # the partitions' level (the one before the task's)

    def check(self, owners: np.ndarray, got: np.ndarray, got_test: np.ndarray) -> None:
        """Refuse unless each passive owner signed exactly its rows of ``got``."""
        parties = parties_of(self.context)
        passives = [n for n in parties if n != self.context.node_id]
        signatures = _config(self.msg).get(PARTITION_SIGNATURES)
        if not isinstance(signatures, list) or len(signatures) != len(passives):
            raise SecurityError(f"{PARTITION_SIGNATURES!r} must hold one entry per passive "
                                f"party of the run, {passives}: refused")  # fmt: skip
        for k, node in enumerate(passives, start=1):
            mine = owners == k
            if mine.any():
                check(self.identity, signatures[k - 1], purpose=VSB_PARTITION,
                      run_id=self.msg.metadata.run_id, node_id=node, parties=parties,
                      key=partition_digest(got[mine], got_test[mine]),
                      index=level_index(self.tree, self.level))  # fmt: skip


def _apply_partitions(state: Arrays, payload: Arrays, view: LocalView, signed: _Signed
                      ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """This level's rows of each slot: last level's splits, with the passive parties'
    parts, each as its owner signed it."""
    nodes, owners = state["split_nodes"], state["split_owner"]
    left, left_test = state["left"].astype(bool), state["left_test"].astype(bool)
    theirs = np.flatnonzero(owners != LABEL_HOLDER)
    m = int(theirs.size)
    got = mask_array(payload.get(LEFT), (m, view.train_rows), LEFT)
    got_test = mask_array(payload.get(LEFT_TEST), (m, view.x_test.shape[0]), LEFT_TEST)
    if m:
        signed.check(owners[theirs], got, got_test)
    assign, assign_test = state["assign"], state["assign_test"]
    for i, row, row_test in zip(theirs, got, got_test, strict=True):
        node = nodes[i]
        if (row & (assign != node)).any() or (row_test & (assign_test != node)).any():
            raise UpdateRejected(f"{LEFT!r} sends rows left that are not in node {node}")
        left[i], left_test[i] = row, row_test
    if not nodes.size:
        return assign, assign_test
    return children(assign, nodes.tolist(), left), children(assign_test, nodes.tolist(), left_test)


def _pending(kept: Arrays, nodes: np.ndarray, owners: np.ndarray, view: LocalView) -> None:
    kept["split_nodes"], kept["split_owner"] = nodes, owners
    kept["left"] = np.zeros((nodes.size, view.train_rows), dtype=np.uint8)
    kept["left_test"] = np.zeros((nodes.size, view.x_test.shape[0]), dtype=np.uint8)


def _passive_sums(
    key: KeyPair, payload: Arrays, config: Config, progress: Config, slots: int, open_level: bool
) -> tuple[list[list[tuple[np.ndarray, np.ndarray]]], Config]:
    """Each passive party's decrypted (left g, left h) sums, per slot, per candidate; the
    candidate counts to pin (the first level's counts hold for the whole run)."""
    if not open_level:
        if HIST in payload:
            raise UpdateRejected(f"the last level takes no {HIST!r}")
        return [], {}
    counts = config.get(COUNTS)
    if (not isinstance(counts, list) or not 1 <= len(counts) <= MAX_PASSIVES
            or any(isinstance(c, bool) or not isinstance(c, int)
                   or not 0 <= c <= MAX_CANDIDATES for c in counts)):  # fmt: skip
        raise UpdateRejected(f"{COUNTS!r} must list 1-{MAX_PASSIVES} counts of candidates")
    pinned = progress.get("counts")
    if pinned is not None and pinned != counts:
        raise UpdateRejected(f"{COUNTS!r} changed during the run")
    total = slots * sum(counts)  # type: ignore[arg-type]
    values = key.decrypt(ciphertext_pairs(payload.get(HIST), total, key.public, HIST))
    flat = np.asarray(values, dtype=object).reshape(total, 2)
    out, start = [], 0
    for count in counts:
        assert isinstance(count, int)
        block = flat[start : start + slots * count].reshape(slots, count, 2)
        out.append([(block[j, :, 0], block[j, :, 1]) for j in range(slots)])
        start += slots * count
    return out, {"counts": list(counts)}


def _check_sums(gl: np.ndarray, hl: np.ndarray, g_abs: int, h_total: int, party: int) -> None:
    """A left child's sums lie within the node's: anything else is not an honest histogram."""
    if any(abs(v) > g_abs for v in gl) or any(not 0 <= v <= h_total for v in hl):
        raise UpdateRejected(f"passive party {party}'s {HIST!r} holds sums outside its node")


def _config(msg: Message) -> Config:
    if msg.content is None:
        raise UpdateRejected("a vertical-boosting task needs content")
    return msg.content.config


def _payload(msg: Message) -> Arrays:
    assert msg.content is not None
    return msg.content.arrays.get(PAYLOAD, Arrays())
