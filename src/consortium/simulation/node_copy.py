"""A task as a node in this process receives it: its own records, the arrays read-only.

A deployed node decodes its task into objects of its own; the processes and Ray
backends hand their workers a batch's model read-only, and give each task
records of its own over it (``batch.run_jobs``). The threads backend runs the
nodes in the server's process, where every task of a
round points at the same model and config objects: a node that wrote into its
model, or replaced an entry of a record, would change what the next node
receives (and the round's result would depend on the backend). So each task
gets records of its own (new ``Arrays`` and config dicts), and the arrays are
read-only views of the server's: writing into one raises, as with Ray and the
processes backend, instead of reaching another node. Views, not copies: a
round's model is shared, not copied per node.
"""

from __future__ import annotations

import numpy as np

from consortium.core.arrays import Arrays
from consortium.core.message import Content, Message
from consortium.core.records import Config, Metrics, config_copy

#: per call of the grid: id of an arrays record -> (the record, its read-only views).
#: Each distinct record of a round is viewed once; the record itself is kept beside its
#: views, so that its id cannot be reused by another record while the call lasts.
ReadOnlyViews = dict[int, tuple[Arrays, list[tuple[str, np.ndarray]]]]


def node_copy(msg: Message, views: ReadOnlyViews) -> Message:
    """``msg`` with records of its own: new ``Arrays`` of read-only views of its arrays,
    new config and metrics dicts (list values copied). An error message is as it is."""
    content = msg.content
    if content is None:
        return msg
    arrays: dict[str, Arrays] = {}
    for name, record in content.arrays.items():
        seen = views.get(id(record))
        if seen is None or seen[0] is not record:
            seen = views[id(record)] = (record, [(k, _read_only(a)) for k, a in record.items()])
        arrays[name] = Arrays.of_ndarrays(seen[1])
    return Message(msg.metadata, content=own_content(arrays, content.configs, content.metrics))


def own_content(
    arrays: dict[str, Arrays], configs: dict[str, Config], metrics: dict[str, Metrics]
) -> Content:
    """A task's content of its own: ``arrays`` (records made for it) and copies of the
    config and metrics records, which the tasks of a round may share."""
    return Content(
        arrays,
        {name: config_copy(config) for name, config in configs.items()},
        {name: dict(values) for name, values in metrics.items()},
    )


def _read_only(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view
