"""The NodeConnection contract, run against both implementations (see conftest.py).

Each test gets a fresh Fleet whose node-facing side is reached only through
the connection under test, and drives the server side through the Fleet's
Grid API, as the round loop does: register, pull, push, a 40 MB model both
ways, refusals that retrying cannot mend, the node itself refused for good
(NodeRefused, its task failed at once), an outage (ServerUnavailable, then
business as usual), and a reply after its round ended. The reconnect,
round-over and refusal cases also run a whole :class:`NodeRunner` over the
connection.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from consortium._version import __version__
from consortium.core.arrays import Arrays
from consortium.core.errors import NodeRefused, SecurityError, ServerUnavailable, TransportError
from consortium.core.fleet_info import Welcome
from consortium.core.message import Content, Message
from consortium.node.connection import NodeConnection
from consortium.server.fleet import Fleet
from consortium.server.fleet_state import RoundReplies
from honest import answer, check_answer

from .conftest import (
    APP_NAME,
    LIMIT,
    NODE,
    RUN_ID,
    Link,
    RunningNode,
    once_up,
    wait_for,
)

#: what the toy app of the whole-node tests reports
TOY_METRICS = {"num_examples": 3}

#: float32 parameters of the "large" model: 40 MB, ten 4 MiB chunks and some
LARGE = 10_000_000


# -- helpers ---------------------------------------------------------------------------
def make_task(model: Arrays) -> Message:
    return Message.create(
        run_id=RUN_ID, dst=NODE, round=1, kind="train", content=Content.of(arrays=model)
    )


def small_model(value: float = 1.0) -> Arrays:
    return Arrays({"w": np.arange(8, dtype=np.float32) * value})


def hello(conn: NodeConnection) -> Welcome:
    return conn.hello(__version__, uuid.uuid4().hex)


def push(conn: NodeConnection, reply: Message) -> tuple[bool, str]:
    return conn.push_result(reply.to_parts(), reply.metadata.message_id)


def pull(conn: NodeConnection, task: Message) -> Message:
    payload = conn.pull_task(10)
    assert payload is not None, "the queued task never reached the node"
    pulled = Message.from_bytes(payload)
    assert pulled.metadata.message_id == task.metadata.message_id
    return pulled


class Round:
    """Tasks sent through the Fleet's Grid API on a thread; ``replies()`` waits for them."""

    def __init__(self, fleet: Fleet, task: Message, timeout: float = 30.0) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._replies = self._pool.submit(
            lambda: list(fleet.send_and_receive([task], timeout=timeout))
        )

    def replies(self) -> list[Message]:
        try:
            return self._replies.result(timeout=60)
        finally:
            self._pool.shutdown(wait=False)


