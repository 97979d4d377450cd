"""Nodes that look slow gain no more than the server's bounds allow.

A node decides how fast it reads and sends, so it can make the server count its link
as slow (``--slow-link-mbit``): its reply then spills to disk at once when the transfer
budget cannot take it. Here every node looks slow (a threshold over any link), and the
spill folder has room for one 16 MB reply (``--spill-mb 20``): the others do not spill
past that room but wait for the budget as replies always did, so the four uploads do
not all move together, and the run still ends with every reply folded.
"""

from __future__ import annotations

from pathlib import Path

from deploy.conftest import Deployment
from hostile.paced_node import ONE_UPLOAD_S, paced_run, spread


def test_nodes_that_look_slow_take_no_more_disk_than_the_spill_folder_has(
    deployment: Deployment, tmp_path: Path
) -> None:
    _, uploads = paced_run(
        deployment, tmp_path, "--spill-mb", "20", "--spill-dir", str(tmp_path / "spill"),
        "--spill-after", "60", "--slow-link-mbit", "100000000",
    )  # fmt: skip
    # with room for all four on disk they end within two uploads' time of the first start
    # (test_spill_deployed.py); with room for one, the others waited their turn
    assert spread(uploads) > 2 * ONE_UPLOAD_S, uploads
    log = deployment.log("server")
    assert "to disk: the transfer budget is full and its node's link is slow" in log
    assert list((tmp_path / "spill").iterdir()) == []  # nothing left behind
