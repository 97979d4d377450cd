"""The ``attack`` part of ``benchmarks/privacy.py``: gradient inversion from what the server sees.

Model: a 13-``hidden``-2 MLP (sigmoid hidden layer, softmax cross-entropy;
float64) on heart-disease rows (standardised, 13 features). Each node holds
one training row and takes one SGD step (batch size 1, learning rate ``LR``)
from the global model, then replies through the node's mods; the server runs
one FedAvg round in simulation. The attacker is the server: it knows the model
it sent and ``LR``, so an update ``Δ`` it receives is the gradient ``-Δ/LR``.

The attack is DLG (Zhu et al., NeurIPS 2019) with iDLG's label inference
(Zhao et al. 2020): L-BFGS over a dummy input (and, when the label cannot be
read off, a dummy soft label) until the dummy's gradient matches the target's
in squared L2 distance, from ``Setup.restarts`` random starts; the attacker keeps the
start with the lowest matching loss (it never sees the true rows).

What the server sees, case by case:

* **none**: each node's own reply: the attack targets that node's gradient.
* **secagg**: SecAgg+ over ``n`` nodes: the server gets only the mean update,
  i.e. ``n`` times less than the sum of ``n`` batch-1 gradients. Two attacks: one
  dummy row (is any single node's row recovered?) and ``n`` dummy rows with
  soft labels (a batch-``n`` inversion of the sum).
* **secagg+ddp**: the same with distributed DP: the nodes' noise shares add up
  to Gaussian noise of standard deviation ``σ`` on each coordinate of the sum.
* **local DP**: the node's reply through ``local_dp_mod(clip, z)``: clipped to
  ``clip`` and noised with ``N(0, (z·clip)²)``.

The attacker keeps a recovered row within ±``BOUND`` (the rows are
standardised); quality is the relative error ``‖x̂ − x‖ / ‖x‖`` of the recovered row against a
node's true row (for the sum: the best-matching node). Predicting the mean row
(zeros: the rows are standardised) scores 1.0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from consortium.client import ClientApp
from consortium.core.arrays import Arrays
from consortium.core.context import Context
from consortium.core.grid import Grid
from consortium.core.message import Message
from consortium.core.protocol import NUM_EXAMPLES
from consortium.datasets import heart_disease as hd
from consortium.privacy import local_dp_mod
from consortium.privacy.dp import local_epsilon
from consortium.privacy.secagg import Ed25519Keyring, SecAggParams, secaggplus_mod
from consortium.server import ServerApp, ServerConfig
from consortium.server.context import ServerContext
from consortium.server.workflow.rounds import RoundWorkflow
from consortium.server.workflow.secagg import SecAggPlusWorkflow
from consortium.simulation import run_simulation
from consortium.strategy import FedAvg
from privacy_secagg import WireGrid

NAMES = ("w1", "b1", "w2", "b2")
LR = 0.1
DELTA = 1e-5
#: the attacker knows the rows are standardised: it keeps what it recovers within ±BOUND
#: (the largest |value| in the two hospitals' rows is 9.9)
BOUND = 10.0
#: SecAgg+ clips each coordinate of an update to ±SECAGG_CLIP (updates here are below 0.3)
SECAGG_CLIP = 1.0
Tensors = list[torch.Tensor]


@dataclass(frozen=True)
class Setup:
    """The attacked federation (rows, model width) and the attack's L-BFGS iterations and
    random starts."""

    hidden: int = 32
    iterations: int = 300
    restarts: int = 4
    seed: int = 0

    def rows(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` training rows (and labels) drawn from Cleveland's and Hungary's."""
        centers = hd.load_all()[:2]
        x = np.concatenate([c.x_train for c in centers])
        y = np.concatenate([c.y_train for c in centers])
        pick = np.random.default_rng([self.seed, 1]).permutation(len(x))[:n]
        return x[pick], y[pick]

    def model(self) -> Arrays:
        rng = np.random.default_rng([self.seed, 2])
        d, h = len(hd.FEATURE_NAMES), self.hidden
        return Arrays(
            {
                "w1": rng.normal(0, 1 / np.sqrt(d), (h, d)),
                "b1": rng.normal(0, 0.1, h),
                "w2": rng.normal(0, 1 / np.sqrt(h), (2, h)),
                "b2": np.zeros(2),
            }
        )


def _tensors(arrays: Arrays) -> Tensors:
    return [torch.tensor(np.asarray(arrays[k], np.float64)) for k in NAMES]


def gradients(params: Tensors, x: torch.Tensor, y: torch.Tensor, *, graph: bool) -> Tensors:
    """The gradient of the summed cross-entropy of rows ``x`` with (soft) labels ``y``."""
    leaves = [t.detach().requires_grad_(True) for t in params]
    w1, b1, w2, b2 = leaves
    logits = torch.sigmoid(x @ w1.T + b1) @ w2.T + b2
    loss = -(y * torch.log_softmax(logits, dim=1)).sum()
    return list(torch.autograd.grad(loss, leaves, create_graph=graph))


