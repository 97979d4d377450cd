"""Asynchronous tasks in flight, and the model versions they started from.

An asynchronous workflow hands out tasks on model version v while the
server moves on to v+1, v+2, ...: each arrival is folded against the version
it started from. :class:`InFlight` keeps each task's node, number, version
and deadline, and each version's model exactly as long as a task still needs
it (and the current one), so the server holds O(versions in use) models.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from consortium.core.arrays import Arrays


@dataclass(frozen=True, slots=True)
class Task:
    """One task in flight: its node, its number, the version it started from, its times."""

    node: str
    number: int
    version: int
    started: float
    deadline: float | None


class InFlight:
    """Tasks in flight by message id, and the models of the versions they need."""

    def __init__(self, version: int, arrays: Arrays) -> None:
        #: the current model version
        self.version = version
        self.tasks: dict[str, Task] = {}
        self._models: dict[int, Arrays] = {version: arrays}
        self._refs: Counter[int] = Counter()

    def __len__(self) -> int:
        return len(self.tasks)

    def busy(self) -> set[str]:
        """The nodes working on a task."""
        return {t.node for t in self.tasks.values()}

    def start(self, message_id: str, task: Task) -> None:
        """``task`` was sent (it starts from the current version)."""
        self.tasks[message_id] = task
        self._refs[task.version] += 1

    def model(self, version: int) -> Arrays:
        """The model of ``version`` (the current one, or one a task still needs)."""
        return self._models[version]

    def advance(self, arrays: Arrays) -> None:
        """The server stepped: ``arrays`` is the new current version."""
        old = self.version
        self.version += 1
        self._models[self.version] = arrays
        if self._refs[old] == 0:
            self._models.pop(old, None)

    def finish(self, message_id: str) -> Task | None:
        """The task a reply answers (no longer in flight), or None if it is unknown or
        expired; call :meth:`release` once done with its base model."""
        return self.tasks.pop(message_id, None)

    def release(self, task: Task) -> None:
        """``task`` no longer needs its base model."""
        self._refs[task.version] -= 1
        if self._refs[task.version] <= 0:
            del self._refs[task.version]
            if task.version != self.version:
                self._models.pop(task.version, None)

    def expire(self, now: float) -> list[Task]:
        """Take out (and release) the tasks whose deadline passed at ``now``."""
        late = [(mid, t) for mid, t in self.tasks.items() if t.deadline is not None]
        out = []
        for mid, task in late:
            if task.deadline is not None and task.deadline <= now:
                del self.tasks[mid]
                self.release(task)
                out.append(task)
        return out

    def next_deadline(self) -> float | None:
        """The earliest deadline of a task in flight, if any has one."""
        ends = [t.deadline for t in self.tasks.values() if t.deadline is not None]
        return min(ends) if ends else None
