"""Split learning's torch side: each party's layers, their seeded start, one SGD step.

The node handlers (:mod:`.split_node`) and the centralised baseline
(:mod:`.split_central`) build their layers here, from the same seeds, so a
split run and the same model trained on the joined data start equal and take
the same steps. Everything is float32 on the CPU.

A party's layers are a *bottom* (its features -> hidden -> ``cut`` values a
row, ReLU after each) and, on the label holder only, a *top* (every party's
cut values side by side -> ``top_hidden`` -> one logit).
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from consortium.core.arrays import Arrays
from consortium.core.rng import derive_rng
from consortium.ml.torch import load_arrays, state_dict_to_arrays
from consortium.vertical.split_protocol import INIT_STREAM, FloatArray, SplitParams


def generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def init_seed(seed: int, node: str) -> int:
    """The seed of ``node``'s torch generator: its context rng's (``context.rng(0,
    stream=INIT_STREAM)``), so the same run seed and node gives the same layers in
    simulation, deployment and the centralised baseline."""
    return int(derive_rng(seed, 0, node, stream=INIT_STREAM).integers(2**63))


def _linear(fan_in: int, fan_out: int, g: torch.Generator) -> nn.Linear:
    """torch's default Linear start, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), from ``g``."""
    layer = nn.Linear(fan_in, fan_out)
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        layer.weight.copy_((torch.rand(fan_out, fan_in, generator=g) * 2 - 1) * bound)
        layer.bias.copy_((torch.rand(fan_out, generator=g) * 2 - 1) * bound)
    return layer


class PartyLayers(nn.Module):
    """A party's layers: ``bottom``, and ``top`` on the label holder."""

    def __init__(self, bottom: nn.Sequential, top: nn.Sequential | None) -> None:
        super().__init__()
        self.bottom = bottom
        self.top = top

    def cut(self, x: torch.Tensor) -> torch.Tensor:
        """The cut-layer activations of rows ``x``."""
        out: torch.Tensor = self.bottom(x)
        return out

    def head(self, cuts: list[torch.Tensor]) -> torch.Tensor:
        """The logits of every party's cut values, side by side (label holder first)."""
        assert self.top is not None, "only the label holder has a top"
        out: torch.Tensor = self.top(torch.cat(cuts, dim=1))
        return out


def party_layers(features: int, parties: int | None, params: SplitParams, seed: int) -> PartyLayers:
    """A party's layers (with a top for ``parties`` parties, on the label holder), started
    from a torch generator seeded with ``seed``: bottom first, then top."""
    g = generator(seed)
    bottom = nn.Sequential(
        _linear(features, params.hidden, g), nn.ReLU(), _linear(params.hidden, params.cut, g),
        nn.ReLU(),
    )  # fmt: skip
    top = None
    if parties is not None:
        top = nn.Sequential(
            _linear(params.cut * parties, params.top_hidden, g), nn.ReLU(),
            _linear(params.top_hidden, 1, g),
        )  # fmt: skip
    return PartyLayers(bottom, top)


def backward(t: torch.Tensor, grad: torch.Tensor | None = None) -> None:
    """Backpropagate from ``t`` (with ``grad`` as d loss / d t when t is not the loss)."""
    torch.autograd.backward([t], None if grad is None else [grad])


def sgd_step(model: nn.Module, velocity: dict[str, torch.Tensor], params: SplitParams) -> None:
    """SGD with momentum (torch's rule: v = m v + g; w -= lr v) on every parameter with a
    gradient; ``velocity`` is updated in place."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.grad is None:
                continue
            v = velocity.get(name)
            if v is None:
                v = velocity[name] = p.grad.detach().clone()
            else:
                v.mul_(params.momentum).add_(p.grad)
            p.add_(v, alpha=-params.lr)
            p.grad = None


def bce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(logits.squeeze(1), y)


def metrics(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean log-loss and accuracy (a positive logit predicts 1)."""
    with torch.no_grad():
        loss = float(bce(logits, y))
        accuracy = float(((logits.squeeze(1) > 0).float() == y).float().mean())
    return loss, accuracy


def to_state(model: nn.Module, velocity: dict[str, torch.Tensor]) -> Arrays:
    """The layers and the momentum as Arrays (``m.*`` and ``v.*``): the node keeps them."""
    out = Arrays({f"m.{k}": v for k, v in state_dict_to_arrays(model).items()})
    for name, v in velocity.items():
        out[f"v.{name}"] = np.array(v.numpy(), copy=True)
    return out


def from_state(model: nn.Module, state: Arrays) -> dict[str, torch.Tensor]:
    """Load the kept layers into ``model``; the momentum buffers."""
    load_arrays(model, {k[2:]: v for k, v in state.items() if k.startswith("m.")})
    return {k[2:]: torch.tensor(v) for k, v in state.items() if k.startswith("v.")}


def weights(model: nn.Module) -> Arrays:
    return state_dict_to_arrays(model)


def tensor(x: Any) -> torch.Tensor:
    """A float32 tensor of ``x`` (copied: arrays off the wire are read-only)."""
    return torch.tensor(np.asarray(x, dtype=np.float32))


def numpy32(t: torch.Tensor) -> FloatArray:
    return np.array(t.detach().numpy(), dtype=np.float32, copy=True)


def gradient(t: torch.Tensor) -> FloatArray:
    """The gradient backward left on ``t`` (zeros where nothing reached it)."""
    return numpy32(t.grad) if t.grad is not None else np.zeros(tuple(t.shape), np.float32)


class _Deterministic:
    """Counts the handlers inside :func:`deterministic`, so that the settings are changed
    when the first enters and restored when the last leaves (a simulation runs several
    parties' handlers in threads of one process at once)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.inside = 0
        self.saved: tuple[int, bool] = (1, False)

    def enter(self) -> None:
        with self.lock:
            if self.inside == 0:
                self.saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
                torch.set_num_threads(1)
                torch.use_deterministic_algorithms(True)
            self.inside += 1

    def leave(self) -> None:
        with self.lock:
            self.inside -= 1
            if self.inside == 0:
                torch.set_num_threads(self.saved[0])
                torch.use_deterministic_algorithms(self.saved[1])


_DETERMINISTIC = _Deterministic()


@contextlib.contextmanager
def deterministic() -> Iterator[None]:
    """Run torch deterministically inside: one intra-op thread (a sum's order, hence its
    bits, then depends on no machine's core count; the layers are far too small to gain
    from threads) and ``use_deterministic_algorithms`` (the CPU kernels used here are
    deterministic already; the switch makes a later change fail loudly instead of
    drifting). Both are process-wide: they are restored when the last handler leaves."""
    _DETERMINISTIC.enter()
    try:
        yield
    finally:
        _DETERMINISTIC.leave()
