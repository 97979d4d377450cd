"""A hostile node's model-sized replies, received into the shared memory of the server's app.

From 16 MiB on, the server receives a reply straight into a shared block of the
run's app process and the app folds it where it lies (``sandbox/shared_blocks.py``).
The other hostile-node tests use small models, whose replies never take that path.
Here the server app sends a 20 MB model to ``cleveland`` (a ``consortium node``
process, honest) and to ``va``, played by this test. Every round ``va`` first sends
one bad reply — a corrupt chunk, a stream cut short or broken off, arrays whose
header does not match their bytes, a size larger than its task allows, a stream
that goes silent part-way — and then, where the server still waits for it, the
honest reply. So:

(a) every honest reply reaches the app exact, ``cleveland``'s in every round and
    ``va``'s wherever the server took its retry;
(b) the bad reply gets the gRPC status and message its fault calls for, and the
    server logs it with the node's name;
(c) a block a refused reply was received into is free again: the server ends with
    no more blocks than two replies at once need (each refusal that kept its block
    would have made one more, up to four, after which replies go through the socket);
(d) the server's resident memory stays below ``RSS_BOUND``.
"""

from __future__ import annotations

import json
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from consortium.core.arrays import Arrays
from consortium.core.message import Message
from consortium.sandbox.confine import landlock_available
from consortium.transport.chunks import Chunk, iter_chunks
from consortium.transport.proto import fleet_pb2 as pb
from deploy.conftest import PLUS_ONE_APP, PLUS_ONE_MAIN, writable_blocks, write_app

from .conftest import Deployment
from .played_node import PlayedNode
from .test_hostile_replies import RSS_BOUND, PeakRss

pytestmark = pytest.mark.skipif(not landlock_available(), reason="needs Linux Landlock")

HONEST = "cleveland"
HOSTILE = "va"
STALL_S = 2.0
#: chunks of the bad streams: small enough that a 20 MB reply is cut part-way through
CHUNK = 1024 * 1024

APP = PLUS_ONE_APP + PLUS_ONE_MAIN

MANIFEST = """
[app]
name = "model-sized"
version = "1.0.0"
server = "big:app"
client = "big:client"
"""


def _chunks(reply: Message) -> list[Chunk]:
    return list(iter_chunks(reply.to_parts(), reply.metadata.message_id, chunk_size=CHUNK))


def _corrupt_chunk(reply: Message) -> Iterator[Chunk]:
    """Chunk 5 (in the model's bytes, past every header) with one byte changed."""
    chunks = _chunks(reply)
    data = bytearray(chunks[5].data)
    data[1000] ^= 0xFF
    chunks[5].data = data
    return iter(chunks)


