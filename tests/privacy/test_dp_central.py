"""Central DP (DP-FedAvg): clipping, calibrated noise, fixed denominator, adaptive clipping."""

from __future__ import annotations

import math

import numpy as np
import pytest

from consortium.core.arrays import Arrays
from consortium.core.errors import ConfigError, StrategyError
from consortium.privacy.dp import (
    DP_AGGREGATE,
    AdaptiveClipping,
    CentralDP,
    update_noise_multiplier,
)
from consortium.strategy import FedAdam, FedAvg, Krum, RobustFedAvg, TrainReply

X = Arrays({"w": np.zeros(3), "b": np.zeros(1)})


def seeded(seed: int = 7):  # type: ignore[no-untyped-def]
    """A deterministic noise source, so a test can recompute the exact noise."""
    return lambda: np.random.default_rng(seed)


def reply(node: str, w: list[float], b: float, examples: int = 10) -> TrainReply:
    return TrainReply(node, Arrays({"w": np.array(w), "b": np.array([b])}), examples, {"loss": 1.0})


def run_round(dp: CentralDP, replies: list[TrainReply], nodes: int, rnd: int = 1) -> tuple:  # type: ignore[type-arg]
    instructions = dp.configure_train(
        rnd, X, [str(i) for i in range(nodes)], np.random.default_rng(0)
    )
    return len(instructions), dp.aggregate_train(rnd, X, iter(replies))


def test_the_release_is_the_fixed_denominator_mean_of_clipped_updates_plus_noise() -> None:
    dp = CentralDP(
        FedAvg(),
        noise_multiplier=0.7,
        clip_norm=1.0,
        delta=1e-5,
        noise=seeded(),
        accountants=("rdp",),
    )
    # norms 5 (clipped to 1), 0.5 (kept) and 0 (a zero update: no division by zero);
    # skewed num_examples must not matter: every node weighs the same
    replies = [
        reply("0", [3, 4, 0], 0),
        reply("1", [0, 0.3, 0], 0.4, 10_000),
        reply("2", [0, 0, 0], 0),
    ]
    sampled, (arrays, metrics) = run_round(dp, replies, nodes=4)
    assert sampled == 4  # FedAvg samples every node; one of them did not reply
    rng = np.random.default_rng(7)
    noise_w, noise_b = rng.normal(0, 0.7, 3), rng.normal(0, 0.7, 1)
    clipped_sum_w = np.array([0.6, 0.8, 0]) + np.array([0, 0.3, 0])
    np.testing.assert_allclose(arrays["w"], (clipped_sum_w + noise_w) / 4)  # over m=4 sampled
    np.testing.assert_allclose(arrays["b"], (np.array([0.4]) + noise_b) / 4)
    assert np.isfinite(arrays["w"]).all()
    assert metrics["loss"] == 1.0
    assert metrics["dp_clip_norm"] == 1.0 and metrics["dp_sampling_rate"] == 1.0
    assert "clipped_updates" not in metrics  # a raw count is not private


def test_noise_std_on_the_mean_is_z_c_over_m_within_2_percent() -> None:
    x = Arrays({"w": np.zeros(1_000_000, dtype=np.float64)})
    dp = CentralDP(FedAvg(), noise_multiplier=1.3, clip_norm=2.0, delta=1e-5, accountants=("rdp",))
    dp.configure_train(1, x, ["a", "b", "c", "d", "e"], np.random.default_rng(0))
    zero = TrainReply("a", Arrays({"w": np.zeros(1_000_000)}), 1)
    arrays, _ = dp.aggregate_train(1, x, iter([zero]))
    assert np.std(arrays["w"]) == pytest.approx(1.3 * 2.0 / 5, rel=0.02)
    assert abs(float(np.mean(arrays["w"]))) < 0.01


def test_float32_models_stay_float32_and_the_base_post_processes_the_one_noised_model() -> None:
    x = Arrays({"w": np.ones(4, dtype=np.float32)})
    seen: list[list[TrainReply]] = []

    class Spy(FedAvg):
        def aggregate_train(self, round, current, replies):  # type: ignore[no-untyped-def]
            replies = list(replies)
            seen.append(replies)
            return super().aggregate_train(round, current, replies)

    dp = CentralDP(Spy(), noise_multiplier=1.0, clip_norm=1.0, delta=1e-5, accountants=("rdp",))
    dp.configure_train(1, x, ["a", "b"], np.random.default_rng(0))
    update = TrainReply("a", Arrays({"w": np.full(4, 2.0, dtype=np.float32)}), 3)
    arrays, _ = dp.aggregate_train(1, x, iter([update, update]))
    assert arrays["w"].dtype == np.float32
    ((only,),) = seen
    assert only.node_id == DP_AGGREGATE and only.num_examples == 6


def test_a_server_optimizer_base_sees_the_noised_mean_as_its_pseudo_gradient() -> None:
    dp = CentralDP(
        FedAdam(FedAvg(initial_arrays=X)),
        noise_multiplier=0.5,
        clip_norm=10.0,
        delta=1e-5,
        accountants=("rdp",),
    )
    _, (arrays, metrics) = run_round(dp, [reply("0", [1, 1, 1], 1)], nodes=1)
    assert np.isfinite(arrays["w"]).all() and "dp_epsilon" in metrics


