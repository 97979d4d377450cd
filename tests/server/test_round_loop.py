"""The round loop: failures reported, bad updates rejected, minimum replies enforced."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from consortium.client import ClientApp
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.errors import RoundFailed
from consortium.core.history import LOGGED_FAILURES, Outcome
from consortium.core.message import Content, Message
from consortium.server import ServerApp, ServerConfig, load_model
from consortium.simulation import run_simulation
from consortium.strategy import FedAvg

INIT = Arrays({"w": np.zeros(4), "b": np.zeros(1)})


def make_client(behaviour: dict[str, str]) -> ClientApp:
    """Node i adds (i+1) to every weight, unless ``behaviour`` says it misbehaves."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, ctx: Context) -> Message:
        assert msg.content is not None and msg.content.model is not None
        model = msg.content.model
        what = behaviour.get(ctx.node_id, "ok")
        if what == "raise":
            raise RuntimeError(f"disk full on {ctx.node_id}")
        step = float(int(ctx.node_id) + 1)
        update = Arrays((k, v + step) for k, v in model.items())
        if what == "nan":
            update["w"] = update["w"].copy()
            update["w"][1] = np.nan
        elif what == "inf":
            update["b"] = np.array([np.inf])
        elif what == "shape":
            update["w"] = np.zeros(5)
        elif what == "dtype":
            update["w"] = update["w"].astype("f4")
        elif what == "missing":
            del update["b"]
        elif what == "no-count":
            return msg.reply(arrays=update, metrics={"loss": 1.0})
        elif what == "text-count":  # a simulated node's metrics are not checked on a wire
            return msg.reply(arrays=update, metrics={"num_examples": "10"})  # type: ignore[dict-item]
        return msg.reply(arrays=update, metrics={"num_examples": 10, "loss": step})

    @app.evaluate()
    def evaluate(msg: Message, ctx: Context) -> Message:
        return msg.reply(metrics={"num_examples": 5, "accuracy": 0.5})

    return app


def server(min_replies: int = 1, rounds: int = 2) -> ServerApp:
    return ServerApp(
        lambda ctx: ServerConfig(
            FedAvg(initial_arrays=INIT), num_rounds=rounds, min_replies=min_replies
        )
    )


def test_clean_run_averages_and_saves(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = run_simulation(server(), make_client({}), num_nodes=3, run_dir=tmp_path)
    # each round adds mean(1, 2, 3) = 2 to every weight
    np.testing.assert_allclose(result.arrays["w"], np.full(4, 4.0))
    assert [r.round for r in result.history.rounds] == [1, 2]
    assert result.history.rounds[0].evaluate_metrics == {"accuracy": 0.5}
    saved = load_model(tmp_path / "model.npz")
    assert saved.equals(result.arrays)


@pytest.mark.parametrize(
    ("what", "reason"),
    [
        ("nan", "NaN/inf"),
        ("inf", "NaN/inf"),
        ("shape", "'w' should be float64[4], got float64[5]"),
        ("dtype", "'w' should be float64[4], got float32[4]"),
        ("missing", "missing ['b']"),
        ("no-count", "num_examples"),
        ("text-count", "num_examples must be a number, got str '10'"),
    ],
)
def test_bad_update_is_rejected_with_reason_and_never_aggregated(
    what: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="consortium")
    result = run_simulation(server(rounds=1), make_client({"2": what}), num_nodes=3)
    # only nodes 0 and 1 count: mean(1, 2) = 1.5
    np.testing.assert_allclose(result.arrays["w"], np.full(4, 1.5))
    bad = [n for n in result.history.rounds[0].nodes if n.node_id == "2" and n.stage == "train"]
    assert bad[0].outcome is Outcome.REJECTED
    assert reason in bad[0].reason
    assert any(reason in r.getMessage() and "node 2" in r.getMessage() for r in caplog.records)


def test_failing_node_is_reported_with_traceback_and_round_proceeds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="consortium")
    result = run_simulation(server(min_replies=2), make_client({"0": "raise"}), num_nodes=3)
    failed = result.history.rounds[0].failures()
    assert [(f.node_id, f.outcome) for f in failed] == [("0", Outcome.FAILED)]
    assert "disk full on 0" in failed[0].reason
    assert "RuntimeError" in failed[0].traceback and "Traceback" in failed[0].traceback
    assert any("Traceback" in r.getMessage() and "node 0" in r.getMessage() for r in caplog.records)
    np.testing.assert_allclose(result.arrays["w"], np.full(4, 2 * 2.5))


