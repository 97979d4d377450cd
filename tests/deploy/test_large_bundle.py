"""App bundles far above gRPC's 4 MiB message limit: uploaded and fetched as chunk streams.

A 100 MiB bundle (an incompressible data file in the app folder, built with
``consortium app build`` and signed) is started with ``consortium run start``;
a node with a policy file fetches it, verifies it and runs its code. A bundle
over the receiver's limit is refused at its first chunk, on both sides.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from consortium.apps.bundle import MIB, bundle_digest, make_bundle
from consortium.apps.publisher_keys import generate_key, load_private_key
from consortium.apps.signing import sign_bundle
from consortium.core import audit
from consortium.core.errors import TransportError, WireFormatError
from consortium.transport.chunks import Chunk, encode_chunk
from consortium.transport.grpc_client import open_channel
from consortium.transport.grpc_payloads import ENVELOPE_BYTES, start_run_chunks
from consortium.transport.proto import fleet_pb2 as pb

from .conftest import EXE, SLOW_APP, Deployment, Federation
from .inprocess import InProcess, serve_in_process

ONE_ROUND = ("num-rounds=1", "min-nodes=1", "min-replies=1")


def _app_with_data(root: Path, size: int) -> Path:
    """The slow-toy app with ``size`` bytes of random (incompressible) data beside its code."""
    folder = root / "bigapp"
    shutil.copytree(SLOW_APP, folder, ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "weights.bin").write_bytes(os.urandom(size))
    return folder


def test_a_100_mib_bundle_starts_and_the_node_fetches_verifies_and_runs_it(
    deployment: Deployment, tmp_path: Path
) -> None:
    app = _app_with_data(tmp_path, 100 * MIB)
    cab = tmp_path / "big.cab"
    built = subprocess.run(
        [EXE, "app", "build", str(app), "-o", str(cab)], capture_output=True, text=True, check=False
    )
    assert built.returncode == 0, built.stderr
    assert cab.stat().st_size > 100 * MIB  # incompressible: the bundle itself is that large
    generate_key(tmp_path / "publisher.key")
    cab.write_bytes(sign_bundle(cab.read_bytes(), load_private_key(tmp_path / "publisher.key")))
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    shutil.copy(tmp_path / "publisher.pub", trusted)
    policy = tmp_path / "policy.toml"
    pinned = bundle_digest(cab.read_bytes())  # run exactly this build
    policy.write_text(f'[trust]\npublishers = "{trusted}"\n\n[[allow]]\nsha256 = "{pinned}"\n')

    port = deployment.start_server()
    deployment.start_node("va", policy=policy)
    overrides = [a for o in ONE_ROUND for a in ("--run-config", o)]
    started = subprocess.run(
        [EXE, "run", "start", str(cab), "--server", f"127.0.0.1:{port}",
         "--credentials", str(deployment.fed.creds("alice")), *overrides],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.strip().splitlines()[-1]
    info = deployment.wait_run(run_id)
    assert info["status"] == "finished", (info, deployment.log("va"))
    (node,) = info["rounds"][0]["nodes"]
    assert (node["node"], node["outcome"]) == ("va", "ok")
    # the node ran the bundle it fetched: its data file arrived whole
    fetched = deployment.workdir / "nodes" / "va" / "apps" / pinned
    data = (fetched / "weights.bin").read_bytes()
    assert (
        hashlib.sha256(data).digest() == hashlib.sha256((app / "weights.bin").read_bytes()).digest()
    )


@pytest.fixture
def small_limit(federation: Federation, tmp_path: Path) -> Iterator[InProcess]:
    """A server that takes app bundles of at most 4 MiB."""
    with serve_in_process(federation, tmp_path / "server", max_bundle_bytes=4 * MIB) as served:
        yield served


def test_an_oversized_upload_is_refused_at_its_first_chunk(
    small_limit: InProcess, federation: Federation, tmp_path: Path
) -> None:
    bundle = make_bundle(_app_with_data(tmp_path, 40 * MIB))
    limit = 4 * MIB + ENVELOPE_BYTES
    admin = small_limit.client("alice")
    with pytest.raises(TransportError) as refused:
        admin.start_run(bundle, {}, 0)
    assert "RESOURCE_EXHAUSTED" in str(refused.value)
    assert f"exceeds the limit of {limit} bytes" in str(refused.value)
    admin.close()

    # the same upload, counting what the client got to send before the refusal
    chunks = list(start_run_chunks(bundle, "{}", 0))
    sent: list[Chunk] = []

    def counted() -> Iterator[Chunk]:
        for chunk in chunks:
            if sent:  # give the refusal time to come back: gRPC's sending thread pulls
                time.sleep(0.1)  # chunks as fast as its window allows, whatever the server does
            sent.append(chunk)
            yield chunk

    channel = open_channel(small_limit.address, federation.tls("alice"))
    upload = channel.stream_unary(
        "/consortium.v1.Control/StartRun",
        request_serializer=encode_chunk,
        response_deserializer=pb.StartRunReply.FromString,
    )
    with pytest.raises(grpc.RpcError) as raw:
        upload(counted(), timeout=60)
    assert raw.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    assert len(chunks) >= 10 and len(sent) <= 4  # refused at its first chunk, not read on
    channel.close()
    events = small_limit.find(audit.RUN_START, "alice")
    assert [e.outcome for e in events] == ["failed", "failed"]
    assert small_limit.runs.list_runs() == []


def test_a_node_refuses_a_bundle_over_its_limit_at_the_first_chunk(
    small_limit: InProcess, tmp_path: Path
) -> None:
    admin = small_limit.client("alice")
    bundle = make_bundle(_app_with_data(tmp_path, 3 * MIB))  # under the server's 4 MiB
    run_id = admin.start_run(bundle, {"min-nodes": 1, "min-replies": 1}, 0)
    node = small_limit.node("va", max_bundle_bytes=64 * 1024)
    with pytest.raises(WireFormatError, match=f"fetching run {run_id}: message of"):
        node.get_run(run_id)
    fits = small_limit.node("cleveland", max_bundle_bytes=4 * MIB)
    fetched = fits.get_run(run_id)
    assert fetched.bundle == bundle
    assert fetched.bundle_sha256 == bundle_digest(bundle)
    admin.stop_run(run_id)
    for client in (admin, node, fits):
        client.close()
