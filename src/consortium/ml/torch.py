"""Adapter between PyTorch modules and Arrays (needs the ``torch`` extra).

Names are the module's ``state_dict`` keys, in order, so buffers such as
batch-norm running statistics travel with the parameters. PyTorch is
imported when a function here is first called, never by ``import
consortium.ml``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import Any

import numpy as np

from consortium.core.arrays import Arrays, extension_dtype
from consortium.core.errors import MissingDependencyError

__all__ = ["load_arrays", "state_dict_to_arrays"]


def _torch() -> ModuleType:
    try:
        import torch
    except ImportError as exc:
        raise MissingDependencyError.for_extra("torch", "torch") from exc
    return torch


def state_dict_to_arrays(module: Any) -> Arrays:
    """Copy every tensor of ``module.state_dict()`` into a CPU numpy array.

    The arrays own their memory (later training does not change them).
    bfloat16 stays bfloat16 (``ml_dtypes.bfloat16``: 2 bytes a value on the
    wire); other floating-point types numpy lacks (float8) become float32, and
    :func:`load_arrays` casts them back.
    """
    torch = _torch()
    native_floats = (torch.float16, torch.float32, torch.float64)
    out = Arrays()
    for name, tensor in module.state_dict().items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"state_dict entry {name!r} is a {type(tensor).__name__}, not a tensor")
        t = tensor.detach()
        if t.dtype == torch.bfloat16:  # numpy has no bfloat16: move the bits, then name them
            bits = np.array(t.view(torch.int16).numpy(force=True), copy=True)
            out[name] = bits.view(extension_dtype("bfloat16"))
            continue
        if t.is_floating_point() and t.dtype not in native_floats:
            t = t.to(torch.float32)
        out[name] = np.array(t.numpy(force=True), copy=True)
    return out


def load_arrays(module: Any, arrays: Mapping[str, Any], strict: bool = True) -> None:
    """Load ``arrays`` into ``module``'s parameters and buffers, in place.

    Values are cast to each tensor's dtype and device. With ``strict`` the
    names must match the state_dict exactly; otherwise names on either side
    without a partner are skipped. A shape mismatch always raises
    ``ValueError`` naming the entry and both shapes.
    """
    torch = _torch()
    current = module.state_dict()
    if strict:
        missing = [name for name in current if name not in arrays]
        unexpected = [name for name in arrays if name not in current]
        if missing or unexpected:
            raise ValueError(
                f"arrays do not match {type(module).__name__}'s state_dict: "
                f"missing {missing}, unexpected {unexpected}"
            )
    tensors = {}
    for name, value in arrays.items():
        if name not in current:
            continue
        arr = np.asarray(value)
        expected = tuple(current[name].shape)
        if arr.shape != expected:
            raise ValueError(
                f"array {name!r} has shape {arr.shape}, but {type(module).__name__} "
                f"expects {expected}"
            )
        # torch.tensor copies, so read-only arrays straight off the wire are fine
        if arr.dtype == extension_dtype("bfloat16"):
            tensors[name] = torch.tensor(arr.view(np.int16)).view(torch.bfloat16)
        else:
            tensors[name] = torch.tensor(arr)
    module.load_state_dict(tensors, strict=strict)
