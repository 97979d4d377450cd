"""The server's side of SecAgg+, without I/O: a key epoch (:class:`KeyEpoch`) and one
round within it (:class:`SecAggRound`): what to send each node at each stage, what to
accept from its replies, and how to rebuild the sum.

The workflow (:mod:`consortium.server.workflow.secagg`) sends the records
these classes make and feeds them the replies. The server relays keys and
ciphertexts it cannot read; it holds each node's masked vector only, and
removes the masks with what the survivors reveal for the round: the
self-mask seed b_u of every survivor (rebuilt from ``threshold`` shares) and
the round's pairwise seed between each survivor and each neighbour of it that
dropped. A stage that leaves fewer than ``threshold`` nodes, a secret that
fewer than ``threshold`` holders revealed, or a missing or wrong pairwise
seed fails the round with a reason.
"""

from __future__ import annotations

import hashlib

import numpy as np
from numpy.typing import NDArray

from consortium.core.arrays import Arrays
from consortium.core.errors import ConfigError, RoundFailed
from consortium.core.records import Config
from consortium.privacy.secagg import protocol as p
from consortium.privacy.secagg.crypto import KEY_BYTES, mask
from consortium.privacy.secagg.masking import pairwise_mask
from consortium.privacy.secagg.node import EpochView, hexes, strs
from consortium.privacy.secagg.params import (
    SecAggParams,
    neighbour_count,
    neighbour_graph,
    threshold,
)
from consortium.privacy.secagg.quantize import Decoded, decode
from consortium.privacy.secagg.shamir import SHARE_BYTES, combine

__all__ = ["KeyEpoch", "SecAggRound"]


