"""A SecAgg+ test app: nodes with known updates, stage failures, and a grid that records
(and can tamper with) everything the server sends and receives."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from consortium.client import ClientApp
from consortium.client.app import Handler, Mod
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.grid import Grid, GridWrapper
from consortium.core.message import Message
from consortium.core.protocol import NUM_EXAMPLES
from consortium.privacy.secagg import Ed25519Keyring, SecAggParams, secaggplus_mod
from consortium.server import ServerApp, ServerConfig
from consortium.server.context import ServerContext
from consortium.server.workflow.secagg import SecAggPlusWorkflow
from consortium.simulation import run_simulation
from consortium.simulation.grid import Backend
from consortium.strategy import FedAvg

#: coarse quantisation (step 2^-19), so the tests see real rounding error
PARAMS = SecAggParams(clip=1.0, quantization_bits=20, modulus_bits=40, max_weight=100)
#: chi-square over 16 equal buckets (15 degrees of freedom) that uniform values exceed with
#: probability 1e-9: the masks are drawn from fresh keys, so a test at p = 0.001 failed one
#: run in a thousand; a mask that leaks an update's shape scores in the thousands
CHI2_UNIFORM_16 = 73.6


def chi2_16(values: np.ndarray, bits: int) -> float:
    """The chi-square statistic of ``values`` in 16 equal buckets of ``[0, 2**bits)``."""
    buckets = np.bincount((values >> np.uint64(bits - 4)).astype(np.int64), minlength=16)
    expected = values.size / 16
    return float(((buckets - expected) ** 2 / expected).sum())


def model(size: int) -> Arrays:
    """The global model: two float64 arrays of ``size`` values in all."""
    head = min(6, size // 2)
    return Arrays({"w": np.linspace(-1, 1, size - head), "b": np.full((head,), 0.5)})


def update_of(node: str, size: int) -> np.ndarray:
    """Node ``node``'s update: fixed values in [-1, 1]."""
    return np.random.default_rng([7, int(node)]).uniform(-1, 1, size)


def examples_of(node: str) -> int:
    return 10 + 3 * (int(node) % 30)


def expected_mean(nodes: Sequence[str], size: int) -> np.ndarray:
    weights = np.array([examples_of(n) for n in nodes], dtype=np.float64)
    updates = np.stack([update_of(n, size) for n in nodes])
    return (weights[:, None] * updates).sum(axis=0) / weights.sum()


def bound(params: SecAggParams = PARAMS) -> float:
    """The largest error of the weighted mean: below one quantisation step (and a float ulp)."""
    return params.step * (1 + 1e-9)


def train(message: Message, context: Context) -> Message:
    assert message.content is not None and message.content.model is not None
    received = message.content.model
    flat = update_of(context.node_id, sum(a.size for a in received.values()))
    out, start = Arrays(), 0
    for name, value in received.items():
        out[name] = value + flat[start : start + value.size].reshape(value.shape)
        start += value.size
    return message.reply(arrays=out, metrics={NUM_EXAMPLES: examples_of(context.node_id)})


#: when a node drops: at a task kind (every round), or at a kind in one round only
Drop = str | tuple[str, int]


def fail_at(kinds: dict[str, Drop], slow: dict[str, tuple[str, float]] | None = None) -> Mod:
    """A mod making node n fail (drop out) when it gets a task of kind ``kinds[n]`` (of
    round ``kinds[n][1]`` when a pair), or sleep ``slow[n][1]`` seconds before answering a
    task of kind ``slow[n][0]``."""

    def fail(message: Message, context: Context, call_next: Handler) -> Message:
        when = kinds.get(context.node_id)
        meta = message.metadata
        if when == meta.kind or when == (meta.kind, meta.round):
            raise RuntimeError(f"node {context.node_id} drops out at {meta.kind}")
        kind, seconds = (slow or {}).get(context.node_id, ("", 0.0))
        if kind == message.metadata.kind:
            time.sleep(seconds)
        return call_next(message, context)

    return fail


