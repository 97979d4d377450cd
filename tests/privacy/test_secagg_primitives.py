"""SecAgg+ building blocks: Shamir sharing, the mask PRG, share encryption, signatures,
quantisation and its overflow refusal, parameters and the neighbour graph."""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

import numpy as np
import pytest
import secagg_harness

from consortium.core.arrays import Arrays
from consortium.core.errors import ConfigError, SecurityError
from consortium.privacy.secagg import Ed25519Keyring, SecAggParams, crypto, model_digest, shamir
from consortium.privacy.secagg.params import neighbour_count, neighbour_graph, threshold
from consortium.privacy.secagg.quantize import HEADER, decode, encode

SECAGG_SRC = Path(__file__).resolve().parents[2] / "src" / "consortium" / "privacy" / "secagg"


# -- Shamir ------------------------------------------------------------------------------
def test_any_threshold_shares_rebuild_the_secret_and_fewer_do_not() -> None:
    secret = os.urandom(32)
    shares = shamir.split(secret, [1, 2, 3, 4, 5, 9], threshold=4)
    for subset in ([1, 2, 3, 4], [2, 4, 5, 9], [1, 3, 9, 5, 2]):
        assert shamir.combine({x: shares[x] for x in subset}, 4) == secret
    with pytest.raises(ValueError, match="3 shares cannot rebuild"):
        shamir.combine({x: shares[x] for x in (1, 2, 3)}, 4)
    # a share replaced by another field element rebuilds a random one: outside 32 bytes but
    # for a 2^-265 chance
    bad = dict(shares)
    bad[2] = secrets.randbelow(shamir.PRIME).to_bytes(shamir.SHARE_BYTES, "big")
    with pytest.raises(ValueError, match="inconsistent shares"):
        shamir.combine({x: bad[x] for x in (1, 2, 3, 4)}, 4)


def test_shares_below_the_threshold_are_uniform() -> None:
    """The same share point of two different secrets, over many sharings, looks alike."""
    a = [int.from_bytes(shamir.split(bytes(32), [1, 2], 2)[1], "big") for _ in range(300)]
    b = [int.from_bytes(shamir.split(b"\xff" * 32, [1, 2], 2)[1], "big") for _ in range(300)]
    # top bits of field elements are balanced whatever the secret
    for values in (a, b):
        high = np.mean([v >> 520 for v in values])
        assert 0.35 < high < 0.65


