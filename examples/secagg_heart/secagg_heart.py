"""Heart disease with SecAgg+: the heart-disease example's training and evaluation, its
rounds run by :class:`~consortium.server.workflow.secagg.SecAggPlusWorkflow`.

The nodes train exactly as in ``consortium.examples.heart_disease``; the
``secaggplus_mod`` replaces each train reply by a masked vector, so the server
learns only the (weighted) mean update. With ``weighting = "uniform"`` (one
vote per hospital, the example's tuned default) each node reports one example
to SecAgg+, so the secure mean is the plain mean FedAvg takes.

Identity keys: on a deployed node, ``node_identity`` signs with the node's
certificate key (held by the node's own process, never by this app's) and
checks peers against the federation CA; in simulation it falls back to
:data:`SIMULATION_KEYS`.
"""

from __future__ import annotations

import dataclasses
import hashlib

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from consortium.client.app import ClientApp, Handler
from consortium.core.context import Context
from consortium.core.errors import ConfigError
from consortium.core.grid import Grid
from consortium.core.message import METRICS, TRAIN, Content, Message
from consortium.core.protocol import NUM_EXAMPLES
from consortium.core.records import Config
from consortium.examples import heart_disease as hd
from consortium.privacy.secagg import (
    Ed25519Keyring,
    SecAggParams,
    node_identity,
    secaggplus_mod,
)
from consortium.server import ServerApp, ServerConfig
from consortium.server.context import ServerContext
from consortium.server.workflow.secagg import SecAggPlusWorkflow

NODES = ("cleveland", "hungarian", "switzerland", "va")
#: Simulation only, and not secret: the same keys in every process (the processes
#: backend loads the app in each worker). A deployed node signs with its certificate.
SIMULATION_KEYS = Ed25519Keyring(
    {
        n: Ed25519PrivateKey.from_private_bytes(
            hashlib.sha256(b"simulation/" + n.encode()).digest()
        )
        for n in NODES
    }
)
identity = node_identity(fallback=SIMULATION_KEYS)


def one_vote(message: Message, context: Context, call_next: Handler) -> Message:
    """With ``weighting = "uniform"``, a train reply counts one example (one vote)."""
    reply = call_next(message, context)
    uniform = {**hd.FLAMBY_RUN_CONFIG, **context.run_config}.get("weighting") == "uniform"
    if message.metadata.kind != TRAIN or not uniform or reply.content is None:
        return reply
    content = reply.content
    metrics = {**content.metrics, METRICS: {**content.metric_values, NUM_EXAMPLES: 1}}
    return Message(reply.metadata, content=Content(content.arrays, content.configs, metrics))


client_app = ClientApp(mods=[secaggplus_mod(identity.sign, identity.verify), one_vote])
client_app.train()(hd.train)
client_app.evaluate()(hd.evaluate)


def secagg_params(cfg: Config) -> SecAggParams:
    """SecAgg+'s settings from the run config (``secagg-*`` keys; defaults elsewhere)."""
    defaults = SecAggParams()

    def number(key: str, default: float) -> float:
        value = cfg.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"run-config {key!r} must be a number, got {value!r}")
        return float(value)

    return SecAggParams(
        clip=number("secagg-clip", defaults.clip),
        quantization_bits=int(number("secagg-quantization-bits", defaults.quantization_bits)),
        stage_timeout=number("secagg-stage-timeout", defaults.stage_timeout),
        train_timeout=number("secagg-train-timeout", defaults.train_timeout),
    )


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: ServerContext) -> None:
    config = hd.server_app.config(context)
    if not isinstance(config, ServerConfig):
        raise ConfigError("SecAgg+ runs synchronous rounds")
    timeout = context.run_config.get("round-timeout")
    if isinstance(timeout, int | float) and not isinstance(timeout, bool):
        config = dataclasses.replace(config, round_timeout=float(timeout))
    SecAggPlusWorkflow(config, secagg_params(context.run_config))(grid, context)
