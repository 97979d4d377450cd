"""Vertical logistic regression's wire vocabulary and settings: kinds, records, checks.

One home for the names both sides use, so the server function
(:mod:`consortium.vertical.logistic_server`) and the node handlers
(:mod:`consortium.vertical.logistic_node`) cannot drift apart. The protocol
is described in ``docs/vertical.md`` ("Vertical logistic regression").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from consortium.core.errors import UpdateRejected
from consortium.core.records import Config
from consortium.vertical.settings import SettingsReader

# -- message kinds (the handlers register_vertical_lr adds) -------------------------------
#: every party: load and align its rows, split train/test; the label holder draws its key
KIND_SETUP: Final = "vlr.setup"
#: a passive party: apply last iteration's (unmasked) gradient, send its partial logits
KIND_FORWARD: Final = "vlr.forward"
#: the label holder: logits, loss and accuracy, its own step, the encrypted residuals
KIND_RESIDUAL: Final = "vlr.residual"
#: a passive party: the masked encrypted gradient of its weights
KIND_GRADIENT: Final = "vlr.gradient"
#: the label holder: decrypt the passive parties' masked gradients (once per iteration)
KIND_DECRYPT: Final = "vlr.decrypt"
#: every party: its final weights, if the run asked to reveal them
KIND_FINISH: Final = "vlr.finish"

#: every kind a vertical-LR node answers (a node policy's ``kinds`` must allow them)
VLR_KINDS: Final = (
    KIND_SETUP,
    KIND_FORWARD,
    KIND_RESIDUAL,
    KIND_GRADIENT,
    KIND_DECRYPT,
    KIND_FINISH,
)

# -- records and their fields ----------------------------------------------------------
#: the Arrays record of every task and reply of the protocol
PAYLOAD: Final = "vlr"
KEY: Final = "public_key"  # uint8 (key bytes,): the label holder's Paillier modulus
PEER_KEY: Final = "peer_key"  # uint8 (32,): a passive party's X25519 key for pairwise masks
PEERS: Final = "peers"  # uint8 (passives, 32): every passive party's key, in one order
U_TRAIN: Final = "u_train"  # uint64 (train rows,) or (passives, train rows): masked, fixed point
U_TEST: Final = "u_test"  # uint64 (test rows,) or (passives, test rows): masked, fixed point
RESIDUALS: Final = "residuals"  # uint8 (train rows, ciphertext bytes)
GRADIENT: Final = "gradient"  # uint8 (features, ciphertext bytes): masked, encrypted
PLAIN: Final = "plain"  # uint8 (features, plaintext bytes): masked, decrypted
WEIGHTS: Final = "weights"  # float64 (features,), in the party's standardised units
BIAS: Final = "bias"  # float64 (1,): the label holder's intercept

# -- config keys of a task or reply ------------------------------------------------------
ITERATION: Final = "vlr-iteration"
TRAINING: Final = "vlr-training"  # residual task: False on the last, evaluation-only pass
COUNTS: Final = "vlr-counts"  # decrypt task: number of ciphertexts from each passive, in order
ROLE: Final = "vlr-role"
FEATURES: Final = "vlr-features"
FEATURE_NAMES: Final = "vlr-feature-names"
TRAIN_ROWS: Final = "vlr-train-rows"
TEST_ROWS: Final = "vlr-test-rows"
MASK_BITS: Final = "vlr-mask-bits"
# the keys' signatures (signed_keys): the run's parties, each key's owner and signature (hex)
PARTIES: Final = "vlr-parties"  # setup task: every party of the run, in the server's order
SIGNATURE: Final = "vlr-signature"  # setup reply: the party's signature over its key
LABEL_HOLDER: Final = "vlr-label-holder"  # first forward task: the label holder's node
KEY_SIGNATURE: Final = "vlr-key-signature"  # first forward task: its signature over KEY
PEER_NODES: Final = "vlr-peer-nodes"  # first forward task: the passive parties, as PEERS
PEER_SIGNATURES: Final = "vlr-peer-signatures"  # first forward task: their signatures
#: gradient reply: the passive party's signature over its GRADIENT (purpose vlr.gradients)
GRADIENT_SIGNATURE: Final = "vlr-gradient-signature"
#: decrypt task: each passive party's GRADIENT_SIGNATURE, in the run's passive order
GRADIENT_SIGNATURES: Final = "vlr-gradient-signatures"

ACTIVE: Final = "active"
PASSIVE: Final = "passive"


@dataclass(frozen=True, slots=True)
class VerticalLRParams:
    """The run's settings, from ``vlr-*`` run-config keys (every party reads the same)."""

    iterations: int = 30
    lr: float = 2.0
    momentum: float = 0.7  # Nesterov; each party applies it to its own block
    l2: float = 0.01  # (l2/2)|w|^2 on every weight but the intercept
    key_bits: int = 2048
    test_fraction: float = 0.3
    split_seed: int = 43
    reveal_model: bool = False  # parties send their final weights to the server
    timeout: float = 600.0  # seconds one protocol step may take

    @classmethod
    def from_config(cls, config: Config) -> VerticalLRParams:
        d, read = cls(), SettingsReader(config)
        return cls(
            iterations=read.integer("vlr-iterations", d.iterations, 1, 10_000),
            lr=read.number("vlr-lr", d.lr, 1e-6, 100.0),
            momentum=read.number("vlr-momentum", d.momentum, 0.0, 0.99),
            l2=read.number("vlr-l2", d.l2, 0.0, 100.0),
            key_bits=read.integer("vlr-key-bits", d.key_bits, 512, 8192),
            test_fraction=read.number("vlr-test-fraction", d.test_fraction, 0.0, 0.9),
            split_seed=read.integer("vlr-split-seed", d.split_seed, 0, 2**32 - 1),
            reveal_model=read.flag("vlr-reveal-model", d.reveal_model),
            timeout=read.number("vlr-timeout", d.timeout, 1.0, 86_400.0),
        )


FloatArray = npt.NDArray[np.float64]


def uint64_matrix(value: object, shape: tuple[int, ...], what: str) -> npt.NDArray[np.uint64]:
    """A peer's masked fixed-point array, refused unless uint64 of ``shape``."""
    if not isinstance(value, np.ndarray) or value.dtype != np.uint64:
        raise UpdateRejected(f"{what} must be a uint64 array")
    if value.shape != shape:
        raise UpdateRejected(f"{what} must have shape {shape}, got {value.shape}")
    return value


def float_vector(value: object, length: int, what: str) -> FloatArray:
    """A peer's float vector, refused unless float64, of ``length`` and finite."""
    return float_matrix(value, (length,), what)


def float_matrix(value: object, shape: tuple[int, ...], what: str) -> FloatArray:
    """A peer's float array, refused unless float64, of ``shape`` and finite."""
    if not isinstance(value, np.ndarray) or value.dtype != np.float64:
        raise UpdateRejected(f"{what} must be a float64 array")
    if value.shape != shape:
        raise UpdateRejected(f"{what} must have shape {shape}, got {value.shape}")
    if not np.isfinite(value).all():
        raise UpdateRejected(f"{what} holds NaN or infinity")
    return value


def int_field(config: Config, key: str, low: int, high: int) -> int:
    """An integer a peer sent in ``config[key]``, refused unless in ``[low, high]``."""
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UpdateRejected(f"{key!r} must be an integer in [{low}, {high}], got {value!r}")
    return value
