"""SecAgg+ (Bell et al., CCS 2020; Bonawitz et al., CCS 2017): the server sums the
nodes' updates without seeing any one of them.

The node side is :func:`secaggplus_mod`; the server side is
:class:`consortium.server.workflow.secagg.SecAggPlusWorkflow`, built on
:class:`KeyEpoch` and :class:`SecAggRound`. Needs the ``cryptography`` package (the ``privacy``
extra). In deployment the identity keys are the nodes' certificates
(:func:`node_identity`; :mod:`~consortium.privacy.secagg.certified`, imported on
its own: server programs must not load the transport's certificate checks).
See ``docs/privacy.md`` for what it protects against and what not.
"""

from consortium.privacy.secagg.crypto import Ed25519Keyring, Sign, Verify, model_digest
from consortium.privacy.secagg.hosted import NodeIdentity, node_identity
from consortium.privacy.secagg.mod import secaggplus_mod
from consortium.privacy.secagg.params import SecAggParams
from consortium.privacy.secagg.server_round import KeyEpoch, SecAggRound

__all__ = [
    "Ed25519Keyring",
    "KeyEpoch",
    "NodeIdentity",
    "SecAggParams",
    "SecAggRound",
    "Sign",
    "Verify",
    "model_digest",
    "node_identity",
    "secaggplus_mod",
]
