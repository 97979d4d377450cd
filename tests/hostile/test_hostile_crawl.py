"""A node that keeps its transfer moving, but only just, while other nodes wait behind it
is cut off; only it fails the round.

The stall timeout cuts off a transfer that makes no progress for ``--stall-timeout``
seconds; one chunk now and then passes it. Such a node can hold what others wait for --
the transfer budget, which the honest replies need, with an upload it trickles; or the
round's outgoing model, counted in that budget until every node has been sent it, with
a download it reads slowly -- until the round's deadline. Now a transfer that others
wait behind must also move ``--min-rate-mbit`` averaged over the stall timeout.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np

from consortium.client.task import run_task
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.message import Message
from consortium.transport.chunks import Chunk, Reassembler, decode_chunk, iter_chunks
from consortium.transport.grpc_options import GRPC_OPTIONS
from consortium.transport.proto import fleet_pb2 as pb
from deploy.conftest import NODES, SLOW_APP, import_app, write_app

from .conftest import Deployment
from .played_node import PlayedNode

HOSTILE = "va"
HONEST = [n for n in NODES if n != HOSTILE]
STALL_S = 2.0
CONFIG = {"num-rounds": 3, "delay": 0.5, "min-replies": 3, "min-nodes": 4, "round-timeout": 60.0}
PULL = "/consortium.v1.Fleet/PullTask"


def _outcomes(info: dict[str, object]) -> dict[tuple[int, str], dict[str, str]]:
    rounds = info["rounds"]
    assert isinstance(rounds, list)
    return {(r["round"], n["node"]): n for r in rounds for n in r["nodes"]}


class TricklingNode(PlayedNode):
    """``va``: in round 1, a reply of 1.6 MB, sent 1 KiB every 0.4 s (never a stall)."""

    def __init__(self, deployment: Deployment) -> None:
        super().__init__(deployment, HOSTILE, "trickling-node")
        self.app = import_app(SLOW_APP, "slow_toy").client_app
        self.cut_off: grpc.RpcError | None = None
        self.cut_after = 0.0
        self.answered = 0

    def answer(self, task: Message) -> None:
        context = Context(node_id=HOSTILE, run_config=dict(CONFIG), seed=2)
        reply = run_task(self.app, task, context).reply  # type: ignore[arg-type]
        if self.cut_off is not None:
            accepted, detail = self.client.push_result(reply.to_parts(), reply.metadata.message_id)
            assert accepted, detail
            self.answered += 1
            return
        # at once (the honest nodes train for 0.5 s): it takes the budget first
        padded = task.reply(arrays=Arrays({"w": np.zeros(200_000)}), metrics={"num_examples": 1})
        payload = b"".join(bytes(p) for p in padded.to_parts())
        ended = threading.Event()

        def trickle() -> Iterator[Chunk]:
            for chunk in iter_chunks([payload], padded.metadata.message_id, chunk_size=1024):
                yield chunk
                if ended.wait(0.4):
                    return

        started = time.monotonic()
        answer = self.push_stream(trickle(), then=ended)
        self.cut_after = time.monotonic() - started
        assert isinstance(answer, grpc.RpcError), f"the trickled reply was taken: {answer}"
        self.cut_off = answer


def test_an_upload_that_trickles_while_others_wait_for_the_budget_is_cut_off(
    deployment: Deployment,
) -> None:
    """The 1 MiB budget admits the trickled reply, and the honest replies wait behind it.
    Before the floor, they waited until the round's deadline (60 s)."""
    deployment.start_server("--stall-timeout", str(STALL_S), "--transfer-budget-mb", "1")
    for name in HONEST:
        deployment.start_node(name)
    bad = TricklingNode(deployment)
    bad.start()
    try:
        started = time.monotonic()
        run_id = deployment.start_run(SLOW_APP, CONFIG, seed=2)
        info = deployment.wait_run(run_id, timeout=90)
        took = time.monotonic() - started
    finally:
        bad.close()
    assert bad.error is None, bad.error
    assert info["status"] == "finished", (info, deployment.log("server"))
    assert took < 30, f"the run took {took:.0f} s"
    assert isinstance(bad.cut_off, grpc.Call) and bad.cut_off.code() == grpc.StatusCode.CANCELLED
    # judged over a whole stall timeout, then at the watch's next look
    assert STALL_S <= bad.cut_after < STALL_S + 5
    outcomes = _outcomes(info)
    assert outcomes[(1, HOSTILE)]["outcome"] == "failed"
    reason = outcomes[(1, HOSTILE)]["reason"]
    assert "its reply arrived at 0.0" in reason, reason
    assert "while other transfers waited, under the floor of 1.00 Mbit/s" in reason, reason
    assert all(outcomes[(1, n)]["outcome"] == "ok" for n in HONEST)
    assert all(outcomes[(r, n)]["outcome"] == "ok" for r in (2, 3) for n in NODES)
    assert bad.answered == 2


