"""DP noise: a CSPRNG per draw, the discrete Gaussian, and distributed noise shares."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
from randomgen import ChaCha

import consortium.privacy.dp as dp_package
from consortium.core.errors import ConfigError
from consortium.privacy.dp import discrete_gaussian, noise_share, secure_rng
from consortium.privacy.dp.noise import gaussian

DP_SOURCES = sorted(Path(dp_package.__file__).parent.glob("*.py"))


def test_each_draw_is_keyed_afresh_from_the_os_and_ignores_numpy_seeding() -> None:
    np.random.seed(0)
    first = secure_rng().normal(size=8)
    np.random.seed(0)
    second = secure_rng().normal(size=8)
    assert not np.array_equal(first, second)
    rng = secure_rng()
    assert isinstance(rng.bit_generator, ChaCha)
    state = rng.bit_generator.state["state"]
    assert state["rounds"] == 20  # the standard ChaCha20, not a reduced-round variant
    other = secure_rng().bit_generator.state["state"]
    # a 256-bit key per draw: eight 32-bit words, none shared with the next draw's
    assert state["keysetup"].size == 8 and not np.isin(state["keysetup"], other["keysetup"]).any()


def test_no_statistical_generator_in_the_dp_package() -> None:
    """Static check: nothing in privacy/dp draws from numpy's global or seedable generators."""
    banned = {"default_rng", "RandomState", "seed", "normal", "PCG64", "MT19937", "Philox"}
    for source in DP_SOURCES:
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in banned:
                owner = ast.unparse(node.value)
                assert owner not in {"np.random", "numpy.random", "random"}, (
                    f"{source.name}: {owner}.{node.attr}"
                )


def test_gaussian_std_within_2_percent_over_a_million_draws() -> None:
    draws = gaussian((1_000_000,), 0.35, secure_rng())
    assert np.std(draws) == pytest.approx(0.35, rel=0.02)
    assert abs(float(np.mean(draws))) < 0.002
    assert not gaussian((3,), 0.0, secure_rng()).any()
    with pytest.raises(ConfigError, match="std"):
        gaussian((3,), float("nan"), secure_rng())


@pytest.mark.parametrize("sigma", [0.6, 3.0, 40.0])
def test_discrete_gaussian_has_its_distribution(sigma: float) -> None:
    draws = discrete_gaussian((400_000,), sigma, secure_rng())
    assert draws.dtype == np.int64
    assert abs(float(np.mean(draws))) < 0.02 * max(sigma, 1)
    # the exact variance of the discrete Gaussian, summed over its support
    support = np.arange(-int(12 * sigma) - 10, int(12 * sigma) + 11)
    weights = np.exp(-(support**2) / (2 * sigma**2))
    exact = float((support**2 * weights).sum() / weights.sum())
    assert np.var(draws) == pytest.approx(exact, rel=0.02)
    # and its shape: P(0) matches, within 5 standard errors of the binomial count (the
    # draws come from the OS, unseeded: a tighter bound fails now and then by chance)
    p_zero = float(weights[support == 0][0] / weights.sum())
    error = 5 * math.sqrt(p_zero * (1 - p_zero) / draws.size)
    assert abs(float(np.mean(draws == 0)) - p_zero) < error


def test_noise_shares_of_n_nodes_sum_to_the_total_variance() -> None:
    n, total = 10, 20.0
    summed = sum(noise_share((200_000,), total, n) for _ in range(n))
    assert isinstance(summed, np.ndarray) and summed.dtype == np.int64
    assert np.var(summed) == pytest.approx(total**2, rel=0.02)
    one = noise_share((200_000,), total, n)
    assert np.var(one) == pytest.approx(total**2 / n, rel=0.02)
    with pytest.raises(ConfigError, match="num_nodes"):
        noise_share((3,), total, 0)
    with pytest.raises(ConfigError, match="total_stddev"):
        noise_share((3,), -1.0, 3)
