"""A batch of node tasks as plain data: what the processes and Ray backends hand a worker.

Messages travel as plain tuples (:data:`PlainMessage`): metadata fields,
configs, metrics, and each Arrays record as a list of (name, array) pairs.
A batch carries K node tasks (:data:`Job`) and, once, the objects they point
into: the round's model, shared by every task of the batch, and the nodes'
states. Plain tuples pickle in C, with no per-message header to build or
parse, which is what makes a batch cheap per task; the Ray backend hands the
same objects through its object store.

:func:`run_jobs` is the worker's half, the same for both backends: it runs the
batch's tasks one after the other through the one task runner
(:func:`consortium.client.task.run_task`), a node's second task in the batch
starting from the state its first one left.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from consortium.client.app import ClientApp
from consortium.client.task import SIMULATION_ERROR_DETAIL, run_task
from consortium.core.arrays import Arrays
from consortium.core.context import Context, NodeState
from consortium.core.message import Content, Error, Message, Metadata
from consortium.core.records import Config, Metrics, config_copy
from consortium.simulation.node_copy import own_content

#: A record of arrays as it crosses to a worker: (name, array) pairs, in order.
ArrayPairs = list[tuple[str, Any]]
#: metadata fields, configs, metrics, {record: array pairs} or None, error fields or None
PlainMessage = tuple[
    tuple[Any, ...],
    dict[str, Config],
    dict[str, Metrics],
    dict[str, ArrayPairs] | None,
    tuple[str, str, str] | None,
]
#: a node's state as plain data: arrays records, configs, metrics
PlainState = tuple[dict[str, ArrayPairs], dict[str, Config], dict[str, Metrics]]
#: one node task of a batch: the task (its arrays left out), its records' names and their
#: positions among the batch's objects, the node's config, its state's position (or None)
Job = tuple[PlainMessage, list[str], list[int], Config, int | None]
#: what a job gives back, in two parts: (the reply, whether the app raised — its state
#: changes are then dropped, as a deployed node drops them —, whether the node keeps a
#: state), and the node's state after the task (what it had, if the app raised)
JobResult = tuple[tuple[PlainMessage, bool, bool], PlainState | None]
#: a reply's array moved into its batch's buffer: dtype, shape, offset in the buffer
PackedArray = tuple[str, tuple[int, ...], int]
#: where packed arrays start in the buffer: a multiple of this (any dtype's alignment)
_PACK_ALIGN = 16


def to_plain(msg: Message, records: dict[str, ArrayPairs] | None = None) -> PlainMessage:
    """``msg`` as plain data; ``records`` replaces its arrays (e.g. by their positions)."""
    m = msg.metadata
    meta = (m.run_id, m.message_id, m.src, m.dst, m.round, m.kind, m.reply_to, m.deadline,
            m.created_at)  # fmt: skip
    if msg.error is not None:
        err = msg.error
        return meta, {}, {}, None, (err.code, err.reason, err.traceback)
    assert msg.content is not None
    content = msg.content
    if records is None:
        records = {name: list(arrays.items()) for name, arrays in content.arrays.items()}
    return meta, content.configs, content.metrics, records, None


def from_plain(plain: PlainMessage) -> Message:
    meta, configs, metrics, records, error = plain
    metadata = Metadata(*meta)
    if error is not None:
        return Message(metadata, error=Error(*error))
    arrays = {name: Arrays.of_ndarrays(pairs) for name, pairs in (records or {}).items()}
    return Message(metadata, content=Content(arrays, configs, metrics))


def run_jobs(
    client_app: ClientApp,
    run_config: Config,
    seed: int,
    jobs: Sequence[Job],
    objects: Sequence[Any],
) -> list[Any]:
    """Run a batch of node tasks, one after the other, in this worker.

    ``objects`` are the Arrays records (as pairs) and node states the jobs
    point into; a round's model, shared by every job, appears once. Returns
    the two parts of each job's :data:`JobResult`, one after the other (two
    entries per job: Ray returns each as an object of its own). A node with
    two tasks in the batch runs the second from the state the first left.
    """
    out: list[Any] = []
    left: dict[str, PlainState | None] = {}
    for task, names, positions, node_config, state_at in jobs:
        meta, configs, metrics, _, _ = task
        # records of its own over the batch's read-only arrays, and configs of its own
        # (unpickled, the tasks of a batch share the config dicts the server shared): a
        # node that replaced an entry or changed its config changes only its own task
        records = {
            name: Arrays.of_ndarrays(objects[i]) for name, i in zip(names, positions, strict=True)
        }
        msg = Message(Metadata(*meta), content=own_content(records, configs, metrics))
        node = msg.metadata.dst
        state = left[node] if node in left else objects[state_at] if state_at is not None else None
        context = Context(  # configs of its own: a batch's tasks share the unpickled ones
            node_id=node,
            node_config=config_copy(node_config),
            run_config=config_copy(run_config),
            state=_own_state(state) if state is not None else NodeState(),
            seed=seed,
        )
        result = run_task(client_app, msg, context, error_detail=SIMULATION_ERROR_DETAIL)
        kept = context.state
        after: PlainState | None
        if result.raised:  # its state changes are dropped: the node keeps what it had
            after = state
        elif kept.is_empty():
            after = None
        else:
            plain = {name: list(arrays.items()) for name, arrays in kept.arrays.items()}
            after = (plain, kept.configs, kept.metrics)
        left[node] = after
        out += [(to_plain(result.reply), result.raised, after is not None), after]
    return out


def _own_state(state: PlainState) -> NodeState:
    """The node's state for one task: its own copy of the arrays (node code may update
    them in place, and a failed task must leave what it was given untouched)."""
    arrays, configs, metrics = state
    return NodeState(
        {name: Arrays((k, v.copy()) for k, v in pairs) for name, pairs in arrays.items()},
        dict(configs),
        dict(metrics),
    )


def pack_replies(results: list[Any]) -> bytes:
    """Move the reply arrays of :func:`run_jobs`'s ``results`` into one buffer, in place.

    Each array of a plain numeric dtype becomes a :data:`PackedArray` pointing into
    the returned buffer; the others stay arrays. Pickling an array costs about as
    much as a small node task's whole framework share, twice (out and back in);
    one buffer for the batch costs one copy. The nodes' states are left as they
    are: the driver keeps them, and a view into a batch's buffer would keep the
    whole batch alive.
    """
    parts: list[Any] = []
    size = 0
    for k in range(0, len(results), 2):
        (plain, raised, has_state) = results[k]
        records = plain[3]
        if not records:
            continue
        packed: dict[str, ArrayPairs] = {}
        for record, pairs in records.items():
            moved: ArrayPairs = []
            for name, array in pairs:
                if (
                    isinstance(array, np.ndarray)
                    and array.dtype.isbuiltin == 1
                    and (array.dtype.kind in "biufc")
                ):
                    moved.append((name, (array.dtype.str, array.shape, size)))
                    parts.append(array.tobytes())  # (C order, whatever its strides)
                    size += array.nbytes
                    pad = -size % _PACK_ALIGN
                    if pad:
                        parts.append(bytes(pad))
                        size += pad
                else:
                    moved.append((name, array))
            packed[record] = moved
        results[k] = ((plain[0], plain[1], plain[2], packed, plain[4]), raised, has_state)
    return b"".join(parts)


def from_packed(plain: PlainMessage, buffer: bytearray) -> Message:
    """The reply ``plain`` (its arrays packed by :func:`pack_replies`) as a Message, its
    arrays views into ``buffer``: writable, and marked exclusive (nothing else holds
    them), as the arrays of a message just received from the wire are."""
    meta, configs, metrics, records, error = plain
    metadata = Metadata(*meta)
    if error is not None:
        return Message(metadata, error=Error(*error))
    content: dict[str, Arrays] = {}
    for record, pairs in (records or {}).items():
        arrays = Arrays.of_ndarrays(
            [
                (name, np.ndarray(value[1], value[0], buffer, value[2]))
                if isinstance(value, tuple)
                else (name, value)  # an array pack_replies left as it was
                for name, value in pairs
            ]
        )
        arrays.exclusive = True
        content[record] = arrays
    return Message(metadata, content=Content(content, configs, metrics))
