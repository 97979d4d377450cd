"""Vertical LR and SecureBoost refuse protocol steps the server changed on the way.

Two steps of the vertical protocols are signed per iteration or level, beyond the
keys of ``test_vertical_signed_keys.py``:

* vertical LR: each passive party signs the masked gradient ciphertexts it sends
  the label holder to decrypt (``vlr.gradients``, index: the iteration). Unsigned,
  the decrypt step is a decryption oracle: a server passes ``[[d_i]]``
  (re-randomised) for a passive party's gradient and reads residuals, hence labels;
* SecureBoost: the label holder signs each level's row-to-node assignment
  (``vsb.assignments``, index ``tree * 64 + level``), composed from partitions their
  owners signed (``vsb.partition``, same index). Unsigned, a server moves rows of its
  choosing into a node and learns from the partition on which side of the split
  they fall.

A hostile server (a Grid wrapper around the simulation) changes them; the receiving
party refuses, naming the party whose signature is missing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from consortium.core.errors import RoundFailed, SecurityError
from consortium.core.message import Message
from consortium.vertical import boost_protocol as b
from consortium.vertical import logistic_protocol as p
from consortium.vertical.logistic_paillier import PublicKey
from consortium.vertical.signed_keys import LEVEL_STRIDE, level_index

from .test_vertical_signed_keys import _lr, _sb, changed

pytest.importorskip("phe")
pytest.importorskip("nacl")


def _task(message: Message, kind: str, dst: str, round_: int) -> bool:
    meta = message.metadata
    return meta.kind == kind and meta.dst == dst and meta.round == round_


@pytest.mark.parametrize("how", ["residuals", "replayed", "unsigned"])
def test_the_label_holder_decrypts_only_what_each_passive_party_signed(how: str) -> None:
    """The decryption oracle: cardiology's slice of the decrypt task replaced by the
    label holder's own residuals re-randomised (what would reveal them), by iteration
    1's gradients and signatures replayed at iteration 2, or sent without signatures."""
    kept: dict[str, Any] = {}

    def swap(message: Message) -> Message:
        content = message.content
        assert content is not None
        if _task(message, p.KIND_GRADIENT, "cardiology", 1):
            kept["key"] = PublicKey.from_wire(content.arrays[p.PAYLOAD][p.KEY])
            kept["residuals"] = content.arrays[p.PAYLOAD][p.RESIDUALS]
        if message.metadata.kind != p.KIND_DECRYPT:
            return message
        stacked = content.arrays[p.PAYLOAD][p.GRADIENT]
        if how == "residuals":
            key: PublicKey = kept["key"]
            d0 = int.from_bytes(kept["residuals"][0].tobytes(), "big")
            fresh = key.add_fresh(d0, 0).to_bytes(key.ciphertext_bytes, "big")
            forged = stacked.copy()
            forged[0] = np.frombuffer(fresh, np.uint8)  # cardiology's first column
            return changed(message, {p.GRADIENT: forged}, {})
        if how == "unsigned":
            return changed(message, {}, {p.GRADIENT_SIGNATURES: []})
        if message.metadata.round == 1:
            kept["stacked"], kept["signed"] = stacked, content.config[p.GRADIENT_SIGNATURES]
            return message
        return changed(message, {p.GRADIENT: kept["stacked"]},
                       {p.GRADIENT_SIGNATURES: kept["signed"]})  # fmt: skip

    match = {
        "residuals": r"party 'cardiology''s masked gradient ciphertexts \(iteration 1\): not "
        r"signed by 'cardiology'",
        "replayed": r"party 'cardiology''s masked gradient ciphertexts \(iteration 2\): not "
        r"signed by 'cardiology'",
        "unsigned": r"'vlr-gradient-signatures' must hold a signature of every passive party",
    }[how]
    with pytest.raises(RoundFailed, match=f"party hospital failed.*{match}"):
        _lr(swap)


