"""A passive party's side of vertical boosting: encrypted histograms out, its splits kept.

A passive party holds columns but no labels. Per tree it keeps the label
holder's ``[[g_i]], [[h_i]]`` and, per level,

1. (``vsb.histogram``) for every open node and every split candidate of its
   own (column, edge) computes ``[[sum g]]`` and ``[[sum h]]`` over the node's
   rows that go left — products of ciphertexts only, so it learns nothing of
   the gradients — in a fresh secret order per node, each ciphertext
   re-randomised (so the key's owner cannot tell from the random factors
   which rows were summed);
2. (``vsb.partition``) for the nodes the label holder gave it ("candidate c
   of node j"), maps ``c`` back to its column and threshold (the first of its
   candidates that split the node's rows alike: ties do not follow the
   shuffle, so the trees depend on the seed only), records them in
   its own model (never sent) and returns the rows of the node that go left,
   training and held-out alike (held-out rows are routed by each party through
   its own splits), signed for the label holder, which composes the next
   level's assignment from them.

Before the first histogram of each tree it checks the label holder's
signatures (:mod:`.signed_keys`): over its Paillier key (then pinned for the
run) and over that tree's ``[[g]], [[h]]``, each with the parties this party
was told at setup. A server that put its own key (or gradients of its
choosing) in their place would otherwise read every row's bin of every
column from the histograms. Before every histogram it checks the label
holder's signature over the level's row-to-node assignment (training and
held-out rows; index ``tree * 64 + level``), which the partition step then
uses: a server that moved rows of its choosing into a node would otherwise
learn from the partition on which side of the split they fall.
"""

from __future__ import annotations

import secrets

import numpy as np

from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import UpdateRejected
from consortium.core.identity import (
    VSB_ASSIGNMENTS,
    VSB_GRADIENTS,
    VSB_KEY,
    VSB_PARTITION,
    NodeIdentity,
)
from consortium.core.message import Content, Message
from consortium.core.records import Config
from consortium.vertical.boost_party import (
    KEYS_RECORD,
    Bins,
    assignment_digest,
    ciphertext_pairs,
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
    GRAD,
    GRAD_SIGNATURE,
    HIST,
    HOLDER_NODE,
    KEY,
    KEY_SIGNATURE,
    LEFT,
    LEFT_TEST,
    LEVEL,
    PARTITION_SIGNATURE,
    PAYLOAD,
    SPLITS,
    TREE,
    BoostParams,
    config_int,
    int_array,
)
from consortium.vertical.logistic_paillier import PublicKey, pack
from consortium.vertical.logistic_party import LocalView
from consortium.vertical.signed_keys import check, digest, level_index, vouch


def setup(context: Context) -> None:
    save(context, Arrays({"model": np.zeros((0, 5), dtype=np.int64)}),
         {"tree": 0, "level": 0, "phase": "setup"})  # fmt: skip


