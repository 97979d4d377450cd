"""The ``secagg`` part of ``benchmarks/privacy.py``: SecAgg+ against plain FedAvg.

One FedAvg round over ``n`` simulated nodes whose updates are fixed (uniform in
[-1, 1], seeded by node id, weighted by a per-node example count), run twice:
through :class:`SecAggPlusWorkflow` with the nodes' ``secaggplus_mod``, and
through the plain round loop. A recording grid between the round loop and the
nodes encodes every task and reply with :meth:`Message.to_bytes` (the wire
form the gRPC transport sends) to count bytes per node, and keeps the masked
vectors for the uniformity tests. Dropouts are nodes that raise at a stage:
after key setup (at the masked-input task: their input is missing and their
neighbours reveal the round's pairwise seeds with them; the label
"after-share-keys" is kept for the report's continuity) or after their masked
input (at the unmask task).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import stats

from consortium.client import ClientApp
from consortium.client.app import Handler, Mod
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.grid import Grid, GridWrapper
from consortium.core.message import TRAIN, Message
from consortium.core.protocol import NUM_EXAMPLES
from consortium.privacy.secagg import Ed25519Keyring, SecAggParams, secaggplus_mod
from consortium.privacy.secagg import protocol as p
from consortium.server import ServerApp, ServerConfig
from consortium.server.context import ServerContext
from consortium.server.workflow.rounds import RoundWorkflow
from consortium.server.workflow.secagg import SecAggPlusWorkflow
from consortium.simulation import run_simulation
from consortium.strategy import FedAvg

Dropout = Literal["none", "after-share-keys", "after-masked-input"]
DROPOUTS: tuple[Dropout, ...] = ("none", "after-share-keys", "after-masked-input")
#: the task a dropping node fails at: the masked-input task (so it set up its keys
#: but sent no input) or the unmask task (its input is in the sum)
FAIL_AT = {"after-share-keys": TRAIN, "after-masked-input": p.UNMASK}
DROP_FRACTION = 0.3
#: buckets of the chi-square test: the top 8 bits of each masked value
CHI2_BITS = 8


def model(size: int) -> Arrays:
    """The global model: ``size`` float64 values in two arrays."""
    head = min(6, size // 2)
    return Arrays({"w": np.linspace(-1, 1, size - head), "b": np.full((head,), 0.5)})


def update_of(node: str, size: int) -> np.ndarray:
    return np.random.default_rng([7, int(node)]).uniform(-1, 1, size)


def examples_of(node: str) -> int:
    return 10 + 3 * (int(node) % 30)


def dropped_nodes(n: int, dropout: Dropout) -> list[str]:
    """⌊0.3·n⌋ nodes (at least one), spread over the ids; none without dropouts."""
    if dropout == "none":
        return []
    count = max(1, int(DROP_FRACTION * n))
    return [str(i) for i in np.linspace(0, n - 1, count + 2).round().astype(int)[1:-1]]


def _train(message: Message, context: Context) -> Message:
    assert message.content is not None and message.content.model is not None
    received = message.content.model
    flat = update_of(context.node_id, sum(a.size for a in received.values()))
    out, start = Arrays(), 0
    for name, value in received.items():
        out[name] = value + flat[start : start + value.size].reshape(value.shape)
        start += value.size
    return message.reply(arrays=out, metrics={NUM_EXAMPLES: examples_of(context.node_id)})


def _timed(spent: dict[str, float]) -> Mod:
    """Adds the seconds each node spends on its tasks (its mods and handler) to ``spent``."""

    def timed(message: Message, context: Context, call_next: Handler) -> Message:
        began = time.perf_counter()
        try:
            return call_next(message, context)
        finally:
            spent[context.node_id] += time.perf_counter() - began

    return timed


def _fail_at(kinds: dict[str, str]) -> Mod:
    def fail(message: Message, context: Context, call_next: Handler) -> Message:
        if kinds.get(context.node_id) == message.metadata.kind:
            raise RuntimeError(f"node {context.node_id} drops out at {message.metadata.kind}")
        return call_next(message, context)

    return fail


@dataclass
class WireGrid(GridWrapper):
    """Passes everything on; counts each task's and reply's encoded bytes per node and
    keeps the train replies and the masked vectors the server receives."""

    inner: Grid
    down: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    up: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    masked: list[np.ndarray] = field(default_factory=list)
    train_replies: list[Message] = field(default_factory=list)

    def send_and_receive(
        self, messages: Sequence[Message], *, timeout: float | None
    ) -> Iterator[Message]:
        for m in messages:
            self.down[m.metadata.dst] += len(m.to_bytes())
        for reply in self.inner.send_and_receive(messages, timeout=timeout):
            self.up[reply.metadata.src] += len(reply.to_bytes())
            if reply.metadata.kind == TRAIN:
                self.train_replies.append(reply)
            content = reply.content
            if content is not None and p.MASKED in content.arrays:
                self.masked.append(np.asarray(content.arrays[p.MASKED][p.MASKED]))
            yield reply


@dataclass
class Round:
    """One finished round: the mean update, its time (the round's, and the mean a node
    spent on its tasks), the traffic per node and the masked vectors."""

    mean_update: np.ndarray
    seconds: float
    node_seconds: float
    down_per_node: float
    up_per_node: float
    masked: list[np.ndarray]
    metrics: dict[str, Any]


def one_round(n: int, size: int, *, secure: bool, dropout: Dropout = "none") -> Round:
    """One FedAvg round over nodes "0" … "n-1", with SecAgg+ or in the clear."""
    nodes = [str(i) for i in range(n)]
    drop = dropped_nodes(n, dropout)
    if not secure:  # in the clear only "after-share-keys" changes who is summed
        drop = drop if dropout == "after-share-keys" else []
    kinds = {d: FAIL_AT[dropout] if secure else TRAIN for d in drop}
    spent: dict[str, float] = defaultdict(float)
    mods = [_fail_at(kinds), _timed(spent)]
    if secure:
        keys = Ed25519Keyring.generate(nodes)
        mods.append(secaggplus_mod(keys.sign, keys.verify))
    client = ClientApp(mods=mods)
    client.train()(_train)
    server = ServerApp()
    start = model(size)

    @server.main()
    def main(grid: Grid, context: ServerContext) -> None:
        strategy = FedAvg(initial_arrays=start, fraction_evaluate=0.0)
        config = ServerConfig(strategy, num_rounds=1, evaluate_every=0)
        if secure:
            SecAggPlusWorkflow(config, SecAggParams())(grid, context)
        else:
            RoundWorkflow(config)(grid, context)

    grids: list[WireGrid] = []

    def wrap(grid: Grid) -> Grid:
        grids.append(WireGrid(grid))
        return grids[-1]

    began = time.perf_counter()
    result = run_simulation(server, client, node_ids=nodes, grid_wrapper=wrap, seed=3)
    wall = time.perf_counter() - began
    record = result.history.rounds[-1]
    wire = grids[-1]
    mean = np.concatenate([(result.arrays[k] - start[k]).ravel() for k in start])
    return Round(
        mean_update=mean,
        seconds=record.seconds or wall,
        node_seconds=sum(spent.values()) / n,
        down_per_node=sum(wire.down.values()) / n,
        up_per_node=sum(wire.up.values()) / n,
        masked=wire.masked,
        metrics=dict(record.train_metrics),
    )


def expected_mean(nodes: Sequence[str], size: int) -> np.ndarray:
    weights = np.array([examples_of(u) for u in nodes], dtype=np.float64)
    updates = np.stack([update_of(u, size) for u in nodes])
    mean: np.ndarray = (weights[:, None] * updates).sum(axis=0) / weights.sum()
    return mean


def uniformity(masked: list[np.ndarray], modulus_bits: int) -> dict[str, float]:
    """Chi-square over the top ``CHI2_BITS`` bits and KS against U[0, 1) of ``value / M``."""
    values = np.concatenate(masked)
    top = (values >> np.uint64(modulus_bits - CHI2_BITS)).astype(np.int64)
    counts = np.bincount(top, minlength=1 << CHI2_BITS)
    chi2 = stats.chisquare(counts)
    ks = stats.kstest(values.astype(np.float64) / float(1 << modulus_bits), "uniform")
    return {
        "values": int(values.size),
        "chi2_buckets": int(counts.size),
        "chi2_statistic": float(chi2.statistic),
        "chi2_p_value": float(chi2.pvalue),
        "ks_statistic": float(ks.statistic),
        "ks_p_value": float(ks.pvalue),
    }


def secagg_rows(sizes: Sequence[int], model_size: int) -> dict[str, Any]:
    """Every (n, dropout) row, and the uniformity test of each n's masked vectors."""
    params = SecAggParams()
    rows: list[dict[str, Any]] = []
    tests: list[dict[str, Any]] = []
    for n in sizes:
        for dropout in DROPOUTS:
            secure = one_round(n, model_size, secure=True, dropout=dropout)
            plain = one_round(n, model_size, secure=False, dropout=dropout)
            nodes = [str(i) for i in range(n)]
            gone = dropped_nodes(n, dropout) if dropout == "after-share-keys" else []
            summed = [u for u in nodes if u not in gone]
            rows.append(
                {
                    "n": n,
                    "dropout": dropout,
                    "dropped": len(dropped_nodes(n, dropout)),
                    "summed": int(secure.metrics["secagg.survivors"]),
                    "model_values": model_size,
                    "max_abs_diff_vs_fedavg": float(
                        np.abs(secure.mean_update - plain.mean_update).max()
                    ),
                    "max_abs_diff_vs_exact": float(
                        np.abs(secure.mean_update - expected_mean(summed, model_size)).max()
                    ),
                    "quantization_step": params.step,
                    "secagg_round_s": secure.seconds,
                    "fedavg_round_s": plain.seconds,
                    "time_ratio": secure.seconds / plain.seconds,
                    "secagg_node_s": secure.node_seconds,
                    "fedavg_node_s": plain.node_seconds,
                    "secagg_bytes_per_node": secure.down_per_node + secure.up_per_node,
                    "secagg_down_bytes_per_node": secure.down_per_node,
                    "secagg_up_bytes_per_node": secure.up_per_node,
                    "fedavg_bytes_per_node": plain.down_per_node + plain.up_per_node,
                    "bytes_ratio": (secure.down_per_node + secure.up_per_node)
                    / (plain.down_per_node + plain.up_per_node),
                }
            )
            if dropout == "none":
                tests.append({"n": n, **uniformity(secure.masked, params.modulus_bits)})
    return {
        "params": {
            "clip": params.clip,
            "quantization_bits": params.quantization_bits,
            "modulus_bits": params.modulus_bits,
            "neighbours": "6*ceil(log2 n), at most n-1",
            "drop_fraction": DROP_FRACTION,
        },
        "rows": rows,
        "uniformity": tests,
    }
