"""The server's side of one SecAgg+ round, without I/O: what to send each node at each
stage, what to accept from its replies, and how to rebuild the sum.

The workflow (:mod:`consortium.server.workflow.secagg`) sends the records
this class makes and feeds it the replies. The server relays keys and
ciphertexts it cannot read; it holds each node's masked vector only, and
removes the masks with the secrets the survivors reveal: the self-mask seed
of every survivor and the mask key of every node that dropped after sharing
its keys. A stage that leaves fewer than ``threshold`` nodes, or a secret that
fewer than ``threshold`` holders revealed, fails the round with a reason.
"""

from __future__ import annotations

import hashlib

import numpy as np
from numpy.typing import NDArray

from consortium.core.arrays import Arrays
from consortium.core.errors import ConfigError, RoundFailed
from consortium.core.records import Config
from consortium.privacy.secagg import protocol as p
from consortium.privacy.secagg.crypto import KEY_BYTES, mask, public_of
from consortium.privacy.secagg.masking import pairwise_mask
from consortium.privacy.secagg.node import RoundView, hexes, strs
from consortium.privacy.secagg.params import (
    SecAggParams,
    neighbour_count,
    neighbour_graph,
    threshold,
)
from consortium.privacy.secagg.quantize import Decoded, decode
from consortium.privacy.secagg.shamir import SHARE_BYTES, combine

__all__ = ["SecAggRound"]


