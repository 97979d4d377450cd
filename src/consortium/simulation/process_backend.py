"""The processes backend: node tasks in batches, run by a pool of worker processes.

One call to a worker carries a *batch* of K node tasks
(:mod:`consortium.simulation.batch`): plain tuples, the round's model pickled
once for the whole batch, each node's state as plain data. The worker runs the
K tasks one after the other and sends back K replies and states in one answer.
A task sent alone would pay a pickled message, a pool round trip and a wake-up
of the driver each; in a batch those are paid once per K tasks, which is what
lets a second core pay off at 10,000 nodes of ~100 µs each.

K is ``nodes_per_batch`` when given; by default a call's tasks are cut into
about :data:`BATCHES_PER_WORKER` batches per worker (enough to balance the
workers and overlap the driver's work with theirs), at most
:data:`MAX_NODES_PER_BATCH` tasks, and fewer when the model is large (a batch
brings back K replies at once: about :data:`BATCH_REPLY_BYTES` of them).

The guarantees are those of the threads backend:

* replies are yielded in the order the tasks were sent, so the same seed gives
  a bit-identical model for any number of workers and any K;
* a node runs its tasks one after another: a batch holding a task for a node
  whose earlier task is still in another batch starts when that batch has
  ended, from the state it left; two tasks of one node in one batch run in
  turn in the worker;
* the driver keeps the nodes' states (as plain data) between rounds; a task
  whose app raised leaves its node's state as it was;
* a deadline gives up the batches that have not ended (a batch is the unit: its
  tasks are known finished when it has ended) and yields the ones that have;
* a worker that dies (killed, out of memory) fails the batches then in the
  pool: each of their tasks gets an error reply (``BrokenProcessPool``), the
  pool is started afresh for the next batches, and the run goes on as its
  strategy decides;
* workers that cannot load the app, or die before running any task, end the run with
  one :class:`~consortium.core.errors.ConfigError` saying why, as soon as the driver
  learns of it (it waits for them no longer than a call's deadline).
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import time
from collections import deque
from collections.abc import Callable, Container, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, CancelledError, Future, wait
from concurrent.futures.process import BrokenProcessPool, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from consortium.client.task import SIMULATION_ERROR_DETAIL, failure_reply
from consortium.core.errors import ConfigError
from consortium.core.message import Message
from consortium.core.protocol import ERROR_UNKNOWN_NODE
from consortium.core.records import Config
from consortium.simulation import worker
from consortium.simulation.batch import Job, PlainState, from_packed, to_plain

logger = logging.getLogger(__name__)

#: the most node tasks in one batch by default (a batch's tasks are known finished
#: together: a larger one saves little and makes the end of a round wait longer)
MAX_NODES_PER_BATCH = 256
#: by default, each batch takes about 1/(this × workers) of the call's tasks left
BATCHES_PER_WORKER = 4
#: ... but not fewer tasks than this, unless the call has few (a call to a worker costs
#: ~100 µs of the driver)
MIN_NODES_PER_BATCH = 8
#: batches of one send_and_receive in the pool at a time, per worker: one running and
#: one waiting, so a worker never waits for the driver to read the batch before
IN_FLIGHT_PER_WORKER = 2
#: by default, a batch brings back about this many bytes of model replies at most
BATCH_REPLY_BYTES = 8 * 1024 * 1024


#: why the first workers of a run died before running a task, as far as the driver can
#: tell: their own error went to standard error
WORKERS_DID_NOT_START = (
    "the processes backend's worker processes ended before running any task (their error "
    "is printed above it). Each worker imports the script that started the run again: a "
    "script that calls run_simulation when imported must do so under `if __name__ == "
    '"__main__":`. Or run with backend="threads"'
)

#: a batch's call to a worker: its results and the buffer its reply arrays are packed in
_Call = Future[tuple[list[Any], bytes]]


@dataclass(eq=False, slots=True)
class _Batch:
    """Node tasks sent to a worker in one call, and what became of them."""

    messages: list[Message]
    #: the reply to each message (None: not known yet, or given up)
    replies: list[Message | None]
    #: the unfinished batches that held an earlier task of one of its nodes: it starts
    #: when they have ended, from the states they left
    after: list[_Batch] = field(default_factory=list)
    #: which messages went to the worker (the others were answered at once)
    jobs: list[int] = field(default_factory=list)
    call: _Call | None = None
    pool: ProcessPoolExecutor | None = None
    ended: bool = False
    #: its replies are no longer wanted (its round's deadline passed)
    given_up: bool = False


class ProcessNodes:
    """Virtual nodes run in batches by worker processes (see the module docstring)."""

    def __init__(
        self,
        app_ref: str,
        app_path: Sequence[str],
        *,
        known: Container[str],
        node_config: Callable[[str], Config],
        run_config: Config,
        seed: int,
        workers: int,
        nodes_per_batch: int | None = None,
    ) -> None:
        if nodes_per_batch is not None and nodes_per_batch < 1:
            raise ConfigError(f"nodes_per_batch must be >= 1, got {nodes_per_batch}")
        self._init = (app_ref, list(app_path), run_config, seed)
        self._known = known
        self._node_config = node_config
        self._workers = workers
        self._per_batch = nodes_per_batch
        self._executor: ProcessPoolExecutor | None = None
        self._states: dict[str, PlainState] = {}
        #: each node's latest batch not ended yet (the node's next batch starts after it)
        self._latest: dict[str, _Batch] = {}
        self._running: dict[_Call, _Batch] = {}  # in the pool, not ended yet
        self._waiting: list[_Batch] = []  # waiting for a batch of one of its nodes to end
        self._pushed: deque[tuple[_Batch, int]] = deque()  # pushed, not pulled, in push order
        # start the workers now: their start-up (a fork, the app's import) then overlaps
        # the server's own set-up instead of delaying the first round
        pool = self._pool()
        #: whether the first workers started and loaded the app, until each is known
        #: (:meth:`_check_started`)
        self._started = [pool.submit(worker.ready) for _ in range(workers)]

    # -- the grid's calls ---------------------------------------------------------------
    def send_and_receive(
        self, messages: Sequence[Message], deadline: float | None
    ) -> Iterator[Message]:
        """The replies to ``messages`` in send order; at ``deadline`` (``time.time()``)
        the batches that ended still count and the others are given up."""
        self._check_started(deadline)
        chunks = self._cut(messages)
        window = IN_FLIGHT_PER_WORKER * self._workers
        mine: deque[_Batch] = deque(self._start(c) for c in itertools.islice(chunks, window))
        try:
            while mine:
                head = mine[0]
                if not self._wait_for(head, deadline):
                    self._pump()
                    for batch in mine:
                        if batch.ended:
                            yield from self._replies(batch)
                        else:
                            self._give_up(batch)
                    mine.clear()
                    return
                mine.popleft()
                mine.extend(self._start(c) for c in itertools.islice(chunks, 1))
                yield from self._replies(head)
        finally:
            for batch in mine:  # the caller stopped reading early
                self._give_up(batch)

    def push(self, messages: Sequence[Message]) -> None:
        self._check_started(time.time())  # those started by now: pull waits for the others
        for chunk in self._cut(messages):
            batch = self._start(chunk)
            self._pushed.extend((batch, i) for i in range(len(chunk)))

    def pull(self, timeout: float | None) -> Message | None:
        """The next pushed task to finish (of those finished, the one pushed first)."""
        deadline = None if timeout is None else time.time() + timeout
        self._check_started(deadline)
        while self._pushed:
            self._pump()
            for handle in self._pushed:
                batch, i = handle
                if batch.ended:
                    self._pushed.remove(handle)
                    reply = batch.replies[i]
                    assert reply is not None, "a pushed task is never given up"
                    return reply
            if not self._wait_any(deadline):
                return None
        return None

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        self._running.clear()
        self._waiting.clear()
        self._latest.clear()
        self._pushed.clear()

    # -- batches ------------------------------------------------------------------------
    def _cut(self, messages: Sequence[Message]) -> Iterator[list[Message]]:
        """``messages`` in batches, in order: of ``nodes_per_batch`` each when given; by
        default each batch takes a share of what is left (about
        :data:`BATCHES_PER_WORKER` per worker, at most :data:`MAX_NODES_PER_BATCH`,
        at most :data:`BATCH_REPLY_BYTES` of model): batches shrink towards the end
        of a round, so the workers finish it together instead of one waiting for the
        other's last large batch."""
        most = self._per_batch or MAX_NODES_PER_BATCH
        content = messages[0].content if messages and self._per_batch is None else None
        model_bytes = sum(a.nbytes for a in content.arrays.values()) if content else 0
        if model_bytes:
            most = max(1, min(most, BATCH_REPLY_BYTES // model_bytes))
        shares = BATCHES_PER_WORKER * self._workers
        least = min(MIN_NODES_PER_BATCH, most, -(-len(messages) // shares))
        start = 0
        while start < len(messages):
            size = most
            if self._per_batch is None:
                size = max(least, min(most, -(-(len(messages) - start) // shares)))
            yield list(messages[start : start + size])
            start += size

    def _start(self, messages: list[Message]) -> _Batch:
        """A batch of ``messages``: sent to the pool now, or once its nodes' earlier
        batches have ended."""
        batch = _Batch(messages, [None] * len(messages))
        before: dict[int, _Batch] = {}
        for i, msg in enumerate(messages):
            node = msg.metadata.dst
            if node not in self._known:
                batch.replies[i] = msg.error_reply(
                    ERROR_UNKNOWN_NODE, f"no simulated node {node!r}"
                )
                continue
            earlier = self._latest.get(node)
            if earlier is not None and earlier is not batch:
                before[id(earlier)] = earlier
            self._latest[node] = batch
            batch.jobs.append(i)
        batch.after = list(before.values())
        if batch.after:
            self._waiting.append(batch)
        else:
            self._submit(batch)
        return batch

    def _check_started(self, deadline: float | None) -> None:
        """Raise a clear error if the first workers could not start or load the app: every
        batch would fail the same way, each node with a bare ``BrokenProcessPool``. Waits
        for them until ``deadline`` (``time.time()``) at most: those not started by then
        are checked at a later call, and the batches meanwhile go to the pool as usual.

        Raises:
            ConfigError: the app's own import error, or why a worker may have died at
                start (its error went to standard error).
        """
        if not self._started:
            return
        remaining = None if deadline is None else max(0.0, deadline - time.time())
        done, pending = wait(self._started, timeout=remaining)
        self._started = list(pending)
        for ready in done:
            try:
                ready.result()
            except ConfigError as exc:  # the app's import: its error and traceback are the text
                raise ConfigError(str(exc)) from None
            except BrokenProcessPool:
                raise ConfigError(WORKERS_DID_NOT_START) from None

    def _submit(self, batch: _Batch) -> None:
        """Send ``batch`` to a worker: each model and state once, the tasks as plain data."""
        if not batch.jobs or batch.given_up:
            self._end(batch)
            return
        objects: list[Any] = []
        at: dict[int, int] = {}  # id of an Arrays record or a state -> its position
        jobs: list[Job] = []
        for i in batch.jobs:
            msg = batch.messages[i]
            assert msg.content is not None, "a task carries content"
            positions = []
            for arrays in msg.content.arrays.values():
                if id(arrays) not in at:
                    at[id(arrays)] = len(objects)
                    objects.append(list(arrays.items()))
                positions.append(at[id(arrays)])
            node = msg.metadata.dst
            state = self._states.get(node)
            if state is not None and id(state) not in at:
                at[id(state)] = len(objects)
                objects.append(state)
            state_at = at[id(state)] if state is not None else None
            plain = to_plain(msg, {})
            jobs.append(
                (plain, list(msg.content.arrays), positions, self._node_config(node), state_at)
            )
        for attempt in (1, 2):
            pool = self._pool()
            try:
                batch.call = pool.submit(worker.run_batch, jobs, objects)
            except BrokenProcessPool:  # a worker died since the last batch: start afresh
                self._drop_pool(pool)
                if attempt == 2:
                    raise
                continue
            batch.pool = pool
            self._running[batch.call] = batch
            return

    def _pump(self) -> None:
        """End the batches the pool has finished; submit those no longer waiting."""
        for call in [c for c in self._running if c.done()]:
            self._end(self._running.pop(call))
        if self._waiting:
            ready = [b for b in self._waiting if all(e.ended for e in b.after)]
            for batch in ready:
                self._waiting.remove(batch)
                batch.after = []  # let the ended batches go (a node's chain could be long)
                self._submit(batch)

    def _end(self, batch: _Batch) -> None:
        """Keep what ``batch`` gave: its replies, and its nodes' states after it."""
        call = batch.call
        results: list[Any] | None = None
        buffer = bytearray()
        failed: BaseException | None = None
        if call is not None:
            try:
                results, packed = call.result()
                buffer = bytearray(packed)  # the replies' arrays: writable, as received ones are
            except CancelledError as exc:  # given up before a worker took it, or closing
                failed = exc
            except Exception as exc:  # a worker died, or could not load the app
                failed = exc
                logger.warning("a batch of %d node tasks failed: %r", len(batch.jobs), exc)
                if isinstance(exc, BrokenProcessPool) and batch.pool is not None:
                    self._drop_pool(batch.pool)
        if results is not None:
            for k, i in enumerate(batch.jobs):
                (plain, _, has_state), after = results[2 * k], results[2 * k + 1]
                node = batch.messages[i].metadata.dst
                if has_state:  # (a task that raised hands back the state it was given)
                    self._states[node] = after
                else:
                    self._states.pop(node, None)
                if not batch.given_up:
                    batch.replies[i] = from_packed(plain, buffer)
        elif not batch.given_up:  # its nodes keep the states they had before it
            why = failed if failed is not None else CancelledError()
            for i in batch.jobs:
                batch.replies[i] = failure_reply(batch.messages[i], why, SIMULATION_ERROR_DETAIL)
        batch.ended = True
        for i in batch.jobs:
            node = batch.messages[i].metadata.dst
            if self._latest.get(node) is batch:
                del self._latest[node]

    def _replies(self, batch: _Batch) -> Iterator[Message]:
        for reply in batch.replies:
            assert reply is not None, "an ended batch has every reply"
            yield reply

    def _give_up(self, batch: _Batch) -> None:
        """Its replies are no longer wanted. A batch still waiting ends, without running,
        when the batches before it have; one in the pool is cancelled if no worker has
        taken it yet, or else left to end (its nodes' states are kept, as with threads)."""
        batch.given_up = True
        if batch.call is not None:
            batch.call.cancel()

    # -- waiting ------------------------------------------------------------------------
    def _wait_for(self, batch: _Batch, deadline: float | None) -> bool:
        """Wait until ``batch`` has ended (True) or ``deadline`` has passed (False)."""
        while True:
            self._pump()
            if batch.ended:
                return True
            if not self._wait_any(deadline):
                return False

    def _wait_any(self, deadline: float | None) -> bool:
        """Wait until a batch in the pool has finished; False when ``deadline`` passed."""
        remaining = None if deadline is None else deadline - time.time()
        if remaining is not None and remaining <= 0:
            return False
        assert self._running, "a waiting batch always waits on one in the pool"
        done, _ = wait(list(self._running), timeout=remaining, return_when=FIRST_COMPLETED)
        return bool(done)

    # -- the pool -----------------------------------------------------------------------
    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            # forkserver, not fork: the driver may run threads (tracking, progress) whose
            # locks a forked child would inherit held. Each worker imports what it needs
            # itself (the worker module costs ~33 MB and 0.14 s since the package imports
            # lazily); preloading it in the forkserver saved little time and held one more
            # copy (10,000 nodes: 203 MB of summed RSS with it, 196 MB without)
            context = multiprocessing.get_context("forkserver")
            self._executor = ProcessPoolExecutor(
                self._workers,
                mp_context=context,
                initializer=worker.init_worker,
                initargs=self._init,
            )
        return self._executor

    def _drop_pool(self, pool: ProcessPoolExecutor) -> None:
        """A worker of ``pool`` died: the pool is broken; the next batch starts a new one."""
        if pool is self._executor:
            self._executor = None
            pool.shutdown(wait=False, cancel_futures=True)