# -- the contract ----------------------------------------------------------------------
class TestNodeConnection:
    """What the node runner relies on, from each NodeConnection."""

    def test_hello_names_the_node_and_gives_the_rules(self, link: Link) -> None:
        conn = link.connect()
        welcome = hello(conn)
        assert welcome.node_id == NODE  # for gRPC: the name in the node's certificate
        assert welcome.heartbeat_interval == link.fleet.heartbeat_interval
        assert welcome.max_message_bytes == LIMIT
        assert link.fleet.node_ids() == [NODE]
        assert conn.heartbeat() is True

    def test_pull_receives_the_queued_task(self, link: Link) -> None:
        conn = link.connect()
        hello(conn)
        assert conn.pull_task(0.1) is None  # nothing queued: the wait ends empty-handed
        task = make_task(small_model(2.0))
        round_ = Round(link.fleet, task)
        pulled = pull(conn, task)
        assert pulled.metadata.dst == NODE and pulled.metadata.kind == "train"
        assert pulled.content is not None and pulled.content.model is not None
        np.testing.assert_array_equal(pulled.content.model["w"], np.arange(8) * 2.0)
        assert push(conn, answer(pulled)) == (True, "ok")
        check_answer(task, round_.replies())

    def test_push_reaches_the_round_with_its_content(self, link: Link) -> None:
        conn = link.connect()
        hello(conn)
        task = make_task(small_model(3.0))
        round_ = Round(link.fleet, task)
        pulled = pull(conn, task)
        assert push(conn, answer(pulled)) == (True, "ok")
        replies = round_.replies()
        check_answer(task, replies)
        assert replies[0].content is not None
        assert replies[0].content.metric_values == {"n": 3}

    def test_a_40_mb_model_arrives_intact_both_ways(self, link: Link) -> None:
        conn = link.connect()
        hello(conn)
        weights = np.random.default_rng(0).standard_normal(LARGE, dtype=np.float32)
        assert weights.nbytes == 40_000_000
        task = make_task(Arrays({"w": weights}))
        round_ = Round(link.fleet, task)
        pulled = pull(conn, task)
        assert pulled.content is not None and pulled.content.model is not None
        np.testing.assert_array_equal(pulled.content.model["w"], weights)
        assert push(conn, answer(pulled)) == (True, "ok")
        del pulled
        check_answer(task, round_.replies())

    def test_a_reply_over_the_limit_is_refused_for_good(self, link: Link) -> None:
        conn = link.connect()
        hello(conn)
        task = make_task(small_model())
        round_ = Round(link.fleet, task)
        pulled = pull(conn, task)
        huge = pulled.reply(arrays=Arrays({"w": np.zeros(LIMIT // 4 + 1024, dtype=np.float32)}))
        with pytest.raises(TransportError) as refused:
            push(conn, huge)
        assert not isinstance(refused.value, ServerUnavailable)  # retrying cannot help
        assert push(conn, answer(pulled)) == (True, "ok")  # the server goes on
        check_answer(task, round_.replies())

    def test_an_unknown_run_is_refused_for_good(self, link: Link) -> None:
        conn = link.connect()
        hello(conn)
        assert conn.get_run(RUN_ID).app_name == APP_NAME
        with pytest.raises(TransportError) as refused:
            conn.get_run("no-such-run")
        assert not isinstance(refused.value, ServerUnavailable)

    def test_a_refused_node_gets_node_refused_and_its_task_fails_at_once(self, link: Link) -> None:
        conn = link.connect()
        hello(conn)
        task = make_task(small_model())
        round_ = Round(link.fleet, task, timeout=60)
        pulled = pull(conn, task)
        link.refuse("certificate 'hospital-a' was revoked")
        calls: list[Callable[[], object]] = [
            lambda: hello(conn),
            conn.heartbeat,
            lambda: conn.pull_task(0.1),
            lambda: push(conn, answer(pulled)),
            lambda: conn.get_run(RUN_ID),
        ]
        for call in calls:
            with pytest.raises(NodeRefused) as refused:
                call()
            assert isinstance(refused.value, SecurityError)  # exit code 11, not retried
            assert refused.value.exit_code == 11
            assert "UNAUTHENTICATED" in str(refused.value), refused.value
        (lost,) = round_.replies()  # the round does not wait for the refused node
        assert lost.error is not None and "refused" in lost.error.reason, lost.error

    def test_an_outage_raises_server_unavailable_until_it_ends(self, link: Link) -> None:
        conn = link.connect()
        hello(conn)
        task = make_task(small_model())
        round_ = Round(link.fleet, task)
        pulled = pull(conn, task)
        link.outage()
        calls: list[Callable[[], object]] = [
            lambda: hello(conn),
            conn.heartbeat,
            lambda: conn.pull_task(0.1),
            lambda: push(conn, answer(pulled)),
            lambda: conn.get_run(RUN_ID),
        ]
        for call in calls:
            with pytest.raises(ServerUnavailable):
                call()
        link.restore()
        assert once_up(conn.heartbeat) is True  # the server kept the node's session
        assert push(conn, answer(pulled)) == (True, "ok")  # and its task
        check_answer(task, round_.replies())

    def test_a_reply_after_the_round_is_over_is_not_accepted(self, link: Link) -> None:
        conn = link.connect()
        hello(conn)
        task = make_task(small_model())
        replies = link.fleet.send_and_receive([task], timeout=30)
        assert isinstance(replies, RoundReplies)  # closing it ends the round
        pulled = pull(conn, task)
        replies.close()  # the round is over (cancelled, or the run stopped) without it
        accepted, detail = push(conn, answer(pulled))
        assert not accepted and "no task is waiting" in detail, detail
        assert conn.heartbeat() is True  # the node goes on: the next round works
        task = make_task(small_model(4.0))
        round_ = Round(link.fleet, task)
        assert push(conn, answer(pull(conn, task))) == (True, "ok")
        check_answer(task, round_.replies())

    # -- through a whole node ---------------------------------------------------------
    def test_the_node_delivers_its_result_after_an_outage(
        self, link: Link, start_node: Callable[[], RunningNode]
    ) -> None:
        node = start_node()
        task = make_task(small_model(5.0))
        round_ = Round(link.fleet, task)
        # pulled, app fetched: it trains for TRAIN_SECONDS; cut the server off meanwhile
        wait_for(lambda: node.spy.saw("get_run", "ok"), "the node to fetch the app")
        link.outage()
        wait_for(lambda: node.spy.saw("push_result", "unavailable"), "the failed push")
        assert node.runner.tasks_done == 1  # done, not delivered: kept in the outbox
        link.restore()
        check_answer(task, round_.replies(), metrics=TOY_METRICS)
        wait_for(lambda: node.spy.saw("push_result", "ok"), "the push to return")
        assert node.runner.tasks_done == 1  # delivered, not trained again

    def test_the_node_goes_on_after_its_round_ended_without_it(
        self, link: Link, start_node: Callable[[], RunningNode]
    ) -> None:
        node = start_node()
        late = make_task(small_model(6.0))
        replies = link.fleet.send_and_receive([late], timeout=30)
        assert isinstance(replies, RoundReplies)  # closing it ends the round
        wait_for(lambda: node.spy.saw("get_run", "ok"), "the node to fetch the app")
        replies.close()  # the round ends (cancelled, or the run stopped) while it trains
        wait_for(lambda: node.spy.saw("push_result", "not accepted"), "the late reply")
        assert list(replies) == []
        task = make_task(small_model(7.0))
        round_ = Round(link.fleet, task)
        check_answer(task, round_.replies(), metrics=TOY_METRICS)
        assert node.runner.tasks_done == 2

    def test_a_refused_node_stops_without_retrying(
        self, link: Link, start_node: Callable[[], RunningNode]
    ) -> None:
        node = start_node()
        wait_for(lambda: node.spy.saw("pull_task", "ok"), "the node to poll")
        link.refuse("certificate 'hospital-a' was revoked")
        node.thread.join(15)  # its pending poll ends; the next call is refused
        assert not node.thread.is_alive(), "the refused node did not stop"
        assert isinstance(node.error, NodeRefused), node.error
        assert node.runner.stop.is_set()
        refusals = [e for e in node.spy.events if e[1] == "refused for good"]
        assert len(refusals) <= 2, node.spy.events  # the main loop's and a heartbeat's
        assert not node.spy.saw("hello", "refused for good")  # no reconnect attempt