class KeyEpoch:
    """The keys of a set of participants, set up once and used for many rounds.

    ``members`` are the participants whose advertisement arrived: each round of
    the epoch asks them all for a masked input, each with the next ``counter``.
    """

    def __init__(
        self, run_id: str, epoch: int, participants: list[str], graph_seed: int,
        params: SecAggParams,
    ) -> None:  # fmt: skip
        self.view = EpochView(run_id, epoch, "", sorted(participants), graph_seed, params)
        k = neighbour_count(params, len(participants))
        self.graph = neighbour_graph(self.view.participants, k, graph_seed)
        #: how many holders rebuild a secret: the same for every node, a majority of k + 1
        self.threshold = threshold(params, k + 1)
        self.keys: dict[str, tuple[bytes, bytes, bytes]] = {}  # enc, mask, signature
        #: nodes whose masked input arrived in this epoch: they hold their peers' keys
        self.confirmed: set[str] = set()
        self.counter = 0

    @property
    def members(self) -> list[str]:
        return sorted(self.keys)

    def peers(self, node: str) -> list[str]:
        """The neighbours ``node`` masks with: those whose keys it got."""
        return [v for v in self.graph[node] if v in self.keys]

    def next_counter(self) -> int:
        self.counter += 1
        return self.counter

    def advertise_record(self) -> Config:
        v = self.view
        return {
            p.STAGE: 1,
            p.EPOCH: v.epoch,
            p.PARTICIPANTS: p.texts(v.participants),
            p.GRAPH_SEED: v.graph_seed,
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
        self.keys[node] = (enc, msk, sig)

    def check_alive(self, stage: str, alive: int, rnd: int) -> None:
        """Fail the round when fewer than ``threshold`` nodes are left after ``stage``."""
        if alive < self.threshold:
            raise RoundFailed(
                f"SecAgg+ round {rnd}: only {alive} nodes left after the {stage} stage, "
                f"below the reconstruction threshold {self.threshold}; no sum is released"
            )


class SecAggRound:
    """One round's protocol state on the server, within ``epoch`` (see the module docstring)."""

    def __init__(self, epoch: KeyEpoch, round: int, size: int) -> None:
        self.epoch, self.round, self.size = epoch, round, size
        self.view = epoch.view
        epoch.view.params.check_capacity(len(epoch.members), size)
        self.counter = epoch.next_counter()
        self.asked = epoch.members
        self.masked: dict[str, NDArray[np.uint64]] = {}
        self.boxes: dict[str, dict[str, str]] = {}  # dst -> src -> ciphertext
        self.seed_hashes: dict[str, str] = {}
        self.pair_hashes: dict[str, dict[str, str]] = {}  # node -> peer -> commitment
        self.macs: dict[str, dict[str, str]] = {}  # node -> peer -> MAC of its model statement
        #: each holder's revealed b-shares by owner, and pairwise seeds by dropped peer
        self.revealed: dict[str, dict[str, bytes]] = {}
        self.pair_seeds: dict[str, dict[str, bytes]] = {}

    @property
    def threshold(self) -> int:
        return self.epoch.threshold

    # -- masked input (train) ----------------------------------------------------------------
    def masked_input_record(self, node: str) -> Config:
        e = self.epoch
        record: Config = {p.STAGE: 3, p.EPOCH: e.view.epoch, p.COUNTER: self.counter}
        if node not in e.confirmed:  # it may not have its peers' keys yet
            peers = e.peers(node)
            record.update(
                {
                    p.PEERS: p.texts(peers),
                    p.PEER_ENC_KEYS: p.texts(e.keys[v][0].hex() for v in peers),
                    p.PEER_MASK_KEYS: p.texts(e.keys[v][1].hex() for v in peers),
                    p.PEER_SIGNATURES: p.texts(e.keys[v][2].hex() for v in peers),
                }
            )
        return record

    def take_masked(self, node: str, arrays: Arrays | None, record: Config) -> None:
        value = arrays.get(p.MASKED) if arrays is not None else None
        bits = self.view.params.modulus_bits
        if (
            value is None
            or value.dtype != np.uint64
            or value.shape != (self.size,)
            or (bits < 64 and bool(np.any(value >> np.uint64(bits))))
        ):
            raise ConfigError(f"node {node!r} sent no valid masked vector of {self.size} entries")
        peers = self.epoch.peers(node)
        destinations, boxes = strs(record, p.DESTINATIONS), strs(record, p.CIPHERTEXTS)
        pair_hashes, macs = strs(record, p.PAIR_HASHES), strs(record, p.MODEL_MACS)
        if destinations != peers or not len(boxes) == len(pair_hashes) == len(macs) == len(peers):
            raise ConfigError(f"node {node!r} sent shares or commitments for other neighbours")
        seed_hash = record.get(p.SEED_HASH)
        if not isinstance(seed_hash, str) or len(seed_hash) != 64:
            raise ConfigError(f"node {node!r} sent no commitment to its self-mask seed")
        for dst, box in zip(destinations, boxes, strict=True):
            self.boxes.setdefault(dst, {})[node] = box
        self.seed_hashes[node] = seed_hash
        self.pair_hashes[node] = dict(zip(peers, pair_hashes, strict=True))
        self.macs[node] = dict(zip(peers, macs, strict=True))
        self.masked[node] = value
        self.epoch.confirmed.add(node)

    # -- unmask ----------------------------------------------------------------------------
    @property
    def dropped(self) -> list[str]:
        return sorted(set(self.asked) - set(self.masked))

    def unmask_record(self, node: str) -> Config:
        sources = [v for v in self.epoch.peers(node) if v in self.masked]
        return {
            p.STAGE: 4,
            p.EPOCH: self.view.epoch,
            p.COUNTER: self.counter,
            p.SURVIVORS: p.texts(sorted(self.masked)),
            p.DROPPED: p.texts(self.dropped),
            p.SOURCES: p.texts(sources),
            p.CIPHERTEXTS: p.texts(self.boxes[node][v] for v in sources),
            p.PEER_MODEL_MACS: p.texts(self.macs[v][node] for v in sources),
        }

    def take_unmask(self, node: str, record: Config) -> None:
        """Keep what ``node`` revealed: b-shares only of survivors it holds shares of (its
        own and its neighbours'), pairwise seeds only with its neighbours that dropped."""
        seeds = _shares(node, record, p.SEED_SHARES_OF, p.SEED_SHARES, SHARE_BYTES)
        pairs = _shares(node, record, p.PAIR_SEEDS_OF, p.PAIR_SEEDS, KEY_BYTES)
        holds = {node, *self.epoch.peers(node)}
        if not set(seeds) <= holds & set(self.masked) or not set(pairs) <= holds - set(self.masked):
            raise ConfigError(f"node {node!r} revealed shares it was not asked for")
        self.revealed[node] = seeds
        self.pair_seeds[node] = pairs

    def total(self) -> Decoded:
        """The unmasked sum of the survivors' vectors, decoded."""
        bits, size = self.view.params.modulus_bits, self.size
        survivors, dropped = sorted(self.masked), set(self.dropped)
        seeds = self._seeds(survivors)
        total = np.zeros(size, dtype=np.uint64)
        for node in survivors:
            if hashlib.sha256(seeds[node]).hexdigest() != self.seed_hashes[node]:
                raise RoundFailed(
                    f"the revealed shares of node {node}'s self-mask seed are inconsistent "
                    "(a holder sent a wrong share); no sum is released"
                )
            total += self.masked[node]
            total -= mask(seeds[node], size, bits)
        for w in survivors:
            for d in (v for v in self.epoch.peers(w) if v in dropped):
                seed = self.pair_seeds.get(w, {}).get(d)
                if seed is None:
                    raise RoundFailed(
                        f"SecAgg+ round {self.round}: node {w} did not reveal its pairwise seed "
                        f"with node {d}, which dropped; its mask cannot be removed and no sum "
                        "is released"
                    )
                if hashlib.sha256(seed).hexdigest() != self.pair_hashes[w][d]:
                    raise RoundFailed(
                        f"node {w} revealed a pairwise seed with node {d} that is not the one "
                        "it committed to; no sum is released"
                    )
                total -= pairwise_mask(seed, self.view.point(w), self.view.point(d), size, bits)
        if bits < 64:
            total &= np.uint64((1 << bits) - 1)
        return decode(total, self.view.params)

    def _seeds(self, owners: list[str]) -> dict[str, bytes]:
        collected: dict[str, dict[int, bytes]] = {o: {} for o in owners}
        for holder, revealed in self.revealed.items():
            for owner, share in revealed.items():
                if owner in collected:
                    collected[owner][self.view.point(holder)] = share
        out = {}
        for owner, shares in collected.items():
            if len(shares) < self.threshold:
                raise RoundFailed(
                    f"SecAgg+ round {self.round}: only {len(shares)} shares of node "
                    f"{owner}'s self-mask seed came back, below the threshold "
                    f"{self.threshold}; no sum is released"
                )
            try:
                out[owner] = combine(shares, self.threshold)
            except ValueError as exc:
                raise RoundFailed(
                    f"node {owner}'s self-mask seed cannot be rebuilt: {exc}"
                ) from exc
        return out


def _shares(node: str, record: Config, of_key: str, values_key: str, size: int) -> dict[str, bytes]:
    """The shares (or seeds) an unmask reply carries, by the node each belongs to."""
    owners, values = strs(record, of_key), hexes(record, values_key)
    if len(owners) != len(values) or len(set(owners)) != len(owners):
        raise ConfigError(f"node {node!r} sent a malformed unmask reply")
    if any(len(v) != size for v in values):
        raise ConfigError(f"node {node!r} sent shares or seeds of the wrong length")
    return dict(zip(owners, values, strict=True))