class SecAggRound:
    """One round's protocol state on the server (see the module docstring)."""

    def __init__(
        self,
        run_id: str,
        round: int,
        participants: list[str],
        graph_seed: int,
        params: SecAggParams,
        model_hash: str,
        size: int,
    ) -> None:
        self.view = RoundView(
            run_id, round, "", sorted(participants), graph_seed, params, model_hash
        )
        params.check_capacity(len(participants), size)
        self.size = size
        k = neighbour_count(params, len(participants))
        self.graph = neighbour_graph(self.view.participants, k, graph_seed)
        #: how many holders rebuild a secret: the same for every node, a majority of k + 1
        self.threshold = threshold(params, k + 1)
        self.keys: dict[str, tuple[bytes, bytes, str, bytes]] = {}  # U1: enc, mask, hash, sig
        self.boxes: dict[str, dict[str, str]] = {}  # dst -> src -> ciphertext
        self.shared: set[str] = set()  # U2: the nodes whose shares the server holds
        self.seed_hashes: dict[str, str] = {}  # U2's commitments to their self-mask seeds
        self.sources: dict[str, list[str]] = {}  # whose shares each masked-input task carried
        self.masked: dict[str, NDArray[np.uint64]] = {}  # U3
        #: U4: each holder's revealed shares, (seed shares, key shares) by owner
        self.revealed: dict[str, tuple[dict[str, bytes], dict[str, bytes]]] = {}

    # -- stage 1 ---------------------------------------------------------------------------
    def advertise_record(self) -> Config:
        v = self.view
        return {
            p.STAGE: 1,
            p.PARTICIPANTS: p.texts(v.participants),
            p.GRAPH_SEED: v.graph_seed,
            p.MODEL_HASH: v.model_hash,
            **{p.PARAMS_PREFIX + k: x for k, x in v.params_config().items()},
        }

    def take_advertisement(self, node: str, record: Config) -> None:
        fields = (p.ENC_KEY, p.MASK_KEY, p.SIGNATURE)
        try:
            enc, msk, sig = (bytes.fromhex(str(record[k])) for k in fields)
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"node {node!r} sent a malformed advertisement: {exc}") from exc
        if len(enc) != KEY_BYTES or len(msk) != KEY_BYTES:
            raise ConfigError(f"node {node!r} advertised keys that are not X25519 public keys")
        self.keys[node] = (enc, msk, str(record.get(p.MODEL_HASH, "")), sig)

    # -- stage 2 ---------------------------------------------------------------------------
    def share_keys_record(self, node: str) -> Config:
        peers = [v for v in self.graph[node] if v in self.keys]
        return {
            p.STAGE: 2,
            p.PEERS: p.texts(peers),
            p.PEER_ENC_KEYS: p.texts(self.keys[v][0].hex() for v in peers),
            p.PEER_MASK_KEYS: p.texts(self.keys[v][1].hex() for v in peers),
            p.PEER_MODEL_HASHES: p.texts(self.keys[v][2] for v in peers),
            p.PEER_SIGNATURES: p.texts(self.keys[v][3].hex() for v in peers),
        }

    def take_shares(self, node: str, record: Config) -> None:
        destinations, boxes = strs(record, p.DESTINATIONS), strs(record, p.CIPHERTEXTS)
        if len(destinations) != len(boxes) or not set(destinations) <= set(self.graph[node]):
            raise ConfigError(f"node {node!r} sent shares for nodes that are not its neighbours")
        seed_hash = record.get(p.SEED_HASH)
        if not isinstance(seed_hash, str) or len(seed_hash) != 64:
            raise ConfigError(f"node {node!r} sent no commitment to its self-mask seed")
        for dst, box in zip(destinations, boxes, strict=True):
            self.boxes.setdefault(dst, {})[node] = box
        self.seed_hashes[node] = seed_hash
        self.shared.add(node)

    # -- stage 3 ---------------------------------------------------------------------------
    def masked_input_record(self, node: str) -> Config:
        sent = {src: box for src, box in self.boxes.get(node, {}).items() if src in self.shared}
        self.sources[node] = sorted(sent)
        return {
            p.STAGE: 3,
            p.SOURCES: p.texts(self.sources[node]),
            p.CIPHERTEXTS: p.texts(sent[s] for s in self.sources[node]),
        }

    def take_masked(self, node: str, arrays: Arrays | None) -> None:
        value = arrays.get(p.MASKED) if arrays is not None else None
        if (
            value is None
            or value.dtype != np.uint64
            or value.shape != (self.size,)
            or (
                self.view.params.modulus_bits < 64
                and bool(np.any(value >> np.uint64(self.view.params.modulus_bits)))
            )
        ):
            raise ConfigError(f"node {node!r} sent no valid masked vector of {self.size} entries")
        self.masked[node] = value

    # -- stage 4 ---------------------------------------------------------------------------
    def unmask_record(self) -> Config:
        survivors = sorted(self.masked)
        return {
            p.STAGE: 4,
            p.SURVIVORS: p.texts(survivors),
            p.DROPPED: p.texts(sorted(self.shared - set(survivors))),
        }

    def take_unmask(self, node: str, record: Config) -> None:
        """Keep the shares ``node`` revealed: only shares of secrets it holds (its own and its
        neighbours'), of the right kind (seeds of survivors, keys of dropouts)."""
        seeds = _shares(node, record, p.SEED_SHARES_OF, p.SEED_SHARES)
        keys = _shares(node, record, p.KEY_SHARES_OF, p.KEY_SHARES)
        holds = {node, *self.graph[node]}
        if not set(seeds) <= holds & set(self.masked) or not set(keys) <= holds - set(self.masked):
            raise ConfigError(f"node {node!r} revealed shares it was not asked for")
        self.revealed[node] = (seeds, keys)

    def check_alive(self, stage: str, alive: int) -> None:
        """Fail the round when fewer than ``threshold`` nodes are left after ``stage``."""
        if alive < self.threshold:
            raise RoundFailed(
                f"SecAgg+ round {self.view.round}: only {alive} nodes left after the {stage} "
                f"stage, below the reconstruction threshold {self.threshold}; no sum is released"
            )

    def total(self) -> Decoded:
        """The unmasked sum of the survivors' vectors, decoded."""
        bits, size = self.view.params.modulus_bits, self.size
        survivors, dropped = sorted(self.masked), sorted(self.shared - set(self.masked))
        seeds = self._secrets(0, survivors, "self-mask seed")
        keys = self._secrets(1, dropped, "mask key")
        total = np.zeros(size, dtype=np.uint64)
        for node in survivors:
            if hashlib.sha256(seeds[node]).hexdigest() != self.seed_hashes[node]:
                raise RoundFailed(
                    f"the revealed shares of node {node}'s self-mask seed are inconsistent "
                    "(a holder sent a wrong share); no sum is released"
                )
            total += self.masked[node]
            total -= mask(seeds[node], size, bits)
        for d in dropped:
            if public_of(keys[d]) != self.keys[d][1]:
                raise RoundFailed(
                    f"the revealed shares of node {d}'s mask key are inconsistent (a holder "
                    "sent a wrong share); no sum is released"
                )
            for w in survivors:
                if d in self.sources[w]:  # w added its pairwise mask with d: take it off
                    point_d, point_w = self.view.point(d), self.view.point(w)
                    total += pairwise_mask(keys[d], self.keys[w][1], point_d, point_w, size, bits)
        if bits < 64:
            total &= np.uint64((1 << bits) - 1)
        return decode(total, self.view.params)

    def _secrets(self, kind: int, owners: list[str], what: str) -> dict[str, bytes]:
        collected: dict[str, dict[int, bytes]] = {o: {} for o in owners}
        for holder, revealed in self.revealed.items():
            for owner, share in revealed[kind].items():
                if owner in collected:
                    collected[owner][self.view.point(holder)] = share
        out = {}
        for owner, shares in collected.items():
            if len(shares) < self.threshold:
                raise RoundFailed(
                    f"SecAgg+ round {self.view.round}: only {len(shares)} shares of node "
                    f"{owner}'s {what} came back, below the threshold {self.threshold}; "
                    "no sum is released"
                )
            try:
                out[owner] = combine(shares, self.threshold)
            except ValueError as exc:
                raise RoundFailed(f"node {owner}'s {what} cannot be rebuilt: {exc}") from exc
        return out


def _shares(node: str, record: Config, of_key: str, shares_key: str) -> dict[str, bytes]:
    """The shares an unmask reply carries, by the node whose secret each is part of."""
    owners, shares = strs(record, of_key), hexes(record, shares_key)
    if len(owners) != len(shares) or len(set(owners)) != len(owners):
        raise ConfigError(f"node {node!r} sent a malformed unmask reply")
    if any(len(share) != SHARE_BYTES for share in shares):
        raise ConfigError(f"node {node!r} sent shares of the wrong length")
    return dict(zip(owners, shares, strict=True))