#: the big app's model: float32 parameters (32 MB, eight 4 MiB chunks)
SIZE = 8_000_000
BIG_APP = f"""
import numpy as np

from consortium import Arrays, ClientApp, FedAvg, ServerApp, ServerConfig

SIZE = {SIZE}

client_app = ClientApp()


@client_app.train()
def train(msg, ctx):
    w = np.asarray(msg.content.model["w"]) + np.float32(1)
    return msg.reply(arrays=Arrays({{"w": w}}), metrics={{"num_examples": 1}})


def _server(ctx):
    strategy = FedAvg(
        init_fn=lambda rng: Arrays({{"w": np.zeros(SIZE, np.float32)}}),
        fraction_evaluate=0.0,
        min_available_nodes=4,
    )
    return ServerConfig(strategy, num_rounds=2, min_replies=3, round_timeout=60.0, node_wait=60.0)


server_app = ServerApp(_server)
"""

BIG_MANIFEST = """
[app]
name = "big-model"
version = "1.0.0"
server = "big:server_app"
client = "big:client_app"
"""


class SlowReader(PlayedNode):
    """``va``: reads its first task one chunk every 1.5 s (4 MiB: 22 Mbit/s; never a stall;
    once the server found the download crawling, the rest comes in 1 MiB chunks), then
    answers nothing in that round; later tasks it reads at once and answers."""

    def __init__(self, deployment: Deployment, app: Path) -> None:
        super().__init__(deployment, HOSTILE, "slow-reader")
        self.app = import_app(app, "big").client_app
        self.cut_off: grpc.RpcError | None = None
        self.slow_done = False  # its first task pulled (or cut off)
        self.bytes_read = 0
        self.answered = 0
        # no BDP probing: gRPC's window stays small, so the server sends as it is read
        options = [*GRPC_OPTIONS, ("grpc.http2.bdp_probe", 0)]
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.tls.ca, private_key=self.tls.key,
            certificate_chain=self.tls.certificate,
        )  # fmt: skip
        if self.tls.server_name:
            options.append(("grpc.ssl_target_name_override", self.tls.server_name))
        self.channel = grpc.secure_channel(self.address, creds, options=options)

    def pull(self) -> Message | None:
        if self.slow_done:
            return super().pull()
        stream = self.channel.unary_stream(
            PULL, request_serializer=pb.PullRequest.SerializeToString,
            response_deserializer=decode_chunk,
        )(pb.PullRequest(wait_seconds=0.5), timeout=120)  # fmt: skip
        rebuild = Reassembler(2**30)
        try:
            for chunk in stream:
                rebuild.feed(chunk)
                self.bytes_read += len(chunk.data)
                if self.stop.wait(1.5):
                    return None
        except grpc.RpcError as exc:
            self.cut_off, self.slow_done = exc, True
            return None
        if not self.bytes_read:
            return None  # no task yet
        self.slow_done = True
        return Message.from_bytes(bytes(rebuild.result()))

    def answer(self, task: Message) -> None:
        context = Context(node_id=HOSTILE, run_config={}, seed=2)
        reply = run_task(self.app, task, context).reply  # type: ignore[arg-type]
        accepted, detail = self.client.push_result(reply.to_parts(), reply.metadata.message_id)
        assert accepted, detail
        self.answered += 1

    def close(self) -> None:
        super().close()
        self.channel.close()


def test_a_download_read_slowly_while_others_wait_for_the_budget_is_cut_off(
    deployment: Deployment, tmp_path: Path
) -> None:
    """The round's 32 MB model counts in the 48 MiB budget until every node has been sent
    it, so the honest replies (32 MB each) wait behind the slow reader. Its download
    moves 22 Mbit/s, under the floor of 50 set here: it is cut off after the 5 s
    window, and the honest replies arrive. Before the floor, the round waited for its
    whole download (12 s)."""
    app = write_app(tmp_path / "big", BIG_MANIFEST, {"big": BIG_APP})
    deployment.start_server(
        "--stall-timeout", "5", "--min-rate-mbit", "50", "--transfer-budget-mb", "48"
    )
    for name in HONEST:
        deployment.start_node(name, app=app)
    bad = SlowReader(deployment, app)
    bad.start()
    try:
        run_id = deployment.start_run(app, {}, seed=2)
        info = deployment.wait_run(run_id, timeout=120)
    finally:
        bad.close()
    assert bad.error is None, bad.error
    assert info["status"] == "finished", (info, deployment.log("server"))
    assert isinstance(bad.cut_off, grpc.Call) and bad.cut_off.code() == grpc.StatusCode.CANCELLED
    assert bad.bytes_read < 4 * SIZE, "it read its whole task: nothing cut it off"
    outcomes = _outcomes(info)
    assert outcomes[(1, HOSTILE)]["outcome"] == "failed"
    reason = outcomes[(1, HOSTILE)]["reason"]
    assert "the node read its task at" in reason, reason
    assert "while other transfers waited, under the floor of 50.00 Mbit/s" in reason, reason
    assert all(outcomes[(1, n)]["outcome"] == "ok" for n in HONEST)
    assert all(outcomes[(2, n)]["outcome"] == "ok" for n in NODES)
    assert bad.answered == 1