def client_app(
    keyring: Ed25519Keyring,
    verify: Ed25519Keyring | None = None,
    drop: dict[str, Drop] | None = None,
    slow: dict[str, tuple[str, float]] | None = None,
) -> ClientApp:
    """The app: an outer mod that drops or slows nodes, SecAgg+, the train handler."""
    checker = verify or keyring
    mods = [fail_at(drop or {}, slow), secaggplus_mod(keyring.sign, checker.verify)]
    app = ClientApp(mods=mods)
    app.train()(train)
    return app


def fixed_keyring(nodes: Sequence[str]) -> Ed25519Keyring:
    """The same identity keys in every process (for the processes backend): not secret."""
    return Ed25519Keyring(
        {
            n: Ed25519PrivateKey.from_private_bytes(hashlib.sha256(n.encode()).digest())
            for n in nodes
        }
    )


#: the app the processes backend loads in each worker ("secagg_harness:PROCESS_APP")
PROCESS_APP = client_app(fixed_keyring([str(i) for i in range(8)]))


@dataclass
class RecordingGrid(GridWrapper):
    """Passes everything on, keeping every task sent and every reply received;
    ``tamper(task)`` may change a task on its way (a malicious server), ``forge(reply)``
    a reply (a malicious node)."""

    inner: Grid
    tamper: Callable[[Message], Message] = lambda m: m
    forge: Callable[[Message], Message] = lambda m: m
    sent: list[Message] = field(default_factory=list)
    received: list[Message] = field(default_factory=list)

    def send_and_receive(
        self, messages: Sequence[Message], *, timeout: float | None
    ) -> Iterator[Message]:
        changed = [self.tamper(m) for m in messages]
        self.sent.extend(changed)
        for answer in self.inner.send_and_receive(changed, timeout=timeout):
            reply = self.forge(answer)
            self.received.append(reply)
            yield reply

    def push(self, messages: Sequence[Message]) -> None:
        raise AssertionError("SecAgg+ never pushes")

    def pull(self, timeout: float | None) -> Message | None:
        raise AssertionError("SecAgg+ never pulls")


@dataclass
class Run:
    arrays: Arrays
    grid: RecordingGrid
    metrics: dict[str, float | int]
    #: every round's train metrics, in order
    rounds: list[dict[str, float | int]] = field(default_factory=list)


def run(
    n: int,
    size: int,
    *,
    drop: dict[str, Drop] | None = None,
    slow: dict[str, tuple[str, float]] | None = None,
    params: SecAggParams = PARAMS,
    tamper: Callable[[Message], Message] = lambda m: m,
    forge: Callable[[Message], Message] = lambda m: m,
    keyring: Ed25519Keyring | None = None,
    verify: Ed25519Keyring | None = None,
    seen: list[RecordingGrid] | None = None,
    backend: Backend = "threads",
    rounds: int = 1,
) -> Run:
    """``rounds`` SecAgg+ rounds of FedAvg over ``n`` nodes, from :func:`model` (``size``
    values); each node moves the model by its fixed update every round.

    The recording grid is appended to ``seen``, to look at even when the run fails.
    """
    nodes = [str(i) for i in range(n)]
    keys = keyring or Ed25519Keyring.generate(nodes)
    server = ServerApp()
    seen = seen if seen is not None else []

    @server.main()
    def main(grid: Grid, context: ServerContext) -> None:
        strategy = FedAvg(initial_arrays=model(size), fraction_evaluate=0.0)
        config = ServerConfig(strategy, num_rounds=rounds, evaluate_every=0)
        SecAggPlusWorkflow(config, params)(grid, context)

    def wrap(grid: Grid) -> Grid:
        seen.append(RecordingGrid(grid, tamper, forge))
        return seen[-1]

    app: ClientApp | str = client_app(keys, verify, drop, slow)
    if backend == "processes":  # each worker loads the app with fixed keys, 2 workers
        app = "secagg_harness:PROCESS_APP"
    result = run_simulation(
        server,
        app,
        node_ids=nodes,
        grid_wrapper=wrap,
        seed=3,
        backend=backend,
        workers=2 if backend == "processes" else 1,
        app_path=[str(Path(__file__).parent)],
    )
    history = [dict(r.train_metrics) for r in result.history.rounds]
    return Run(result.arrays, seen[-1], history[-1], history)
