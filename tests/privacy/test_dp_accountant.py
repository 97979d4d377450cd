"""The accountant: ε as dp-accounting computes it, per round in a run, and max-epsilon."""

from __future__ import annotations

import logging

import dp_accounting
import numpy as np
import pytest
from dp_accounting import pld, rdp

from consortium.client import ClientApp
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import ConfigError
from consortium.core.history import History, RoundRecord, RunInfo
from consortium.core.message import Message
from consortium.privacy.dp import (
    CentralDP,
    PrivacyBudgetExhausted,
    PrivacyLedger,
    epsilon,
    local_epsilon,
    noise_multiplier_for,
)
from consortium.server import ServerApp, ServerConfig
from consortium.simulation import run_simulation
from consortium.strategy import FedAvg
from consortium.tracking.log import LogObserver

DELTA = 1e-5


def reference(q: float, z: float, rounds: int, accountant: str) -> float:
    """dp-accounting's own ε for ``rounds`` Poisson-subsampled Gaussian rounds."""
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), rounds
    )
    acc = rdp.RdpAccountant() if accountant == "rdp" else pld.PLDAccountant()
    acc.compose(event)
    return float(acc.get_epsilon(DELTA))


@pytest.mark.parametrize(("accountant", "expected"), [("rdp", 2.1014), ("pld", 1.8282)])
def test_epsilon_matches_the_reference_table(accountant: str, expected: float) -> None:
    # SECURITY-NOTES §2: q=0.01, sigma=1.0, T=1000, delta=1e-5
    got = epsilon([(0.01, 1.0)] * 1000, DELTA, accountant)  # type: ignore[arg-type]
    assert got == pytest.approx(expected, rel=1e-3)


def test_rounds_with_different_sampling_rates_compose() -> None:
    mixed = epsilon([(0.5, 1.0), (1.0, 1.0), (0.5, 1.0)], DELTA)
    assert epsilon([(0.5, 1.0)] * 3, DELTA) < mixed < epsilon([(1.0, 1.0)] * 3, DELTA)
    assert epsilon([], DELTA) == 0.0
    with pytest.raises(ConfigError, match="sampling_rate"):
        epsilon([(0.0, 1.0)], DELTA)
    with pytest.raises(ConfigError, match="accountant"):
        epsilon([(1.0, 1.0)], DELTA, "moments")  # type: ignore[arg-type]


def test_noise_multiplier_for_is_the_smallest_that_meets_the_target() -> None:
    z = noise_multiplier_for(3.0, DELTA, rounds=50, sampling_rate=0.5)
    assert reference(0.5, z, 50, "rdp") <= 3.0
    assert reference(0.5, z * 0.99, 50, "rdp") > 3.0
    with pytest.raises(ConfigError, match="target_epsilon"):
        noise_multiplier_for(0.0, DELTA, rounds=5, sampling_rate=1.0)
    with pytest.raises(ConfigError, match="rounds"):
        noise_multiplier_for(1.0, DELTA, rounds=0, sampling_rate=1.0)


def test_local_epsilon_is_the_gaussian_mechanism_at_half_the_multiplier() -> None:
    assert local_epsilon(4.0, 3, DELTA) == pytest.approx(reference(1.0, 2.0, 3, "rdp"))


def test_the_ledger_survives_a_checkpoint() -> None:
    ledger = PrivacyLedger(DELTA, ("rdp",))
    ledger.spend(0.5, 1.0)
    ledger.spend(0.5, 1.0)
    again = PrivacyLedger(DELTA, ("rdp",))
    again.load_state(ledger.state())
    assert again.epsilon() == ledger.epsilon() == pytest.approx(reference(0.5, 1.0, 2, "rdp"))
    with pytest.raises(ConfigError, match="ledger state"):
        again.load_state({"rounds": 2})


# -- in a run -----------------------------------------------------------------------------

INIT = Arrays({"w": np.zeros(3)})