def test_many_failures_warn_of_the_first_ones_and_log_the_rest_at_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A stage's first LOGGED_FAILURES failures are warnings; the rest are logged one by one
    at INFO (a run log keeps them, the terminal shows warnings only), summed up in one
    warning by outcome; every one of them is in the round's record."""
    caplog.set_level(logging.INFO, logger="consortium.server")
    raising, nan = range(3, 3 + LOGGED_FAILURES + 5), range(30, 33)
    behaviour = {str(i): "raise" for i in raising} | {str(i): "nan" for i in nan}
    result = run_simulation(server(rounds=1), make_client(behaviour), num_nodes=40)
    failed = result.history.rounds[0].failures()
    assert len(failed) == len(raising) + len(nan)
    records = [r for r in caplog.records if r.name == "consortium.server"]

    def one_by_one(level: int) -> list[str]:
        return [
            r.getMessage() for r in records if r.levelno == level
            and ("failed to train" in r.getMessage() or "rejected:" in r.getMessage())
        ]  # fmt: skip

    warned, quiet = one_by_one(logging.WARNING), one_by_one(logging.INFO)
    assert len(warned) == LOGGED_FAILURES
    assert len(warned) + len(quiet) == len(failed)
    assert all("Traceback" in m for m in warned + quiet if "failed to train" in m)
    quiet_failed = sum("failed to train" in m for m in quiet)
    summary = [r.getMessage() for r in records if "more nodes' train" in r.getMessage()]
    assert summary == [
        f"run {result.run_id} round 1: 8 more nodes' train did not succeed ({quiet_failed} "
        f"failed, {len(quiet) - quiet_failed} rejected), logged one by one at INFO level only "
        "(a run's run.log has them)"
    ]


def test_a_failed_round_lists_the_first_failures_and_counts_the_rest() -> None:
    behaviour = {str(i): "raise" for i in range(LOGGED_FAILURES + 7)}
    with pytest.raises(RoundFailed) as caught:
        run_simulation(server(min_replies=20), make_client(behaviour), num_nodes=20)
    message = str(caught.value)
    assert message.count("disk full on") == LOGGED_FAILURES
    assert message.endswith("; and 7 more")


def test_too_few_replies_fails_the_run_clearly() -> None:
    with pytest.raises(RoundFailed, match=r"only 1 of 3 nodes.*2 required.*disk full"):
        run_simulation(server(min_replies=2), make_client({"0": "raise", "1": "nan"}), num_nodes=3)


def test_min_reply_fraction() -> None:
    app = ServerApp(
        lambda ctx: ServerConfig(FedAvg(initial_arrays=INIT), num_rounds=1, min_reply_fraction=1.0)
    )
    with pytest.raises(RoundFailed):
        run_simulation(app, make_client({"1": "raise"}), num_nodes=4)


def test_initial_parameters_from_a_node() -> None:
    app = ClientApp()

    @app.query()
    def query(msg: Message, ctx: Context) -> Message:
        return msg.reply(arrays=Arrays({"w": np.full(2, 7.0)}))

    @app.train()
    def train(msg: Message, ctx: Context) -> Message:
        assert msg.content is not None
        return msg.reply(arrays=msg.content.model, metrics={"num_examples": 1})

    srv = ServerApp(lambda ctx: ServerConfig(FedAvg(fraction_evaluate=0.0), num_rounds=1))
    result = run_simulation(srv, app, num_nodes=2)
    np.testing.assert_array_equal(result.arrays["w"], [7.0, 7.0])


