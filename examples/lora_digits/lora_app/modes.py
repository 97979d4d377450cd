"""The three fine-tuning modes: what each trains, and so what each sends.

* ``full``: every weight of the pretrained MLP trains and travels.
* ``head``: the pretrained layers are frozen; only the classifier ``head`` trains
  and travels (linear probing).
* ``lora``: PEFT wraps the plain torch module: rank-``r`` adapters on the hidden
  Linear layers (``target_modules=["fc1", "fc2"]``) plus a trainable copy of
  the classifier (``modules_to_save=["head"]``: the target classes are new, a
  low-rank update of the source head would have to learn five new rows).
  Only ``get_peft_model_state_dict`` — adapters and head — travels; the frozen
  base stays on each party, rebuilt by :func:`lora_app.pretrain.pretrained`.

The server aggregates whatever travels with plain FedAvg. For LoRA this
averages ``A`` and ``B`` separately (as FedIT/FedPETuning do), which is not the
average of the products ``BA``; with few local steps per round the difference
is small, and it is why the adapters stay small in rank.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import nn

from consortium.core.arrays import Arrays
from consortium.core.errors import ConfigError

from .pretrain import pretrained

MODES = ("lora", "head", "full")
LORA_TARGETS = ["fc1", "fc2"]


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"run config 'mode' must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def build(mode: str, rank: int, alpha: int) -> nn.Module:
    """The pretrained base with a new, zeroed head, made ready for ``mode``.

    The source head scores classes 0–4 and has learned to rule 5–9 out; a zero
    head (the same on every party, no seed to agree on) starts the target task
    unbiased, and training the hidden layers through it is what ``mode`` decides.
    """
    net = pretrained()
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.zero_()
    if check_mode(mode) == "full":
        return net
    if mode == "head":
        for name, parameter in net.named_parameters():
            parameter.requires_grad = name.startswith("head.")
        return net
    if rank < 1:
        raise ConfigError(f"run config 'rank' must be >= 1, got {rank}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a plain torch module: no hub, no network
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules=LORA_TARGETS,
        modules_to_save=["head"],
    )
    return get_peft_model(net, config)


def _trained_state(mode: str, net: nn.Module) -> dict[str, Any]:
    if mode == "lora":
        from peft import get_peft_model_state_dict

        return dict(get_peft_model_state_dict(net))
    state = net.state_dict()
    if mode == "head":
        return {name: t for name, t in state.items() if name.startswith("head.")}
    return dict(state)


def travelling(mode: str, net: nn.Module) -> Arrays:
    """What a party sends for ``mode``: the trained arrays only, as float32 numpy."""
    return Arrays(
        {
            name: np.array(t.detach().numpy(), copy=True)
            for name, t in _trained_state(mode, net).items()
        }
    )


def load(mode: str, net: nn.Module, arrays: Arrays) -> None:
    """Load the travelling ``arrays`` into ``net``; names and shapes must match exactly."""
    expected = _trained_state(mode, net)
    if set(arrays) != set(expected):
        missing, unexpected = (
            sorted(set(expected) - set(arrays)),
            sorted(set(arrays) - set(expected)),
        )
        raise ValueError(f"{mode} arrays: missing {missing}, unexpected {unexpected}")
    for name, value in arrays.items():
        if tuple(value.shape) != tuple(expected[name].shape):
            raise ValueError(
                f"array {name!r} has shape {value.shape}, expected {tuple(expected[name].shape)}"
            )
    tensors = {name: torch.tensor(np.asarray(value)) for name, value in arrays.items()}
    if mode == "lora":
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(net, tensors)
    else:
        net.load_state_dict(tensors, strict=mode == "full")


def trainable_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad)