def histogram(msg: Message, context: Context, view: LocalView, params: BoostParams,
              bins: Bins, identity: NodeIdentity) -> Message:  # fmt: skip
    """``[[left sums]]`` of every candidate of every open node of this level, shuffled."""
    config, payload = _content(msg)
    state, progress = saved(context)
    tree, level, phase = step_of(progress)
    t = config_int(config, TREE, 1, params.trees)
    lv = config_int(config, LEVEL, 0, params.depth - 1)
    first = lv == 0 and t == tree + 1 and phase in ("setup", "hist", "part")
    if not first and not (t == tree and lv == level + 1 and phase in ("hist", "part")):
        raise UpdateRejected(
            f"histogram of tree {t} level {lv} is out of order: at tree {tree} level {level}"
        )
    kept = Arrays(dict(state))
    if lv == 0:
        if KEY not in payload or GRAD not in payload:
            raise UpdateRejected(f"a tree's first histogram task needs {KEY!r} and {GRAD!r}")
        key = PublicKey.from_wire(payload[KEY])
        if key.bits < params.key_bits:  # the run's key size, which the node accepted
            raise UpdateRejected(
                f"the public key has {key.bits} bits, the run says {params.key_bits}"
            )
        if "key" in state and not np.array_equal(state["key"], payload[KEY]):
            raise UpdateRejected("the label holder's public key changed during the run")
        ciphertext_pairs(payload[GRAD], view.train_rows, key, GRAD)  # checked before it is kept
        _check_signed(msg, context, payload, pinned="key" in state, tree=t, identity=identity)
        kept["key"], kept["grad"] = payload[KEY].copy(), payload[GRAD].copy()
    elif GRAD in payload:
        raise UpdateRejected(f"{GRAD!r} comes with a tree's first level only")
    key = PublicKey.from_wire(kept["key"])
    slots = 2**lv
    assign = int_array(payload.get(ASSIGN), (view.train_rows,), -1, slots - 1, ASSIGN)
    assign_test = int_array(payload.get(ASSIGN_TEST), (view.x_test.shape[0],), -1, slots - 1,
                            ASSIGN_TEST)  # fmt: skip
    holder = context.state.configs.get(KEYS_RECORD, {}).get(HOLDER_NODE)
    assert isinstance(holder, str)  # kept by _check_signed at the run's first histogram
    check(identity, config.get(ASSIGN_SIGNATURE), purpose=VSB_ASSIGNMENTS,
          run_id=msg.metadata.run_id, node_id=holder, parties=parties_of(context),
          key=assignment_digest(assign, assign_test), index=level_index(t, lv))  # fmt: skip
    grad = ciphertext_pairs(kept["grad"], view.train_rows, key, GRAD)
    sums = _left_sums(key, grad, assign, bins, slots)
    count = len(bins.candidates)
    order = np.zeros((slots, count), dtype=np.int64)
    out: list[int] = []
    shuffle = secrets.SystemRandom().shuffle
    for j in range(slots):
        perm = list(range(count))
        shuffle(perm)
        order[j] = perm
        for c in perm:
            out += [key.add_fresh(sums[j][c][0], 0), key.add_fresh(sums[j][c][1], 0)]
    kept.update({"assign": assign.copy(), "assign_test": assign_test.copy(), "order": order})
    save(context, kept, {"tree": t, "level": lv, "phase": "hist"})
    width = key.ciphertext_bytes
    hist = pack(out, width).reshape(slots * count, 2, width)
    return msg.reply(Content(arrays={PAYLOAD: Arrays({HIST: hist})}))


def partition(msg: Message, context: Context, view: LocalView, params: BoostParams,
              bins: Bins, identity: NodeIdentity) -> Message:  # fmt: skip
    """Record the chosen splits (column and threshold stay here); the rows that go left,
    signed: the label holder composes the next assignment only from partitions their
    owners signed, so a server cannot move rows between a node's children."""
    config, payload = _content(msg)
    state, progress = saved(context)
    tree, level, phase = step_of(progress)
    t = config_int(config, TREE, 1, params.trees)
    lv = config_int(config, LEVEL, 0, params.depth - 1)
    if (t, lv) != (tree, level) or phase != "hist":
        raise UpdateRejected(
            f"partition of tree {t} level {lv} is out of order: at tree {tree} level {level}"
        )
    order, assign, assign_test = state["order"], state["assign"], state["assign_test"]
    slots, count = order.shape
    splits = payload.get(SPLITS)
    m = splits.shape[0] if isinstance(splits, np.ndarray) and splits.ndim == 2 else -1
    if not 1 <= m <= slots or count == 0:
        raise UpdateRejected(f"{SPLITS!r} must name 1-{slots} (node, candidate) pairs")
    splits = int_array(splits, (m, 2), 0, max(slots, count) - 1, SPLITS)
    nodes = splits[:, 0].tolist()
    if len(set(nodes)) != m or max(nodes) >= slots or int(splits[:, 1].max()) >= count:
        raise UpdateRejected(f"{SPLITS!r} names a node twice, or one or a candidate out of range")
    left, left_test, model = [], [], []
    for node, c in splits.tolist():
        here = assign == node
        if not here.any():
            raise UpdateRejected(f"{SPLITS!r} names node {node}, which holds no rows")
        column, edge = bins.first_alike(int(order[node, c]), here)  # not the shuffle's pick
        left.append(bins.goes_left(column, edge) & here)
        left_test.append(bins.goes_left(column, edge, test=True) & (assign_test == node))
        model.append([t, lv, node, column, edge])
    tests = view.x_test.shape[0]
    out = Arrays({LEFT: np.asarray(left, dtype=np.uint8),
                  LEFT_TEST: np.asarray(left_test, dtype=np.uint8).reshape(m, tests)})  # fmt: skip
    signature = vouch(identity, purpose=VSB_PARTITION, run_id=msg.metadata.run_id,
                      node_id=context.node_id, parties=parties_of(context),
                      key=partition_digest(out[LEFT], out[LEFT_TEST]),
                      index=level_index(t, lv))  # fmt: skip
    kept = Arrays(dict(state))
    kept["model"] = np.vstack([state["model"], np.asarray(model, dtype=np.int64)])
    save(context, kept, {"tree": t, "level": lv, "phase": "part"})
    return msg.reply(
        Content(arrays={PAYLOAD: out}, configs={PAYLOAD: {PARTITION_SIGNATURE: signature}})
    )