@pytest.mark.parametrize(
    ("secret", "xs", "t", "match"),
    [
        (bytes(31), [1, 2], 2, "32 bytes"),
        (bytes(32), [1, 1], 2, "distinct"),
        (bytes(32), [0, 1], 2, "within"),
        (bytes(32), [1, 2], 3, "threshold"),
    ],
)
def test_bad_sharings_are_refused(secret: bytes, xs: list[int], t: int, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        shamir.split(secret, xs, t)


# -- mask PRG ------------------------------------------------------------------------------
def test_masks_use_the_whole_seed() -> None:
    seed = bytes(range(32))
    swapped = seed[4:8] + seed[:4] + seed[8:]  # same XOR-fold of 4-byte words
    one_bit = seed[:-1] + bytes([seed[-1] ^ 1])
    base = crypto.mask(seed, 1000, 62)
    assert np.array_equal(base, crypto.mask(seed, 1000, 62))  # deterministic
    assert not np.array_equal(base, crypto.mask(swapped, 1000, 62))
    assert np.count_nonzero(base == crypto.mask(one_bit, 1000, 62)) < 5


@pytest.mark.parametrize("bits", [20, 40, 62, 64])
def test_masks_are_uniform_mod_the_modulus(bits: int) -> None:
    values = crypto.mask(os.urandom(32), 100_000, bits)
    assert values.dtype == np.uint64
    if bits < 64:
        assert int(values.max()) < 2**bits
    assert secagg_harness.chi2_16(values, bits) < secagg_harness.CHI2_UNIFORM_16


def test_no_non_cryptographic_generator_in_the_crypto_paths() -> None:
    """Masks, shares and keys never come from numpy's or Python's PRNGs (cf. flwr#7522)."""
    for name in ("crypto.py", "shamir.py", "masking.py", "node.py", "server_round.py"):
        text = (SECAGG_SRC / name).read_text()
        assert not re.search(r"np\.random|import random|RandomState|default_rng", text), name


# -- key agreement, share encryption, signatures --------------------------------------------
def test_agreement_is_symmetric_and_bound_to_its_purpose() -> None:
    a, b = crypto.KeyPair(), crypto.KeyPair()
    assert crypto.agree(a.private, b.public, b"x") == crypto.agree(b.private, a.public, b"x")
    assert crypto.agree(a.private, b.public, b"x") != crypto.agree(a.private, b.public, b"y")
    assert crypto.public_of(a.private) == a.public


def test_a_share_decrypts_only_for_its_sender_receiver_and_round() -> None:
    key = os.urandom(32)
    sealed = crypto.encrypt_share(key, b"share", b"run|1|a|b")
    assert crypto.decrypt_share(key, sealed, b"run|1|a|b") == b"share"
    for associated in (b"run|1|a|c", b"run|2|a|b"):
        with pytest.raises(SecurityError, match="does not authenticate"):
            crypto.decrypt_share(key, sealed, associated)
    flipped = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(SecurityError):
        crypto.decrypt_share(key, flipped, b"run|1|a|b")


def test_signatures_verify_only_for_their_node_and_message() -> None:
    keys = Ed25519Keyring.generate(["a", "b"])
    peers = Ed25519Keyring(public=keys.public_keys())  # what a node holds: public keys only
    sig = keys.sign("a", b"keys")
    assert peers.verify("a", b"keys", sig)
    assert not peers.verify("b", b"keys", sig)
    assert not peers.verify("a", b"other keys", sig)
    assert not peers.verify("c", b"keys", sig)
    with pytest.raises(SecurityError, match="no signing key"):
        peers.sign("a", b"keys")


def test_model_digest_sees_every_byte_name_and_shape() -> None:
    base = Arrays({"w": np.arange(6.0).reshape(2, 3)})
    digest = model_digest(base)
    assert model_digest(Arrays({"w": np.arange(6.0).reshape(2, 3)})) == digest
    changed = np.arange(6.0).reshape(2, 3)
    changed[1, 2] = np.nextafter(changed[1, 2], 10)
    for other in (
        Arrays({"w": changed}),
        Arrays({"v": np.arange(6.0).reshape(2, 3)}),
        Arrays({"w": np.arange(6.0).reshape(3, 2)}),
        Arrays({"w": np.arange(6.0, dtype=np.float32).reshape(2, 3)}),
    ):
        assert model_digest(other) != digest


# -- quantisation -------------------------------------------------------------------------
def test_quantised_sums_are_within_one_step_of_the_weighted_mean() -> None:
    params = SecAggParams(clip=2.0, quantization_bits=16, modulus_bits=32, max_weight=50)
    rng = np.random.default_rng(0)
    updates = [rng.uniform(-2, 2, 500) for _ in range(7)]
    counts = [5, 50, 17, 1, 33, 8, 40]
    params.check_capacity(7, 502)
    total = np.zeros(502, dtype=np.uint64)
    for update, count in zip(updates, counts, strict=True):
        total += encode(update, count, params, rng)
    decoded = decode(total, params)
    assert decoded.num_examples == sum(counts)
    assert decoded.clipped == 0
    exact = sum(u * c for u, c in zip(updates, counts, strict=True))
    error = np.abs(decoded.weighted_sum - exact).max()
    assert 0 < error <= sum(counts) * params.step
    assert np.abs(decoded.mean_update() - exact / sum(counts)).max() <= params.step


def test_a_sum_at_the_capacity_limit_decodes_exactly() -> None:
    """Every node at the top of the range, with the largest count, and the modulus is
    nearly full: the integer path loses nothing."""
    params = SecAggParams(clip=1.0, quantization_bits=20, modulus_bits=40, max_weight=2**18)
    nodes = 3  # 3 · 2^18 · 2^20 < 2^40
    params.check_capacity(nodes, 10)
    vectors = [encode(np.full(8, s), params.max_weight, params, np.random.default_rng(0))
               for s in (1.0, 1.0, -1.0)]  # fmt: skip
    total = sum(vectors, np.zeros(10, dtype=np.uint64))
    decoded = decode(total, params)
    assert decoded.num_examples == nodes * params.max_weight
    assert np.array_equal(decoded.weighted_sum, np.full(8, float(params.max_weight)))


@pytest.mark.parametrize("bits", [40, 64])
def test_noise_that_takes_the_sum_below_zero_decodes_as_negative(bits: int) -> None:
    params = SecAggParams(clip=1.0, quantization_bits=20, modulus_bits=bits, noise_stddev=3.0)
    vector = encode(np.array([-1.0, 1.0]), 2, params, np.random.default_rng(0))  # Q = 0, q
    vector[HEADER:] += np.array([-5, 5], dtype=np.int64).astype(np.uint64)  # noise, mod 2^64
    if bits < 64:
        vector &= np.uint64(params.modulus - 1)
    decoded = decode(vector, params)
    assert np.array_equal(decoded.weighted_sum, [-2.0 - 5 * params.step, 2.0 + 5 * params.step])


def test_out_of_range_values_are_clipped_and_counted() -> None:
    params = SecAggParams(clip=1.0, quantization_bits=16, modulus_bits=32, max_weight=10)
    vector = encode(np.array([5.0, -5.0, 0.5, 3.0]), 10, params, np.random.default_rng(0))
    assert int(vector[1]) == 3
    decoded = decode(vector, params)
    assert decoded.clipped == 3
    assert np.allclose(decoded.mean_update(), [1.0, -1.0, 0.5, 1.0], atol=params.step)


def test_bad_weights_and_updates_are_refused() -> None:
    params = SecAggParams(max_weight=10)
    rng = np.random.default_rng(0)
    with pytest.raises(ConfigError, match="max_weight=10"):
        encode(np.zeros(3), 11, params, rng)
    with pytest.raises(ConfigError, match="not finite"):
        encode(np.array([0.0, np.nan]), 1, params, rng)


def test_configurations_that_could_overflow_the_modulus_are_refused() -> None:
    params = SecAggParams(quantization_bits=16, modulus_bits=24, max_weight=16)
    params.check_capacity(15, 100)  # 15 · 16 · 2^16 < 2^24
    with pytest.raises(ConfigError, match="overflow the modulus 2\\^24"):
        params.check_capacity(16, 100)  # 16 · 16 · 2^16 = 2^24
    with pytest.raises(ConfigError, match="overflow"):  # the clipped count of a big model
        SecAggParams(quantization_bits=4, modulus_bits=16, max_weight=1).check_capacity(2, 40_000)
    with pytest.raises(ConfigError, match="overflow"):  # noise needs room too
        SecAggParams(
            quantization_bits=16, modulus_bits=24, max_weight=16, noise_stddev=1e5
        ).check_capacity(15, 100)
    with pytest.raises(ConfigError, match="below modulus_bits"):
        SecAggParams(quantization_bits=32, modulus_bits=32)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"neighbours": 3}, "neighbours"),
        ({"threshold_fraction": 0.4}, "threshold_fraction"),
        ({"clip": float("inf")}, "clip"),
        ({"modulus_bits": 65}, "modulus_bits"),
        ({"stage_timeout": float("inf")}, "stage_timeout"),
        ({"train_timeout": 0}, "train_timeout"),
        ({"max_weight": 0}, "max_weight"),
        ({"noise_stddev": -1.0}, "noise_stddev"),
    ],
)
def test_bad_parameters_name_their_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        SecAggParams(**kwargs)  # type: ignore[arg-type]


def test_parameters_travel_as_config() -> None:
    params = SecAggParams(neighbours=4, clip=3.0)
    assert SecAggParams.from_config(params.to_config()) == params
    with pytest.raises(ConfigError, match="unknown SecAgg\\+ parameters"):
        SecAggParams.from_config({"clip": 1.0, "bogus": 1})


# -- the neighbour graph ---------------------------------------------------------------------
@pytest.mark.parametrize("n", [3, 10, 50, 200])
def test_the_graph_is_k_regular_symmetric_and_seeded(n: int) -> None:
    nodes = [f"n{i}" for i in range(n)]
    k = neighbour_count(SecAggParams(), n)
    assert k == min(n - 1, 6 * int(np.ceil(np.log2(n))))
    graph = neighbour_graph(nodes, k, seed=11)
    assert all(len(graph[u]) == k and u not in graph[u] for u in nodes)
    assert all(u in graph[v] for u in nodes for v in graph[u])
    assert neighbour_graph(list(reversed(nodes)), k, seed=11) == graph
    if k < n - 1:
        assert neighbour_graph(nodes, k, seed=12) != graph
    t = threshold(SecAggParams(), k + 1)
    assert (k + 1) / 2 < t <= k + 1