def _cut_short(reply: Message) -> Iterator[Chunk]:
    """Half the chunks, then the stream ends without its last one."""
    chunks = _chunks(reply)
    return iter(chunks[: len(chunks) // 2])


def _broken_off(reply: Message) -> Iterator[Chunk]:
    """Half the chunks, then the sender's stream fails (gRPC cancels the call)."""
    chunks = _chunks(reply)
    yield from chunks[: len(chunks) // 2]
    raise ConnectionAbortedError("the node broke off")


def _wider_dtype(reply: Message) -> Iterator[Chunk]:
    """The model's header says float64: twice the bytes the reply carries."""
    encoded = bytearray(reply.to_bytes())
    at = encoded.index(b"CSA1")
    (length,) = struct.unpack_from("<I", encoded, at + 4)
    header = bytes(encoded[at + 8 : at + 8 + length])
    assert json.loads(header)["a"][0][1] == "<f4"
    encoded[at + 8 : at + 8 + length] = header.replace(b'"<f4"', b'"<f8"')
    return iter(iter_chunks(encoded, reply.metadata.message_id, chunk_size=CHUNK))


def _larger_than_allowed(reply: Message) -> Iterator[Chunk]:
    """The first chunk announces 1 GiB, far more than the task's 20 MB model allows."""
    first = _chunks(reply)[0]
    first.total_size = 1024**3
    first.last = False
    return iter([first])


@dataclass(frozen=True)
class Attack:
    chunks: Callable[[Message], Iterator[Chunk]]
    #: the status the bad push ends with (as ``va`` sees it) and words of its message
    status: grpc.StatusCode
    words: str
    #: the server still waits for the task after it: ``va`` retries, honestly
    retried: bool


#: round -> the bad reply ``va`` sends first (a round missing here: honest at once)
ATTACKS: dict[int, Attack] = {
    1: Attack(_corrupt_chunk, grpc.StatusCode.DATA_LOSS, "checksum mismatch in chunk 5", True),
    2: Attack(_cut_short, grpc.StatusCode.DATA_LOSS, "truncated stream", True),
    3: Attack(_broken_off, grpc.StatusCode.UNKNOWN, "iterating requests", True),
    4: Attack(_wider_dtype, grpc.StatusCode.INVALID_ARGUMENT, "float64 needs 40000000 bytes", True),
    5: Attack(_larger_than_allowed, grpc.StatusCode.RESOURCE_EXHAUSTED, "allows", True),
}
#: the round whose bad reply goes silent part-way: cut off after STALL_S, its task fails
SILENT_ROUND = 6
ROUNDS = 7


class HostileNode(PlayedNode):
    """``va``: answers each task with ``ATTACKS[round]`` first."""

    def __init__(self, deployment: Deployment) -> None:
        super().__init__(deployment, HOSTILE, "hostile-model-sized")
        #: round -> the RpcError its bad push ended with
        self.refusals: dict[int, grpc.RpcError | pb.PushReply] = {}

    def answer(self, task: Message) -> None:
        assert task.content is not None
        rnd = task.metadata.round
        reply = task.reply(arrays=Arrays({"w": task.content.arrays["model"]["w"] + 1}))
        if rnd == SILENT_ROUND:
            silent = threading.Event()
            self.refusals[rnd] = self.push_stream(_silent_part_way(reply, silent), then=silent)
            return
        attack = ATTACKS.get(rnd)
        if attack is not None:
            self.refusals[rnd] = self.push_stream(attack.chunks(reply))
            if not attack.retried:
                return
        accepted, detail = self.client.push_result(reply.to_parts(), reply.metadata.message_id)
        assert accepted, detail


def _silent_part_way(reply: Message, stop: threading.Event) -> Iterator[Chunk]:
    chunks = _chunks(reply)
    yield from chunks[: len(chunks) // 2]
    stop.wait(60)  # the rest never comes


def test_bad_model_sized_replies_are_refused_their_blocks_freed_and_honest_ones_arrive_exact(
    deployment: Deployment, tmp_path: Path
) -> None:
    app = write_app(tmp_path / "big", MANIFEST, {"big": APP})
    deployment.start_server("--stall-timeout", str(STALL_S))
    server = deployment.procs["server"].pid
    rss = PeakRss(server)
    deployment.start_node(HONEST, app=app)
    bad = HostileNode(deployment)
    bad.start()
    try:
        run_id = deployment.start_run(app, {"rounds": ROUNDS, "nodes": 2, "timeout": 30}, seed=1)
        deployment.wait_rounds(run_id, ROUNDS)
        blocks = writable_blocks(server)  # while the app process (and its blocks) lives
        (deployment.run_dir(run_id) / "work" / "go").write_text("")
        info = deployment.wait_run(run_id, timeout=120)
    finally:
        bad.close()
        peak = rss.close()
    log = deployment.log("server")
    assert bad.error is None, bad.error
    assert info["status"] == "finished", (info, log)
    rounds = {r["round"]: r["metrics"] for r in info["rounds"]}
    assert sorted(rounds) == list(range(1, ROUNDS + 1)), rounds
    # (a) every honest reply arrived exact; the silent round's task failed
    assert all(rounds[r][f"central_{HONEST}"] == 1.0 for r in rounds), rounds
    retried = [r for r, attack in ATTACKS.items() if attack.retried]
    assert all(rounds[r][f"central_{HOSTILE}"] == 1.0 for r in [*retried, ROUNDS]), rounds
    assert rounds[SILENT_ROUND][f"central_{HOSTILE}"] == -1.0, rounds
    # (b) each bad reply got the status its fault calls for, and the server says why
    for rnd, attack in ATTACKS.items():
        refusal = bad.refusals[rnd]
        assert isinstance(refusal, grpc.Call)
        assert refusal.code() == attack.status, (rnd, refusal.code(), refusal.details())
        assert attack.words in (refusal.details() or ""), (rnd, refusal.details())
    silent = bad.refusals[SILENT_ROUND]
    assert isinstance(silent, grpc.Call) and silent.code() == grpc.StatusCode.CANCELLED
    assert f"cut off receiving a reply from {HOSTILE}" in log, log
    # (c) no block stayed taken by a reply that was refused
    assert 1 <= blocks <= 2, f"the server made {blocks} blocks for its app"
    # (d)
    assert peak < RSS_BOUND, f"server RSS peaked at {peak / 2**20:.0f} MiB"
