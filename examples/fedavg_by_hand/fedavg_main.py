"""FedAvg by hand: a ServerApp main over the Grid (the example of docs/server-apps.md)."""

import numpy as np

from consortium import Arrays, Content, Message
from consortium.core.grid import Grid
from consortium.core.history import RoundRecord
from consortium.examples.heart_disease import initial_params
from consortium.server import ServerApp, ServerContext

app = ServerApp()


@app.main()
def main(grid: Grid, context: ServerContext) -> None:
    cfg = context.run_config
    rounds, lr, decay = int(cfg["num-rounds"]), float(cfg["lr"]), float(cfg["lr-decay"])
    by_examples = cfg["weighting"] == "examples"
    model = initial_params(context.rng(0, stream="init"))
    nodes = grid.wait_for_nodes(int(cfg["min-nodes"]), timeout=300)
    context.start_run(nodes, rounds, {"strategy": "FedAvg by hand"})
    for rnd in range(1, rounds + 1):
        train = Content.of(model, {"lr": lr * decay ** (rnd - 1)})
        tasks = [
            Message.create(run_id=context.run_id, dst=n, round=rnd, kind="train", content=train)
            for n in nodes
        ]
        sums: dict[str, np.ndarray] = {}
        total = 0.0
        for reply in grid.send_and_receive(tasks, timeout=None):  # replies in task order
            if reply.error is not None or reply.content is None or reply.content.model is None:
                continue  # a failed node: FedAvg goes on with the others
            weight = float(reply.content.metric_values["num_examples"]) if by_examples else 1.0
            for name, value in reply.content.model.items():
                scaled = np.multiply(value, weight, dtype=np.float64)
                sums[name] = scaled if name not in sums else sums[name] + scaled
            total += weight
        model = Arrays({k: (v / total).astype(model[k].dtype) for k, v in sums.items()})
        context.report(RoundRecord(round=rnd))
    context.finish(model)