def _check_signed(msg: Message, context: Context, payload: Arrays, *, pinned: bool, tree: int,
                  identity: NodeIdentity) -> None:  # fmt: skip
    """Refuse the label holder's key (unless pinned already) and this tree's gradients
    unless the label holder signed them over the parties this party was told."""
    config = msg.content.config if msg.content is not None else {}
    run_id, parties = msg.metadata.run_id, parties_of(context)
    record = context.state.configs.get(KEYS_RECORD, {})
    holder = config.get(HOLDER_NODE)
    if not isinstance(holder, str) or holder not in parties or holder == context.node_id:
        raise UpdateRejected(f"{HOLDER_NODE!r} must name another party of the run, got {holder!r}")
    if pinned and record.get(HOLDER_NODE) != holder:
        raise UpdateRejected("the label holder changed during the run")
    if not pinned:
        check(identity, config.get(KEY_SIGNATURE), purpose=VSB_KEY, run_id=run_id,
              node_id=holder, parties=parties, key=payload[KEY].tobytes())  # fmt: skip
    grads = digest(payload[GRAD].tobytes())
    check(identity, config.get(GRAD_SIGNATURE), purpose=VSB_GRADIENTS, run_id=run_id,
          node_id=holder, parties=parties, key=grads, index=tree)  # fmt: skip
    context.state.configs[KEYS_RECORD] = {**record, HOLDER_NODE: holder}


def splits_held(context: Context) -> int:
    """How many splits this party owns (the server may know the count, not the splits)."""
    state, _ = saved(context)
    return int(state["model"].shape[0]) if "model" in state else 0


def _left_sums(key: PublicKey, grad: list[int], assign: np.ndarray, bins: Bins,
               slots: int) -> list[list[tuple[int, int]]]:  # fmt: skip
    """``[[sum g]], [[sum h]]`` of every (slot, candidate): per-bin products, then prefix
    products over the bins (left of edge ``b`` is bins ``0..b``)."""
    columns = [len(e) + 1 for e in bins.edges]
    acc = [[[[1, 1] for _ in range(n)] for n in columns] for _ in range(slots)]
    for i, j in enumerate(assign.tolist()):
        if j < 0:
            continue
        cg, ch = grad[2 * i], grad[2 * i + 1]
        for column, b in enumerate(bins.train[i].tolist()):
            cell = acc[j][column][b]
            cell[0], cell[1] = key.add(cell[0], cg), key.add(cell[1], ch)
    out: list[list[tuple[int, int]]] = []
    for j in range(slots):
        row: list[tuple[int, int]] = []
        for column, n in enumerate(columns):
            sg, sh = 1, 1
            for b in range(n - 1):
                sg, sh = key.add(sg, acc[j][column][b][0]), key.add(sh, acc[j][column][b][1])
                row.append((sg, sh))
        out.append(row)
    return out


def _content(msg: Message) -> tuple[Config, Arrays]:
    if msg.content is None:
        raise UpdateRejected("a vertical-boosting task needs content")
    return msg.content.config, msg.content.arrays.get(PAYLOAD, Arrays())
