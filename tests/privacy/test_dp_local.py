"""Local DP: the node clips and noises its update before it leaves the silo."""

from __future__ import annotations

import numpy as np
import pytest

from consortium.client import ClientApp
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import ConfigError
from consortium.core.message import Message
from consortium.privacy import local_dp_mod
from consortium.server import ServerApp, ServerConfig
from consortium.simulation import run_simulation
from consortium.strategy import FedAvg

SIZE = 200_000
INIT = Arrays({"w": np.zeros(SIZE, dtype=np.float32), "b": np.ones(1, dtype=np.float32)})


def client(mod_args: tuple[float, float]) -> ClientApp:
    app = ClientApp(mods=[local_dp_mod(*mod_args)])

    @app.train()
    def train(msg: Message, ctx: Context) -> Message:
        assert msg.content is not None and msg.content.model is not None
        model = msg.content.model
        # a large update: every weight moves by 1 (norm ~ 447)
        return msg.reply(
            arrays=Arrays({"w": model["w"] + 1, "b": model["b"]}), metrics={"num_examples": 4}
        )

    @app.evaluate()
    def evaluate(msg: Message, ctx: Context) -> Message:
        return msg.reply(metrics={"num_examples": 4, "accuracy": 0.75})

    return app


def run(clip: float, z: float):  # type: ignore[no-untyped-def]
    server = ServerApp(lambda ctx: ServerConfig(FedAvg(initial_arrays=INIT), num_rounds=1))
    return run_simulation(server, client((clip, z)), num_nodes=1)


def test_what_leaves_the_node_is_the_clipped_update_plus_noise_of_z_times_c() -> None:
    result = run(clip=2.0, z=0.5)
    w = result.arrays["w"].astype(np.float64)
    assert result.arrays["w"].dtype == np.float32
    clipped = 2.0 / np.sqrt(SIZE + 0.0)  # each coordinate of the clipped update
    noise = w - clipped
    assert np.std(noise) == pytest.approx(0.5 * 2.0, rel=0.02)
    assert float(np.mean(w)) == pytest.approx(clipped, abs=0.01)
    # evaluate replies pass through untouched
    assert result.history.rounds[0].evaluate_metrics == {"accuracy": 0.75}


def test_tiny_noise_leaves_just_the_clipped_update() -> None:
    result = run(clip=1.0, z=1e-6)
    delta = np.concatenate([result.arrays["w"], result.arrays["b"] - 1]).astype(np.float64)
    assert np.linalg.norm(delta) == pytest.approx(1.0, rel=1e-3)


def test_bad_settings_are_refused_naming_the_field() -> None:
    with pytest.raises(ConfigError, match="clip_norm"):
        local_dp_mod(0.0, 1.0)
    with pytest.raises(ConfigError, match="noise_multiplier"):
        local_dp_mod(1.0, float("inf"))
    with pytest.raises(ConfigError, match="noise_multiplier"):
        local_dp_mod(1.0, True)  # type: ignore[arg-type]