def client_app(setup: Setup, n: int, mods: Sequence[Any] = ()) -> ClientApp:
    """Node ``i`` holds row ``i`` and replies with one SGD step on it."""
    x, y = setup.rows(n)
    app = ClientApp(mods=list(mods))

    @app.train()
    def train(message: Message, context: Context) -> Message:
        assert message.content is not None and message.content.model is not None
        model = message.content.model
        i = int(context.node_id)
        row = torch.tensor(x[i : i + 1])
        label = torch.nn.functional.one_hot(torch.tensor([int(y[i])]), 2).double()
        grads = gradients(_tensors(model), row, label, graph=False)
        out = Arrays({k: model[k] - LR * g.numpy() for k, g in zip(NAMES, grads, strict=True)})
        return message.reply(arrays=out, metrics={NUM_EXAMPLES: 1})

    return app


def server_updates(
    setup: Setup, n: int, *, secure: bool, mods: Sequence[Any] = (), noise: float = 0.0
) -> tuple[list[Arrays], Arrays]:
    """One FedAvg round over ``n`` nodes: the updates in the train replies the server
    received, and the round's aggregate (the mean update). With SecAgg+, ``noise`` > 0
    is distributed DP: the nodes' discrete Gaussian shares add up to noise of that
    standard deviation on each coordinate of the summed update."""
    step = SecAggParams(clip=SECAGG_CLIP).step
    params = SecAggParams(clip=SECAGG_CLIP, noise_stddev=noise / step)
    nodes = [str(i) for i in range(n)]
    start = setup.model()
    app_mods = list(mods)
    if secure:
        keys = Ed25519Keyring.generate(nodes)
        app_mods.append(secaggplus_mod(keys.sign, keys.verify))
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: ServerContext) -> None:
        config = ServerConfig(
            FedAvg(initial_arrays=start, fraction_evaluate=0.0), num_rounds=1, evaluate_every=0
        )
        if secure:
            SecAggPlusWorkflow(config, params)(grid, context)
        else:
            RoundWorkflow(config)(grid, context)

    grids: list[WireGrid] = []

    def wrap(grid: Grid) -> Grid:
        grids.append(WireGrid(grid))
        return grids[-1]

    result = run_simulation(
        server, client_app(setup, n, app_mods), node_ids=nodes, grid_wrapper=wrap, seed=1
    )
    seen = []
    for reply in grids[-1].train_replies:
        assert reply.content is not None
        model = reply.content.model
        if model is not None:  # SecAgg+ replies carry a masked vector, no model
            seen.append(Arrays({k: model[k] - start[k] for k in NAMES}))
    mean = Arrays({k: result.arrays[k] - start[k] for k in NAMES})
    return seen, mean


def invert(
    params: Tensors, target: Tensors, rows: int, setup: Setup, *, label: int | None = None
) -> tuple[np.ndarray, float]:
    """DLG: the ``rows`` dummy inputs whose gradient best matches ``target`` (and the
    matching loss), from ``setup.restarts`` starts. ``label`` fixes a batch-1 label (iDLG)."""
    d = params[0].shape[1]
    gen = torch.Generator().manual_seed(setup.seed)
    best: tuple[np.ndarray, float] = (np.zeros((rows, d)), float("inf"))
    for _ in range(setup.restarts):
        x = torch.randn(rows, d, generator=gen, dtype=torch.float64)
        logits = torch.randn(rows, 2, generator=gen, dtype=torch.float64)
        fixed = None
        if label is not None:
            fixed = torch.nn.functional.one_hot(torch.tensor([label] * rows), 2).double()
        try:
            found, final = _descend(params, target, x, logits, fixed, setup.iterations)
        except RuntimeError:  # a diverged start: the others decide
            continue
        if np.isfinite(final) and final < best[1]:
            best = (found.clip(-BOUND, BOUND), final)
    return best


def _descend(
    params: Tensors,
    target: Tensors,
    x: torch.Tensor,
    logits: torch.Tensor,
    fixed: torch.Tensor | None,
    iterations: int,
) -> tuple[np.ndarray, float]:
    """L-BFGS from one start: the dummy rows and their final (normalised) matching loss.
    The labels are ``fixed`` or, when None, soft labels ``softmax(logits)`` learnt too."""
    x.requires_grad_(True)
    logits.requires_grad_(True)
    scale = sum(float((t**2).sum()) for t in target) or 1.0
    opt = torch.optim.LBFGS(
        [x] if fixed is not None else [x, logits], lr=1.0, max_iter=iterations,
        history_size=50, line_search_fn="strong_wolfe", tolerance_grad=1e-14,
        tolerance_change=1e-16,
    )  # fmt: skip

    def loss() -> torch.Tensor:
        y = fixed if fixed is not None else torch.softmax(logits, dim=1)
        grads = gradients(params, x, y, graph=True)
        total = torch.zeros((), dtype=torch.float64)
        for g, t in zip(grads, target, strict=True):
            total = total + ((g - t) ** 2).sum()
        return total / scale

    def closure() -> torch.Tensor:
        opt.zero_grad()
        value = loss()
        value.backward()  # type: ignore[no-untyped-call]
        return value

    opt.step(closure)  # type: ignore[no-untyped-call]
    return x.detach().numpy().copy(), float(loss().detach())


