"""On slow links, large replies upload at once: those the transfer budget cannot hold yet
are received to disk (``--spill-mb``), not made to wait for the ones before.

A real server (gRPC, mutual TLS) and four nodes played by the test, each pushing its
16 MB reply in 1 MiB chunks 0.2 s apart, as over a ~40 Mbit/s link (HTTP/2 windows
of 256 KiB, ``--unread-mb 1``, so that a waiting upload is held back, not buffered).
The budget (24 MiB) holds one such reply: without spilling, each upload waits for
the one before to be received and folded; with it, the four are received together
and read back from disk one after the other. Either way the fold is exact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from consortium.core.arrays import Arrays
from hostile.paced_node import ONE_UPLOAD_S, SIZE, paced_run, spread

from .conftest import Deployment


@pytest.mark.parametrize("spill_mb", [256, 0], ids=["spilled", "waiting"])
def test_large_replies_on_slow_links_upload_together_when_they_may_spill(
    deployment: Deployment, tmp_path: Path, spill_mb: int
) -> None:
    spill_dir = tmp_path / "spill"
    run_id, uploads = paced_run(
        deployment, tmp_path,
        "--spill-mb", str(spill_mb), "--spill-dir", str(spill_dir), "--spill-after", "2",
    )  # fmt: skip
    admin = deployment.fed.admin(deployment.port)
    try:
        model = Arrays.from_bytes(admin.download_model(run_id))
    finally:
        admin.close()
    assert np.array_equal(model["w"], np.full(SIZE, 2.5, np.float32))  # mean of 1, 2, 3, 4

    if spill_mb:
        # all four moving at once: the last ended about one upload after the first began
        assert spread(uploads) < 2 * ONE_UPLOAD_S, uploads
        assert list(spill_dir.iterdir()) == []  # each file unlinked as soon as opened
    else:
        # one after the other: the budget let each in only once the one before was folded
        assert spread(uploads) > 3 * ONE_UPLOAD_S, uploads


def test_replies_from_nodes_known_to_be_on_slow_links_spill_without_waiting(
    deployment: Deployment, tmp_path: Path
) -> None:
    """The server measured each node's link from its 16 MB task; with a threshold over
    any link here, every node counts as slow: a reply the budget cannot take is received
    to disk at once, not after the 60 s ``--spill-after`` gives replies from fast links,
    so the four uploads move together."""
    _, uploads = paced_run(
        deployment, tmp_path, "--spill-mb", "256", "--spill-dir", str(tmp_path / "spill"),
        "--spill-after", "60", "--slow-link-mbit", "100000000",
    )  # fmt: skip
    assert spread(uploads) < 2 * ONE_UPLOAD_S, uploads  # together, as with a short wait
    log = deployment.log("server")
    assert log.count("to disk: the transfer budget is full and its node's link is slow") >= 2