def test_the_label_holder_refuses_a_decrypt_task_that_leaves_a_passive_party_out() -> None:
    """Counts for one passive party only: the other's signature cannot cover the slice."""

    def drop(message: Message) -> Message:
        if message.metadata.kind != p.KIND_DECRYPT:
            return message
        assert message.content is not None
        counts = message.content.config[p.COUNTS]
        assert isinstance(counts, list)
        return changed(message, {}, {p.COUNTS: [sum(counts)]})  # type: ignore[arg-type]

    with pytest.raises(RoundFailed, match="must count every passive party of the run"):
        _lr(drop)


def _histogram(message: Message, dst: str, tree: int, level: int) -> bool:
    content = message.content
    return (
        _task(message, b.KIND_HISTOGRAM, dst, tree)
        and content is not None
        and content.config.get(b.LEVEL) == level
    )


@pytest.mark.parametrize("how", ["train-row", "test-row", "replayed"])
def test_a_passive_party_refuses_an_assignment_the_label_holder_did_not_sign(how: str) -> None:
    """A row moved into another node of level 1 (training or held-out: the partition
    would tell on which side of that node's split it falls), or tree 1's root
    assignment and signature replayed for tree 2 (the index binds tree and level)."""
    kept: dict[str, Any] = {}

    def move(message: Message) -> Message:
        content = message.content
        if content is None or message.metadata.dst != "clinical-lab":
            return message
        if how == "replayed":
            if _histogram(message, "clinical-lab", 1, 0):
                kept["signature"] = content.config[b.ASSIGN_SIGNATURE]
            if _histogram(message, "clinical-lab", 2, 0):
                return changed(message, {}, {b.ASSIGN_SIGNATURE: kept["signature"]})
            return message
        if not _histogram(message, "clinical-lab", 1, 1):
            return message
        name = b.ASSIGN if how == "train-row" else b.ASSIGN_TEST
        rows = content.arrays[b.PAYLOAD][name].copy()
        rows[0] = 1 - rows[0] if rows[0] >= 0 else 0  # into the other node of level 1
        return changed(message, {name: rows}, {})

    where = "tree 2, level 0" if how == "replayed" else "tree 1, level 1"
    with pytest.raises(RoundFailed, match=f"party clinical-lab failed.*party 'hospital''s row "
                       f"assignment \\({where}\\): not signed by 'hospital'"):  # fmt: skip
        _sb(move)


def test_the_label_holder_refuses_a_partition_its_owner_did_not_sign() -> None:
    """A row a passive party sent left moved to the right child on the way to the label
    holder (so the next level's assignment, which it signs, holds a row the server put
    there): the label holder refuses the partition, naming its owner."""
    moved: list[str] = []

    def flip(message: Message) -> Message:
        content = message.content
        if content is None or message.metadata.kind not in (b.KIND_ASSIGN, b.KIND_SPLIT):
            return message
        left = content.arrays[b.PAYLOAD].get(b.LEFT)
        if moved or left is None or not left.any():
            return message
        row, column = np.argwhere(left)[0]
        forged = left.copy()
        forged[row, column] = 0  # still within its node: the right child
        moved.append(message.metadata.kind)
        return changed(message, {b.LEFT: forged}, {})

    owner = r"party '(cardiology|clinical-lab)''s partition \(tree \d, level \d\)"
    with pytest.raises(RoundFailed, match=f"party hospital failed.*{owner}: not signed by"):
        _sb(flip)
    assert moved, "no passive party split a node: nothing was tampered with"


def test_the_level_index_is_one_per_tree_and_level() -> None:
    pairs = [(t, lv) for t in range(0, 40) for lv in range(b.MAX_DEPTH + 1)]
    indices = [level_index(t, lv) for t, lv in pairs]
    assert len(set(indices)) == len(pairs)
    assert [divmod(i, LEVEL_STRIDE) for i in indices] == pairs
    for tree, level in ((-1, 0), (1, -1), (1, LEVEL_STRIDE)):
        with pytest.raises(SecurityError, match="no assignment statement"):
            level_index(tree, level)