def test_central_evaluation_each_round() -> None:
    calls: list[int] = []

    def central(rnd: int, arrays: Arrays) -> dict[str, float]:
        calls.append(rnd)
        return {"norm": float(np.linalg.norm(arrays["w"]))}

    srv = ServerApp(
        lambda ctx: ServerConfig(
            FedAvg(initial_arrays=INIT, central_evaluate=central), num_rounds=3
        )
    )
    result = run_simulation(srv, make_client({}), num_nodes=2)
    assert calls == [0, 1, 2, 3]
    assert result.history.metric("central_norm")[-1][0] == 3


def test_extra_records_travel_both_ways_and_are_validated() -> None:
    """Strategies can send/receive named Arrays beside the model (e.g. control variates)."""
    from collections.abc import Iterable, Sequence

    from consortium.strategy import Instruction, TrainReply

    seen: dict[str, dict[str, float]] = {}

    class WithRecords(FedAvg):
        def configure_train(  # type: ignore[override]
            self, round: int, arrays: Arrays, nodes: Sequence[str], rng: np.random.Generator
        ) -> list[Instruction]:
            return [
                Instruction(i.node_id, i.arrays, i.config, {"control": Arrays({"c": np.ones(2)})})
                for i in super().configure_train(round, arrays, nodes, rng)
            ]

        def aggregate_train(  # type: ignore[override]
            self, round: int, current: Arrays, replies: Iterable[TrainReply]
        ) -> tuple[Arrays, dict[str, float]]:
            def spy() -> Iterable[TrainReply]:
                for r in replies:
                    seen[r.node_id] = {k: float(v["c"].sum()) for k, v in r.records.items()}
                    yield r

            return super().aggregate_train(round, current, spy())

    app = ClientApp()

    @app.train()
    def train(msg: Message, ctx: Context) -> Message:
        assert msg.content is not None and msg.content.model is not None
        control = msg.content.arrays["control"]["c"]
        delta = control * (np.nan if ctx.node_id == "1" else 2.0)
        content = Content(
            arrays={"model": msg.content.model, "delta": Arrays({"c": delta})},
            metrics={"metrics": {"num_examples": 3}},
        )
        return msg.reply(content)

    srv = ServerApp(
        lambda ctx: ServerConfig(
            WithRecords(initial_arrays=INIT, fraction_evaluate=0.0), num_rounds=1
        )
    )
    result = run_simulation(srv, app, num_nodes=2)
    assert seen == {"0": {"delta": 4.0}}
    rejected = next(n for n in result.history.rounds[0].nodes if n.node_id == "1")
    assert rejected.outcome is Outcome.REJECTED and "record 'delta'" in rejected.reason


def test_a_failed_round_is_retried_as_configured() -> None:
    """Node 0 fails its first attempt at round 1 only; one retry lets the run finish."""
    attempts: dict[str, int] = {}
    app = ClientApp()

    @app.train()
    def train(msg: Message, ctx: Context) -> Message:
        attempts[ctx.node_id] = attempts.get(ctx.node_id, 0) + 1
        if ctx.node_id == "0" and attempts["0"] == 1:
            raise RuntimeError("transient failure")
        assert msg.content is not None
        return msg.reply(arrays=msg.content.model, metrics={"num_examples": 1})

    def server(retries: int) -> ServerApp:
        return ServerApp(
            lambda ctx: ServerConfig(
                FedAvg(initial_arrays=INIT, fraction_evaluate=0.0),
                num_rounds=2,
                min_replies=2,
                round_retries=retries,
            )
        )

    with pytest.raises(RoundFailed):
        run_simulation(server(0), app, num_nodes=2)
    attempts.clear()
    result = run_simulation(server(1), app, num_nodes=2)
    assert [r.round for r in result.history.rounds] == [1, 2]
    assert attempts == {"0": 3, "1": 3}  # round 1 twice, round 2 once
