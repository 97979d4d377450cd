"""The server side of one vertical protocol step: every party's task out, every reply back.

Vertical logistic regression, SecureBoost and split learning each advance in steps
where the server sends one task to some parties and cannot go on without every one
of their replies (unlike a horizontal round, which goes on with the nodes that
answered). :class:`Relay` is that step, shared by the three: a reply that answers
no task of the step, comes from another node than its task's, or repeats a party
fails the run, as does a party's error reply or silence; it counts the bytes each
party sent and received, for the run's per-party metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from consortium.core.errors import RoundFailed, UpdateRejected
from consortium.core.grid import Grid
from consortium.core.message import Content, Message
from consortium.core.records import Config

#: checks one reply's content against the step's kind and number; raises UpdateRejected
ReplyCheck = Callable[[str, int, Content], None]


def content_bytes(content: Content | None) -> int:
    """The bytes of a content's arrays (what a party's message carries in bulk)."""
    return 0 if content is None else sum(a.nbytes for a in content.arrays.values())


class Relay:
    """Sends one step's tasks, insists on every reply, counts every party's bytes.

    ``protocol`` and ``unit`` name the run and its steps in failures ("vertical LR
    residual, step 3: party lab failed: ..."); ``check`` (optional) vets each reply's
    content before it is accepted.
    """

    def __init__(
        self,
        grid: Grid,
        run_id: str,
        timeout: float,
        *,
        protocol: str,
        unit: str = "step",
        check: ReplyCheck | None = None,
    ) -> None:
        self.grid, self.run_id, self.timeout = grid, run_id, timeout
        self.protocol, self.unit, self.check = protocol, unit, check
        self.sent: dict[str, int] = {}
        self.received: dict[str, int] = {}
        #: over the whole run: round trips made, bytes sent and received by all parties
        self.round_trips = 0
        self.total = 0

    def step(self, kind: str, step: int, tasks: dict[str, Content]) -> dict[str, Content]:
        """Each party's reply to its task of ``kind`` at ``step``; RoundFailed if any is
        missing, failed, stray or refused by ``check``."""
        where = f"{self.protocol} {kind}, {self.unit} {step}"
        messages = [
            Message.create(run_id=self.run_id, dst=node, round=step, kind=kind, content=content)
            for node, content in tasks.items()
        ]
        by_id = {m.metadata.message_id: m for m in messages}
        replies: dict[str, Content] = {}
        self.round_trips += 1
        for reply in self.grid.send_and_receive(messages, timeout=self.timeout):
            message = by_id.get(reply.metadata.reply_to or "")
            node = message.metadata.dst if message is not None else reply.metadata.src
            if message is None or reply.metadata.src != node or node in replies:
                raise RoundFailed(f"{where}: a reply that answers no task, from {node}")
            if reply.error is not None or reply.content is None:
                reason = reply.error.reason if reply.error is not None else "no content"
                raise RoundFailed(f"{where}: party {node} failed: {reason}")
            if self.check is not None:
                try:
                    self.check(kind, step, reply.content)
                except UpdateRejected as exc:
                    raise RoundFailed(f"{where}: party {node}: {exc}") from exc
            replies[node] = reply.content
            out, back = content_bytes(message.content), content_bytes(reply.content)
            self.sent[node] = self.sent.get(node, 0) + out
            self.received[node] = self.received.get(node, 0) + back
            self.total += out + back
        missing = sorted(set(tasks) - set(replies))
        if missing:
            raise RoundFailed(f"{where}: no reply from {missing} in time")
        return replies

    def take_counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """Bytes sent to and received from each party since the last call, then reset."""
        out = (self.sent, self.received)
        self.sent, self.received = {}, {}
        return out


@dataclass(frozen=True)
class Party:
    """A party as its setup reply described it."""

    node: str
    role: str
    feature_names: tuple[str, ...]


@dataclass(frozen=True)
class SetupKeys:
    """The names a protocol's setup replies use (each protocol has its own prefix)."""

    role: str
    feature_names: str
    train_rows: str
    test_rows: str
    #: the reply's feature count, checked against its names (None: not sent)
    features: str | None = None
    active: str = "active"
    passive: str = "passive"


def read_parties(
    configs: dict[str, Config], nodes: list[str], keys: SetupKeys, *, protocol: str, min_train: int
) -> tuple[Party, list[Party], int, int]:
    """The label holder, the passive parties (in ``nodes`` order) and the aligned rows
    (train, held out) every setup reply must agree on; RoundFailed naming what is wrong."""
    parties, shapes = [], set()
    for node in nodes:
        config = configs[node]
        role, names = config.get(keys.role), config.get(keys.feature_names)
        if role not in (keys.active, keys.passive) or not isinstance(names, list) or not names:
            raise RoundFailed(f"party {node}'s setup reply names no role or features")
        if keys.features is not None and config.get(keys.features) != len(names):
            raise RoundFailed(f"party {node}'s setup reply counts its features wrong")
        parties.append(Party(node, str(role), tuple(str(n) for n in names)))
        shapes.add((config.get(keys.train_rows), config.get(keys.test_rows)))
    actives = [p for p in parties if p.role == keys.active]
    if len(actives) != 1:
        raise RoundFailed(f"{protocol} needs exactly one label holder, got {len(actives)}")
    if len(shapes) != 1:
        raise RoundFailed(
            f"the parties' aligned rows differ (train, test): {sorted(shapes, key=str)}"
        )
    train, test = shapes.pop()
    if not isinstance(train, int) or not isinstance(test, int) or train < min_train or test < 0:
        raise RoundFailed(f"the parties' aligned rows are not usable: train {train}, test {test}")
    return actives[0], [p for p in parties if p.role == keys.passive], train, test