def client() -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, ctx: Context) -> Message:
        assert msg.content is not None and msg.content.model is not None
        step = 0.1 * (int(ctx.node_id) + 1)
        return msg.reply(
            arrays=Arrays({"w": msg.content.model["w"] + step}), metrics={"num_examples": 5}
        )

    return app


class Recorder:
    """An observer: what the terminal, MLflow and the run log are told."""

    def __init__(self) -> None:
        self.rounds: list[RoundRecord] = []
        self.failed: bool | None = None

    def on_run_start(self, info: RunInfo) -> None:
        self.params = info.params

    def on_round_end(self, record: RoundRecord) -> None:
        self.rounds.append(record)

    def on_run_end(self, history: History, *, failed: bool) -> None:
        self.failed = failed


def dp_server(rounds: int, max_epsilon: float | None = None) -> ServerApp:
    return ServerApp(
        lambda ctx: ServerConfig(
            CentralDP(
                FedAvg(initial_arrays=INIT, fraction_train=0.5, fraction_evaluate=0.0),
                noise_multiplier=1.0,
                clip_norm=1.0,
                delta=DELTA,
                max_epsilon=max_epsilon,
            ),
            num_rounds=rounds,
        )
    )


def test_the_run_reports_dp_accountings_epsilon_every_round(
    caplog: pytest.LogCaptureFixture,
) -> None:
    observer = Recorder()
    with caplog.at_level(logging.INFO, logger="consortium.run"):
        result = run_simulation(
            dp_server(3), client(), num_nodes=4, observers=[observer, LogObserver()]
        )
    # the run log (and so the terminal and MLflow, which print the same global metrics)
    round_lines = [r.getMessage() for r in caplog.records if " round=" in r.getMessage()]
    assert len(round_lines) == 3 and all("train_dp_epsilon=" in line for line in round_lines)
    assert [r.round for r in observer.rounds] == [1, 2, 3]
    for t, record in enumerate(result.history.rounds, start=1):
        metrics = record.train_metrics
        assert metrics["dp_sampling_rate"] == 0.5  # 2 of 4 nodes each round
        assert metrics["dp_epsilon"] == pytest.approx(reference(0.5, 1.0, t, "rdp"), rel=0.01)
        assert metrics["dp_epsilon_pld"] == pytest.approx(reference(0.5, 1.0, t, "pld"), rel=0.01)
        assert metrics["dp_epsilon_pld"] < metrics["dp_epsilon"]
        assert record.global_metrics()["train_dp_epsilon"] == metrics["dp_epsilon"]
    assert observer.rounds[-1].train_metrics == result.history.rounds[-1].train_metrics
    assert observer.params["strategy.noise_multiplier"] == 1.0


def test_a_run_with_max_epsilon_stops_before_the_round_that_would_cross_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    budget = (reference(0.5, 1.0, 2, "rdp") + reference(0.5, 1.0, 3, "rdp")) / 2
    observer = Recorder()
    with caplog.at_level(logging.WARNING, logger="consortium"):
        result = run_simulation(
            dp_server(10, max_epsilon=budget), client(), num_nodes=4, observers=[observer]
        )
    # a finished run (not a failure) whose result is the model of the last released round
    assert observer.failed is False
    assert [r.round for r in result.history.rounds] == [1, 2]
    assert all(r.train_metrics["dp_epsilon"] <= budget for r in result.history.rounds)
    assert "finishes before round 3" in caplog.text
    assert "round 3 would raise ε" in caplog.text and "after 2 released rounds" in caplog.text


def test_the_budget_check_raises_before_any_task_of_the_round_is_sent() -> None:
    strategy = CentralDP(
        FedAvg(initial_arrays=INIT), noise_multiplier=1.0, clip_norm=1.0, delta=DELTA,
        max_epsilon=reference(1.0, 1.0, 1, "rdp") / 2,
    )  # fmt: skip
    with pytest.raises(PrivacyBudgetExhausted, match=r"round 1 would raise ε"):
        strategy.configure_train(1, INIT, ["a", "b"], np.random.default_rng(0))