def relative_errors(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """For each true row, the relative error of the recovered row closest to it."""
    dist = np.linalg.norm(found[None, :, :] - truth[:, None, :], axis=2)
    errors: np.ndarray = dist.min(axis=1) / np.linalg.norm(truth, axis=1)
    return errors


def _as_gradient(update: Arrays, factor: float) -> Tensors:
    """The gradient an update is: ``-factor·Δ/LR``."""
    return [torch.tensor(-factor * np.asarray(update[k]) / LR) for k in NAMES]


def _label(gradient: Tensors) -> int:
    """iDLG: with batch 1 the output bias's gradient is ``softmax − onehot``, negative
    only at the true label."""
    return int(torch.argmin(gradient[3]))


def attack_rows(
    setup: Setup, nodes: int, secagg_sizes: Sequence[int], dp_multipliers: Sequence[float],
    dp_clip: float, secagg_noise: Sequence[float] = (),
) -> dict[str, Any]:  # fmt: skip
    """Every attack row: no protection, SecAgg+ for each ``n``, SecAgg+ with distributed DP
    for each ``secagg_noise`` (at the smallest ``n``), local DP for each ``z``."""
    torch.set_num_threads(1)  # tiny matrices: threads only add overhead on shared cores
    params = _tensors(setup.model())
    rows: list[dict[str, Any]] = []

    def single(update: Arrays, truth: np.ndarray, factor: float = 1.0) -> np.ndarray:
        target = _as_gradient(update, factor)
        found, _ = invert(params, target, 1, setup, label=_label(target))
        return relative_errors(found, truth)

    seen, _ = server_updates(setup, nodes, secure=False)
    x, _ = setup.rows(nodes)
    errors = np.array([single(u, x[i : i + 1])[0] for i, u in enumerate(seen)])
    rows.append(_row("none", nodes, "each node's own update, 1 dummy row", errors))

    for n in secagg_sizes:
        seen, mean = server_updates(setup, n, secure=True)
        assert not seen, "the server received a model in the clear"
        x, _ = setup.rows(n)
        target = _as_gradient(mean, n)  # all weights are 1: sum = n · mean
        found, _ = invert(params, target, 1, setup)
        rows.append(_row("secagg", n, "the sum, 1 dummy row", relative_errors(found, x)))
        found, _ = invert(params, target, n, setup)
        rows.append(_row("secagg", n, f"the sum, {n} dummy rows", relative_errors(found, x)))

    for sigma in secagg_noise if secagg_sizes else ():
        n = min(secagg_sizes)
        _, mean = server_updates(setup, n, secure=True, noise=sigma)
        x, _ = setup.rows(n)
        found, _ = invert(params, _as_gradient(mean, n), n, setup)
        row = _row("secagg+ddp", n, f"the noised sum, {n} dummy rows", relative_errors(found, x))
        row.update(sum_noise_stddev=sigma)
        rows.append(row)

    for z in dp_multipliers:
        seen, _ = server_updates(setup, 1, secure=False, mods=[local_dp_mod(dp_clip, z)])
        x, _ = setup.rows(1)
        row = _row("local_dp", 1, "the noised update, 1 dummy row", single(seen[0], x))
        row.update(noise_multiplier=z, clip_norm=dp_clip, delta=DELTA,
                   epsilon_one_round=local_epsilon(z, rounds=1, delta=DELTA))  # fmt: skip
        rows.append(row)
    return {
        "model": f"MLP 13-{setup.hidden}-2 (sigmoid), float64",
        "data": "heart-disease rows (Cleveland, Hungary), standardised; one row per node",
        "update": f"one SGD step, batch size 1, lr {LR}",
        "attack": f"DLG/iDLG, L-BFGS, {setup.iterations} iterations, {setup.restarts} starts",
        "baseline_rel_error": 1.0,
        "rows": rows,
    }


def _row(protection: str, n: int, target: str, errors: np.ndarray) -> dict[str, Any]:
    return {
        "protection": protection,
        "nodes": n,
        "attacked": target,
        "rel_error_min": float(errors.min()),
        "rel_error_median": float(np.median(errors)),
        "rel_error_max": float(errors.max()),
    }
