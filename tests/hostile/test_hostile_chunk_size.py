"""A node that looks slow is told to reply in 1 MiB chunks, which take a quarter of a read
slot; one that sends 4 MiB chunks anyway would hold four times its share. Its reply is
refused at its first chunk over the size told, the server keeps serving, the same reply
in the chunks told is received, and the run ends with the right model.

Every link counts as slow here (``--slow-link-mbit`` over any link): the honest
``consortium node`` processes are told, at the end of their first download, to reply in
1 MiB chunks too, and do, or they would be refused as well.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np

from consortium.client.task import run_task
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.message import Message
from consortium.transport.chunks import CHUNK_SIZE, iter_chunks
from consortium.transport.link_chunks import SLOW_LINK_CHUNK_SIZE
from deploy.conftest import NODES, import_app, write_app

from .conftest import Deployment
from .played_node import PlayedNode
from .test_hostile_crawl import BIG_APP, BIG_MANIFEST, HONEST, HOSTILE, SIZE, _outcomes
from .test_hostile_replies import RSS_BOUND, PeakRss


class WideChunks(PlayedNode):
    """``va``: answers its first task in 4 MiB chunks whatever it was told, then, refused,
    in the chunks told (as it answers every later task)."""

    def __init__(self, deployment: Deployment, app: Path) -> None:
        super().__init__(deployment, HOSTILE, "wide-chunks")
        self.app = import_app(app, "big").client_app
        self.refused: grpc.RpcError | None = None
        self.told = 0  # the reply chunk size it was told with its first task

    def answer(self, task: Message) -> None:
        context = Context(node_id=HOSTILE, run_config={}, seed=2)
        reply = run_task(self.app, task, context).reply  # type: ignore[arg-type]
        parts, message_id = reply.to_parts(), reply.metadata.message_id
        if self.refused is None:
            self.told = self.client.reply_chunk_size
            answer = self.push_stream(iter_chunks(parts, message_id, chunk_size=CHUNK_SIZE))
            assert isinstance(answer, grpc.RpcError), f"4 MiB chunks were taken: {answer}"
            self.refused = answer
        accepted, detail = self.client.push_result(parts, message_id)
        assert accepted, detail


def test_a_reply_in_larger_chunks_than_told_is_refused_and_the_run_completes(
    deployment: Deployment, tmp_path: Path
) -> None:
    app = write_app(tmp_path / "big", BIG_MANIFEST, {"big": BIG_APP})
    deployment.start_server("--slow-link-mbit", "100000000")
    rss = PeakRss(deployment.procs["server"].pid)
    for name in HONEST:
        deployment.start_node(name, app=app)
    bad = WideChunks(deployment, app)
    bad.start()
    try:
        run_id = deployment.start_run(app, {}, seed=2)
        info = deployment.wait_run(run_id, timeout=120)
        admin = deployment.fed.admin(deployment.port)
        try:
            model = Arrays.from_bytes(admin.download_model(run_id))
        finally:
            admin.close()
    finally:
        bad.close()
    assert bad.error is None, bad.error
    assert rss.close() < RSS_BOUND
    assert info["status"] == "finished", (info, deployment.log("server"))
    # told at the end of its first download, its link then known to be slow
    assert bad.told == SLOW_LINK_CHUNK_SIZE
    assert bad.refused is not None
    assert bad.refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    why = f"a chunk of {CHUNK_SIZE} bytes, over the {SLOW_LINK_CHUNK_SIZE} this node was told"
    assert why in str(bad.refused.details())
    assert f"refused a reply from {HOSTILE}: {why}" in deployment.log("server")
    # every node's reply arrived, in the chunks told: each round added one to the model
    assert all(o["outcome"] == "ok" for o in _outcomes(info).values()), info
    assert {node for _, node in _outcomes(info)} == set(NODES)
    assert np.array_equal(model["w"], np.full(SIZE, 2.0, np.float32))
