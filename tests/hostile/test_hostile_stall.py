"""A node that announces its reply and then goes silent is cut off; only it fails the round.

Without a stall timeout, the silent transfer held a server thread and its share
of the transfer budget until the round's deadline, and the round waited for
it. Now a transfer that makes no progress for ``--stall-timeout`` seconds is
cancelled, that node's task fails at once, and the round goes on with the
others; the node's later rounds count again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import grpc
import pytest

from consortium.client.task import run_task
from consortium.core.context import Context
from consortium.core.message import Message
from consortium.transport.chunks import iter_chunks
from deploy.conftest import NODES, SLOW_APP, import_app

from .conftest import Deployment
from .played_node import PlayedNode
from .test_hostile_replies import RSS_BOUND, PeakRss

HOSTILE = "va"
HONEST = [n for n in NODES if n != HOSTILE]
STALL_S = 2.0
CONFIG = {"num-rounds": 3, "delay": 0.0, "min-replies": 3, "min-nodes": 4, "round-timeout": 60.0}


def _client_app() -> object:
    return import_app(SLOW_APP, "slow_toy").client_app


class SilentNode(PlayedNode):
    """``va``: announces its first reply, sends part of it, then goes silent."""

    def __init__(self, deployment: Deployment, keep: Callable[[int], int]) -> None:
        super().__init__(deployment, HOSTILE, "silent-node")
        #: bytes of the reply sent before the silence (its header is ~300 bytes)
        self.keep = keep
        self.cut_off: grpc.RpcError | None = None
        self.cut_after = 0.0
        self.answered = 0
        self.app = _client_app()

    def answer(self, task: Message) -> None:
        context = Context(node_id=HOSTILE, run_config=dict(CONFIG), seed=2)
        reply = run_task(self.app, task, context).reply  # type: ignore[arg-type]
        if self.cut_off is None:
            self._push_half(reply)
            return
        accepted, detail = self.client.push_result(reply.to_parts(), reply.metadata.message_id)
        assert accepted, detail
        self.answered += 1

    def _push_half(self, reply: Message) -> None:
        payload = b"".join(bytes(p) for p in reply.to_parts())
        size = self.keep(len(payload))
        first = next(iter_chunks(payload, reply.metadata.message_id, chunk_size=size))
        silent = threading.Event()

        def half_then_silence():  # type: ignore[no-untyped-def]
            yield first
            silent.wait(60)  # the rest never comes

        started = time.monotonic()
        answer = self.push_stream(half_then_silence(), then=silent)
        self.cut_after = time.monotonic() - started
        assert isinstance(answer, grpc.RpcError), f"a reply cut short was taken: {answer}"
        self.cut_off = answer


@pytest.mark.parametrize(
    "keep",
    [lambda n: n // 2, lambda n: n - 16],
    ids=["silent-before-its-header", "silent-after-its-header"],
)
def test_a_reply_that_stops_arriving_is_cut_off_and_only_its_node_fails(
    deployment: Deployment, keep: Callable[[int], int]
) -> None:
    deployment.start_server("--stall-timeout", str(STALL_S))
    rss = PeakRss(deployment.procs["server"].pid)
    for name in HONEST:
        deployment.start_node(name)
    bad = SilentNode(deployment, keep)
    bad.start()
    try:
        started = time.monotonic()
        run_id = deployment.start_run(SLOW_APP, CONFIG, seed=2)
        info = deployment.wait_run(run_id, timeout=90)
        took = time.monotonic() - started
    finally:
        bad.close()
        peak = rss.close()
    assert bad.error is None, bad.error
    assert info["status"] == "finished", (info, deployment.log("server"))
    # the 2 GB it announced were never reserved: the server stayed small
    assert peak < RSS_BOUND, f"server RSS peaked at {peak / 2**20:.0f} MiB"
    assert took < CONFIG["round-timeout"]  # nobody waited for the round's deadline
    assert isinstance(bad.cut_off, grpc.Call) and bad.cut_off.code() == grpc.StatusCode.CANCELLED
    assert STALL_S <= bad.cut_after < STALL_S + 10
    outcomes = {(r["round"], n["node"]): n for r in info["rounds"] for n in r["nodes"]}
    assert outcomes[(1, HOSTILE)]["outcome"] == "failed"
    assert "stopped arriving" in outcomes[(1, HOSTILE)]["reason"]
    assert all(outcomes[(1, n)]["outcome"] == "ok" for n in HONEST)
    assert all(outcomes[(r, n)]["outcome"] == "ok" for r in (2, 3) for n in NODES)
    assert bad.answered == 2
    assert f"cut off receiving a reply from {HOSTILE}" in deployment.log("server") or (
        f"cut off receiving a reply from {HOSTILE}"
        in (deployment.workdir / "server" / "server.log").read_text()
    )