def test_refuses_what_it_cannot_make_private() -> None:
    with pytest.raises(StrategyError, match="needs every update"):
        CentralDP(RobustFedAvg(Krum(1)), noise_multiplier=1.0, clip_norm=1.0, delta=1e-5)
    for kwargs, field in [
        ({"noise_multiplier": 0.0}, "noise_multiplier"),
        ({"clip_norm": -1.0}, "clip_norm"),
        ({"max_epsilon": 0.0}, "max_epsilon"),
    ]:
        args = {"noise_multiplier": 1.0, "clip_norm": 1.0, "delta": 1e-5, **kwargs}
        with pytest.raises(StrategyError, match=field):
            CentralDP(FedAvg(), **args)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="delta"):
        CentralDP(FedAvg(), noise_multiplier=1.0, clip_norm=1.0, delta=1.5)
    dp = CentralDP(FedAvg(), noise_multiplier=1.0, clip_norm=1.0, delta=1e-5)
    with pytest.raises(StrategyError, match="without configure_train"):
        dp.aggregate_train(1, X, iter([reply("0", [1, 1, 1], 1)]))
    ints = Arrays({"steps": np.zeros(2, dtype=np.int64)})
    dp.configure_train(1, ints, ["a"], np.random.default_rng(0))
    with pytest.raises(StrategyError, match="floating-point"):
        dp.aggregate_train(1, ints, iter([]))


def test_state_round_trips_the_clip_norm_and_the_rounds_spent() -> None:
    dp = CentralDP(
        FedAvg(),
        noise_multiplier=1.0,
        clip_norm=0.1,
        delta=1e-5,
        adaptive=AdaptiveClipping(count_stddev=1.0),
        accountants=("rdp",),
    )
    for rnd in (1, 2):
        run_round(dp, [reply("0", [3, 4, 0], 0), reply("1", [1, 0, 0], 0)], nodes=2, rnd=rnd)
    state = dp.state_dict()
    assert state["clip_norm"] != 0.1 and len(state["rounds"]) == 2
    fresh = CentralDP(
        FedAvg(),
        noise_multiplier=1.0,
        clip_norm=0.1,
        delta=1e-5,
        adaptive=AdaptiveClipping(count_stddev=1.0),
        accountants=("rdp",),
    )
    fresh.load_state_dict(state)
    assert fresh.clip_norm == dp.clip_norm and fresh.epsilon == pytest.approx(dp.epsilon)
    settings = dp.settings()
    assert settings["clipping"] == "adaptive" and settings["base"] == "FedAvg"


# -- adaptive clipping (Andrew et al. 2021) ----------------------------------------------


def synthetic_round(rng: np.random.Generator, nodes: int) -> list[TrainReply]:
    """Updates in random directions with norms ~ U(0.8, 1.2): the median norm is 1.0."""
    out = []
    for i in range(nodes):
        direction = rng.normal(size=4)
        direction *= rng.uniform(0.8, 1.2) / np.linalg.norm(direction)
        out.append(TrainReply(str(i), Arrays({"w": direction}), 1))
    return out


@pytest.mark.parametrize("initial", [0.1, 5.0])
def test_adaptive_clipping_reaches_the_target_quantile_norm_from_both_sides(initial: float) -> None:
    """From C0 = 0.1 and C0 = 5 the norm reaches the median's (1.0) within 10% in 60 rounds.
    Flower's rule (counting *clipped* updates in the unclipped formula) runs away instead."""
    x = Arrays({"w": np.zeros(4)})
    nodes = [str(i) for i in range(20)]
    dp = CentralDP(
        FedAvg(),
        noise_multiplier=1.0,
        clip_norm=initial,
        delta=1e-5,
        adaptive=AdaptiveClipping(target_quantile=0.5, learning_rate=0.2),
        accountants=("rdp",),
    )
    rng = np.random.default_rng(3)
    norms = []
    for rnd in range(1, 61):
        dp.configure_train(rnd, x, nodes, np.random.default_rng(rnd))
        _, metrics = dp.aggregate_train(rnd, x, iter(synthetic_round(rng, len(nodes))))
        norms.append(dp.clip_norm)
        assert metrics["dp_clip_norm"] == (norms[-2] if rnd > 1 else initial)
    assert dp.clip_norm == pytest.approx(1.0, rel=0.10)
    assert all(abs(c - 1.0) < 0.1 for c in norms[-5:])  # it stays there


def test_the_noise_is_split_between_the_count_and_the_update_as_the_paper_says() -> None:
    # z^-2 = z_update^-2 + (2 sigma_b)^-2
    z_update = update_noise_multiplier(1.0, 1.0)
    assert z_update**-2 + (2 * 1.0) ** -2 == pytest.approx(1.0)
    assert z_update > 1.0
    with pytest.raises(ConfigError, match="count_stddev"):
        update_noise_multiplier(2.0, 1.0)  # the count would take the whole budget
    assert AdaptiveClipping().stddev(20) == 1.0  # m / 20
    with pytest.raises(ConfigError, match="target_quantile"):
        AdaptiveClipping(target_quantile=1.0)
    assert math.isfinite(update_noise_multiplier(0.5, 0.5))
