"""The JSON the REST API answers with, built from the state store's records.

Kept apart from the routes so the shapes (what a client can rely on) are in one
place: a round's metrics, a node's part in it, the events a stream sends, a
model in a downloadable file format.
"""

from __future__ import annotations

import io
import math
from typing import Any, Literal

import numpy as np

from consortium.core.arrays import Arrays
from consortium.core.errors import MissingDependencyError
from consortium.core.history import NodeResult, Outcome, RoundRecord

#: the formats the server converts any model to (an app's own exports: control/models.py)
ModelFormat = Literal["npz", "safetensors"]


def number(value: float) -> float | None:
    """A metric as JSON allows it: NaN and infinities become null."""
    value = float(value)
    return value if math.isfinite(value) else None


def metrics_json(metrics: dict[str, Any]) -> dict[str, float | None]:
    return {k: number(v) for k, v in metrics.items()}


def node_json(n: NodeResult) -> dict[str, Any]:
    """One node's part in one stage of a round: outcome, metrics, examples, timing."""
    return {
        "node": n.node_id,
        "stage": n.stage,
        "outcome": n.outcome.value,
        "num_examples": n.num_examples,
        "seconds": number(n.seconds),
        "timing": metrics_json(dict(n.timing)),
        "metrics": metrics_json(dict(n.metrics)),
        "reason": n.reason,
    }


def round_json(r: RoundRecord) -> dict[str, Any]:
    """One finished round: its aggregated metrics and every node's part in it."""
    return {
        "round": r.round,
        "seconds": number(r.seconds),
        "metrics": metrics_json(r.global_metrics()),
        "train": metrics_json(dict(r.train_metrics)),
        "evaluate": metrics_json(dict(r.evaluate_metrics)),
        "central": metrics_json(dict(r.central_metrics)),
        "nodes": [node_json(n) for n in r.nodes],
    }


def failed_nodes(run_id: str, r: RoundRecord) -> list[dict[str, Any]]:
    """The ``node_failed`` events of a round: each node whose task did not end OK."""
    return [
        {
            "run_id": run_id,
            "round": r.round,
            "node": n.node_id,
            "stage": n.stage,
            "outcome": n.outcome.value,
            "reason": n.reason,
        }
        for n in r.nodes
        if n.outcome is not Outcome.OK
    ]


def sse(event: str, data: str, *, event_id: str | None = None) -> str:
    """One Server-Sent Event (``data`` is one line of JSON)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {data}\n\n"


def export_model(arrays: Arrays, fmt: ModelFormat) -> bytes:
    """``arrays`` as a file: ``.npz`` (numpy, no pickle) or ``.safetensors``."""
    named = {name: np.ascontiguousarray(a) for name, a in arrays.items()}
    if fmt == "safetensors":
        try:
            from safetensors.numpy import save
        except ImportError as exc:
            raise MissingDependencyError(
                "safetensors downloads need the safetensors package: "
                "pip install 'consortium[control]'"
            ) from exc
        out: bytes = save(named)
        return out
    buffer = io.BytesIO()
    np.savez(buffer, **named)  # type: ignore[arg-type]
    return buffer.getvalue()
