"""ClientApp: return the received arrays plus a small deterministic change."""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    server_round = int(msg.content["config"]["server-round"])
    partition = int(context.node_config.get("partition-id", 0))
    delta = np.float32(0.001 * (partition + 1) * server_round)  # as transport_app does
    arrays = [a + delta for a in msg.content["arrays"].to_numpy_ndarrays()]
    content = RecordDict(
        {"arrays": ArrayRecord(arrays), "metrics": MetricRecord({"num-examples": 100})}
    )
    return Message(content=content, reply_to=msg)
