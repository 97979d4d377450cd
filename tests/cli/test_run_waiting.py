"""``run start --wait``: progress lines, and whom a run waits for (``run show``'s ``waiting``)."""

from __future__ import annotations

from typing import Any

from consortium.cli.run_cmd import wait_for_run
from consortium.server.fleet_grid import NODES, REPLIES, Waiting


def _waiting(missing: list[str], online: list[str], seconds: float, stage: str = NODES) -> Any:
    """``run show``'s ``waiting`` exactly as the server builds it."""
    return Waiting(stage, 4, tuple(missing), tuple(online), seconds).as_dict()


class Clock:
    """A fake clock that advances one second per poll (``sleep``)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _show(answers: list[dict[str, Any]]) -> Any:
    it = iter(answers)
    return lambda: next(it)


def _info(status: str, waiting: dict[str, Any] | None = None) -> dict[str, Any]:
    info: dict[str, Any] = {"run_id": "r1", "status": status, "rounds_done": 0, "rounds": []}
    if waiting is not None:
        info["waiting"] = waiting
    return info


def test_waiting_is_reported_at_most_every_ten_seconds() -> None:
    answers = [_info("running", _waiting(["va", "hungarian"], ["cleveland"], 3 + i))
               for i in range(25)]  # fmt: skip
    answers.append(_info("finished"))
    lines: list[str] = []
    clock = Clock()
    info = wait_for_run(_show(answers), lines.append, clock=clock, sleep=clock.sleep)
    assert info["status"] == "finished"
    waits = [line for line in lines if line.startswith("waiting")]
    assert waits == [
        "waiting 3s for nodes: va, hungarian (online: cleveland)",
        "waiting 13s for nodes: va, hungarian (online: cleveland)",
        "waiting 23s for nodes: va, hungarian (online: cleveland)",
    ]
    assert not any(line.startswith("run r1: still") for line in lines)  # waiting says more


def test_no_waiting_key_means_no_waiting_line() -> None:
    answers = [_info("running") for _ in range(12)] + [_info("finished")]
    lines: list[str] = []
    clock = Clock()
    wait_for_run(_show(answers), lines.append, clock=clock, sleep=clock.sleep)
    assert not any(line.startswith("waiting") for line in lines)
    assert any(line.startswith("run r1: still running") for line in lines)
    nobody_online = _info("running", _waiting(["va"], [], 0))
    lines.clear()
    wait_for_run(_show([nobody_online, _info("stopped")]), lines.append, clock=clock,
                 sleep=clock.sleep)  # fmt: skip
    assert "waiting 0s for nodes: va (online: none)" in lines
    lines.clear()
    replies = _info("running", _waiting(["va"], ["va", "cleveland"], 61.4, REPLIES))
    wait_for_run(_show([replies, _info("finished")]), lines.append, clock=clock,
                 sleep=clock.sleep)  # fmt: skip
    assert "waiting 61s for replies from: va (online: va, cleveland)" in lines
