"""The heart-disease app's server with its strategy wrapped in :class:`CentralDP`.

The hospitals run the unchanged heart-disease client; only the server
changes: each round it clips every hospital's update to ``clip-norm``, adds
Gaussian noise of ``noise-multiplier × clip-norm`` to their sum and divides by
the number of hospitals sampled. Each round's train metrics carry
``dp_epsilon`` (and ``dp_epsilon_rdp``, ``dp_epsilon_pld``); the run stops
before a round that would take ε above ``max-epsilon``.
"""

from __future__ import annotations

from consortium.core.context import Context
from consortium.examples.heart_disease import server_app as heart_disease
from consortium.privacy import CentralDP
from consortium.server import ServerApp, ServerConfig


def server_fn(context: Context) -> ServerConfig:
    config = heart_disease.config(context)
    assert isinstance(config, ServerConfig)
    run = context.run_config
    config.strategy = CentralDP(
        config.strategy,
        noise_multiplier=float(run["noise-multiplier"]),
        clip_norm=float(run["clip-norm"]),
        delta=float(run["delta"]),
        max_epsilon=float(run["max-epsilon"]) if "max-epsilon" in run else None,
    )
    return config


server_app = ServerApp(server_fn)

__all__ = ["server_app"]
