"""A custom main in two phases that saves its progress with the documented checkpoint API.

Phase 1 trains on every node; phase 2 on two nodes drawn from the main's own
``numpy`` generator, whose position is saved in each checkpoint together with
the model and the best loss so far. After a crash the main is called again
and continues from ``context.restored``: the final model is the same as an
uninterrupted run's.
"""

from __future__ import annotations

import time

import numpy as np

from consortium import Arrays, ClientApp, Content, Context, Message
from consortium.core.grid import Grid
from consortium.core.history import RoundRecord
from consortium.server import ServerApp, ServerContext

DIM = 8

client_app = ClientApp()


@client_app.train()
def train(msg: Message, ctx: Context) -> Message:
    assert msg.content is not None and msg.content.model is not None
    time.sleep(float(ctx.run_config.get("delay", 0.0)))
    rng = ctx.rng(msg.metadata.round)
    lr = float(msg.content.config["lr"])
    w = np.array(msg.content.model["w"], copy=True)
    target = rng.normal(size=w.shape) + len(ctx.node_id)
    w -= lr * (w - target)
    return msg.reply(arrays=Arrays({"w": w}), metrics={"num_examples": 1, "loss": float(w @ w)})


app = ServerApp()


@app.main()
def main(grid: Grid, context: ServerContext) -> None:
    cfg = context.run_config
    warmup, sampled = int(cfg["warmup-rounds"]), int(cfg["sampled-rounds"])
    total = warmup + sampled
    rng = np.random.default_rng(context.seed)
    if context.restored is not None:  # re-entered after a crash: continue from there
        step, model = context.restored.round, context.restored.arrays
        rng.bit_generator.state = context.restored.state["rng"]
        best = float(context.restored.state["best"])
    else:
        step, model, best = 0, Arrays({"w": np.zeros(DIM)}), float("inf")
        context.save_checkpoint(0, model, {"rng": rng.bit_generator.state, "best": best})
    nodes = sorted(grid.wait_for_nodes(int(cfg["min-nodes"]), timeout=60))
    context.start_run(nodes, total, {"warmup": warmup, "sampled": sampled})
    while step < total:
        step += 1
        context.check_stop(step)
        warm = step <= warmup
        chosen = nodes if warm else sorted(rng.choice(nodes, size=2, replace=False).tolist())
        train = Content.of(model, {"lr": 0.5 if warm else 0.1})
        tasks = [
            Message.create(run_id=context.run_id, dst=n, round=step, kind="train", content=train)
            for n in chosen
        ]
        updates = [r.content.model for r in grid.send_and_receive(tasks, timeout=60)
                   if r.content is not None and r.content.model is not None]  # fmt: skip
        if len(updates) < len(chosen):
            raise RuntimeError(f"step {step}: {len(chosen) - len(updates)} node(s) failed")
        model = Arrays({"w": np.mean([u["w"] for u in updates], axis=0)})
        loss = float(model["w"] @ model["w"])
        best = min(best, loss)
        context.report(RoundRecord(step, train_metrics={"loss": loss, "best": best}))
        context.save_checkpoint(step, model, {"rng": rng.bit_generator.state, "best": best})
    context.finish(model)
