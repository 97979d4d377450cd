"""Four honest nodes behind slow links, played by a test: each pushes its 16 MB reply in
1 MiB chunks 0.2 s apart, as over a ~40 Mbit/s link, to a server whose transfer budget
holds one such reply (``tests/deploy/test_spill_deployed.py``,
``test_hostile_slow_links.py``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

from consortium.client.task import run_task
from consortium.core.context import Context
from consortium.core.message import Message
from consortium.transport.chunks import Chunk, iter_chunks
from deploy.conftest import NODES, Deployment, import_app, write_app
from hostile.played_node import PlayedNode

SIZE = 4_000_000  # float32: 16 MB, sixteen chunks of 1 MiB
APP = f"""
import numpy as np

from consortium import Arrays, ClientApp, FedAvg, ServerApp, ServerConfig

client_app = ClientApp()


@client_app.train()
def train(msg, ctx):
    step = np.float32(1 + int(ctx.node_config["center-index"]))
    w = np.asarray(msg.content.model["w"]) + step
    return msg.reply(arrays=Arrays({{"w": w}}), metrics={{"num_examples": 1}})


def _server(ctx):
    strategy = FedAvg(
        init_fn=lambda rng: Arrays({{"w": np.zeros({SIZE}, np.float32)}}),
        fraction_evaluate=0.0,
        min_available_nodes=4,
    )
    return ServerConfig(strategy, num_rounds=1, min_replies=4, round_timeout=120.0)


server_app = ServerApp(_server)
"""
MANIFEST = """
[app]
name = "spilled"
version = "1.0.0"
server = "spilled:server_app"
client = "spilled:client_app"
"""
#: seconds between two chunks of an upload, and the chunks' size
PACE_S = 0.2
CHUNK = 1024 * 1024


class PacedNode(PlayedNode):
    """An honest node behind a slow link: its reply goes one chunk every PACE_S."""

    def __init__(self, deployment: Deployment, name: str, app: Path) -> None:
        super().__init__(deployment, name, f"paced-{name}")
        self.app = import_app(app, "spilled").client_app
        self.index = NODES.index(name)
        #: (start, end) of its upload
        self.upload: tuple[float, float] | None = None

    def answer(self, task: Message) -> None:
        context = Context(node_id=self.name, node_config={"center-index": self.index})
        reply = run_task(self.app, task, context).reply  # type: ignore[arg-type]
        payload = b"".join(bytes(p) for p in reply.to_parts())
        stop = threading.Event()

        def paced() -> Iterator[Chunk]:
            chunks = iter_chunks([payload], reply.metadata.message_id, chunk_size=CHUNK)
            for i, chunk in enumerate(chunks):
                if i and stop.wait(PACE_S):
                    return
                yield chunk

        started = time.monotonic()
        answer = self.push_stream(paced(), timeout=120, then=stop)
        self.upload = (started, time.monotonic())
        assert not isinstance(answer, BaseException), answer
        assert answer.accepted, answer.detail


#: an upload's own time: sixteen chunks, fifteen pauses
ONE_UPLOAD_S = 15 * PACE_S


def paced_run(
    deployment: Deployment, tmp_path: Path, *server_args: str
) -> tuple[str, list[tuple[float, float]]]:
    """A one-round run of the four paced nodes on a server started with ``server_args``
    (the budget holding one reply): its id, and each node's upload (start, end)."""
    app = write_app(tmp_path / "spilled", MANIFEST, {"spilled": APP})
    deployment.start_server("--transfer-budget-mb", "24", "--unread-mb", "1", *server_args)
    nodes = [PacedNode(deployment, name, app) for name in NODES]
    for node in nodes:
        node.start()
    try:
        run_id = deployment.start_run(app, {}, seed=1)
        info = deployment.wait_run(run_id, timeout=120)
    finally:
        for node in nodes:
            node.close()
    assert all(node.error is None for node in nodes), [node.error for node in nodes]
    assert info["status"] == "finished", (info, deployment.log("server"))
    uploads = [node.upload for node in nodes if node.upload is not None]
    assert len(uploads) == len(nodes)
    return run_id, uploads


def spread(uploads: list[tuple[float, float]]) -> float:
    """Seconds from the first upload's start to the last one's end."""
    return max(end for _, end in uploads) - min(start for start, _ in uploads)
